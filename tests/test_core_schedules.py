"""alpha schedules (Eq. 19-23) and the ESS solver (Eq. 21)."""

import math

import pytest
import torch

import apo
from apo.core.divergence import _mean_ess_fraction
from apo.core.schedules import ESSAlpha, FixedAlpha, GuardedAlpha, make_alpha_schedule


def test_guarded_follows_eq_20_to_23_step_by_step():
    s = GuardedAlpha(alpha_min=0.35, alpha_max=0.9, rho=0.5, lam=0.1, reward_scale=0.5)
    # t = 1: R = 0.2, c = 1. b_0 = 0, s_R = 0.5 (initial)
    #   p_1 = tanh((0.2 - 0) / 0.5) = tanh(0.4) = 0.379949
    #   b_1 = 0.9 * 0 + 0.1 * 0.2 = 0.02
    #   a_raw = 0.9 - 0.55 * 1 * 0.379949 = 0.691028;  a_1 = 0.5 * 0.9 + 0.5 * 0.691028 = 0.795514
    assert s.step(0.2, 1.0) == pytest.approx(0.795514, abs=1e-6)
    assert s.last["improvement"] == pytest.approx(0.379949, abs=1e-6)
    assert s.baseline == pytest.approx(0.02)
    # t = 2: R = 0.6, c = 0.5. s_R still 0.5 (one past value has no spread)
    #   p_2 = tanh((0.6 - 0.02) / 0.5) = tanh(1.16) = 0.821040
    #   b_2 = 0.9 * 0.02 + 0.06 = 0.078
    #   a_raw = 0.9 - 0.55 * 0.5 * 0.821040 = 0.674214;  a_2 = 0.5 * 0.795514 + 0.5 * 0.674214 = 0.734864
    assert s.step(0.6, 0.5) == pytest.approx(0.734864, abs=1e-6)
    assert s.baseline == pytest.approx(0.078)
    # t = 3: R = 0.5, c = 1. s_R = unbiased std of (0.2, 0.6) = 0.282843
    #   p_3 = tanh((0.5 - 0.078) / 0.282843) = tanh(1.491995) = 0.903691
    #   a_raw = 0.9 - 0.55 * 0.903691 = 0.402970;  a_3 = 0.5 * 0.734864 + 0.5 * 0.402970 = 0.568917
    assert s.reward_scale == pytest.approx(0.282843, abs=1e-6)
    assert s.step(0.5, 1.0) == pytest.approx(0.568917, abs=1e-6)


def test_guarded_confident_and_improving_lowers_alpha():
    s = GuardedAlpha(rho=0.2)
    alphas = [s.step(0.05 * t, 0.9) for t in range(1, 15)]
    assert all(b < a for a, b in zip(alphas, alphas[1:], strict=False))
    assert alphas[-1] < 0.6


def test_guarded_uncertain_stays_at_alpha_max():
    s = GuardedAlpha()
    for t in range(1, 20):
        assert s.step(0.05 * t, 0.0) == pytest.approx(0.9)


def test_guarded_confident_but_stuck_returns_to_alpha_max():
    s = GuardedAlpha(rho=0.3)
    for t in range(1, 10):
        s.step(0.1 * t, 1.0)
    low = s.alpha
    assert low < 0.6
    for _ in range(40):  # reward falls back and stays: no gain over the baseline, p_t = 0
        s.step(0.3, 1.0)
    assert s.last["improvement"] == 0.0
    assert s.alpha > low and s.alpha == pytest.approx(0.9, abs=1e-4)


def test_guarded_state_dict_resumes_exactly():
    a, b = GuardedAlpha(rho=0.3), GuardedAlpha(rho=0.3)
    script = [(0.1, 0.5), (0.4, 0.9), (0.2, 0.7), (0.6, 1.0), (0.55, 0.8)]
    for r, c in script[:3]:
        a.step(r, c)
    b.load_state_dict(a.state_dict())
    for r, c in script[3:]:
        assert a.step(r, c) == b.step(r, c)
    assert a.state_dict() == b.state_dict()


def test_guarded_update_uses_anchored_entropy_zero_on_policy():
    s = GuardedAlpha()
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    uniform = torch.full((1, 4), -math.log(4))
    s.update(rewards_BG=rewards, log_q_BG=apo.boltzmann_log_target(rewards, 1.0), log_p_BG=uniform)
    assert s.last["confidence"] == pytest.approx(0.0, abs=1e-9) and s.alpha == pytest.approx(0.9)


def _off_policy_case(B=16, G=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randint(0, 2, (B, G), generator=g).double()
    rewards[0] = torch.tensor([1.0, 0, 0, 0, 0, 0, 0, 0])
    q = apo.boltzmann_target(rewards, 0.5)
    log_p = torch.log_softmax(torch.randn(B, G, generator=g, dtype=torch.float64), -1)
    return rewards, q, log_p


@pytest.mark.parametrize("where", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ess_solver_hits_target_when_a_root_exists(where, seed):
    rewards, q, log_p = _off_policy_case(seed=seed)
    signal = ~apo.zero_variance_groups(rewards)
    ends = _mean_ess_fraction(q[signal].log(), log_p[signal], torch.tensor([0.0, 1.0], dtype=torch.float64))
    target = float(ends.min() + where * (ends.max() - ends.min()))  # between the endpoint values: a root exists
    a = apo.solve_ess_alpha(q.log(), log_p, target, 0.0, 1.0, signal_B=signal)
    ess = apo.effective_sample_size(q[signal].log(), log_p[signal], a).mean()
    assert abs(ess.item() - target * 8) < 1e-3


def test_ess_solver_non_monotone_takes_root_nearest_alpha_max():
    # p and q peaked on different candidates: the geometric mixture is flattest in between, so ESS(alpha) rises
    # then falls and the target is crossed twice.
    log_p = torch.log_softmax(torch.tensor([[4.0, 0.0, 0.0, 0.0]], dtype=torch.float64), -1)
    q = torch.softmax(torch.tensor([[0.0, 4.0, 0.0, 0.0]], dtype=torch.float64), -1)
    grid = torch.linspace(0, 1, 101, dtype=torch.float64)
    ess = _mean_ess_fraction(q.log(), log_p, grid)
    assert ess[50] > ess[0] and ess[50] > ess[-1]  # non-monotone
    target = float((ess.max() + max(ess[0], ess[-1])) / 2)
    a = apo.solve_ess_alpha(q.log(), log_p, target, 0.0, 1.0)
    assert a > 0.5  # the crossing on the alpha_max side
    assert abs(_mean_ess_fraction(q.log(), log_p, torch.tensor([a], dtype=torch.float64)).item() - target) < 1e-6


def test_ess_solver_without_root_returns_closest_endpoint():
    rewards, q, log_p = _off_policy_case()
    lo, hi = 0.35, 0.9
    f_lo = _mean_ess_fraction(q.log(), log_p, torch.tensor([lo], dtype=torch.float64)).item()
    f_hi = _mean_ess_fraction(q.log(), log_p, torch.tensor([hi], dtype=torch.float64)).item()
    above = max(f_lo, f_hi) + 0.05  # unreachable from above and below
    below = min(f_lo, f_hi) - 0.05
    assert apo.solve_ess_alpha(q.log(), log_p, min(above, 1.0), lo, hi) == (lo if f_lo > f_hi else hi)
    assert apo.solve_ess_alpha(q.log(), log_p, below, lo, hi) == (lo if f_lo < f_hi else hi)


def test_ess_schedule_skips_steps_without_signal_and_resumes():
    s = ESSAlpha(alpha_min=0.35, alpha_max=0.9, target_fraction=0.5)
    flat = torch.ones(2, 4)
    log_p = torch.full((2, 4), -math.log(4))
    assert s.update(rewards_BG=flat, log_q_BG=apo.boltzmann_log_target(flat, 1.0), log_p_BG=log_p) == 0.9
    assert s.skipped == 1
    rewards, q, lp = _off_policy_case()
    a = s.update(rewards_BG=rewards, log_q_BG=q.log(), log_p_BG=lp)
    s2 = ESSAlpha()
    s2.load_state_dict(s.state_dict())
    assert s2.alpha == a and s2.skipped == 1


def test_ess_solver_works_where_q_underflows():
    # beta_r = 0.01: q_i ~ exp(-z_i / 0.01) underflows to exactly 0 for the worse candidates in float32, while
    # log q stays finite; on-policy (p uniform) the ESS falls from G at alpha = 0 to ~1 at alpha = 1, so the
    # target 0.5 G has a root.
    rewards = torch.tensor([[0.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    log_q = apo.boltzmann_log_target(rewards, 0.01)
    assert log_q.dtype == torch.float32 and bool((log_q.exp() == 0).any()) and bool(log_q.isfinite().all())
    log_p = torch.full((2, 8), -math.log(8.0))
    a = apo.solve_ess_alpha(log_q, log_p, 0.5, 0.0, 1.0)
    assert 0.0 < a < 1.0
    assert abs(apo.effective_sample_size(log_q.double(), log_p.double(), a).mean().item() - 4.0) < 1e-3


def test_ess_functions_reject_q_in_place_of_log_q():
    rewards, q, log_p = _off_policy_case()
    with pytest.raises(ValueError, match="pass log q"):
        apo.solve_ess_alpha(q, log_p, 0.5, 0.35, 0.9)
    with pytest.raises(ValueError, match="pass log q"):
        apo.effective_sample_size(q, log_p, 0.5)


def test_ess_solve_is_deterministic():
    rewards, q, log_p = _off_policy_case(seed=3)
    assert apo.solve_ess_alpha(q.log(), log_p, 0.5, 0.0, 1.0) == apo.solve_ess_alpha(q.log(), log_p, 0.5, 0.0, 1.0)


def test_schedule_registry():
    assert isinstance(make_alpha_schedule("fixed", alpha=0.3), FixedAlpha)
    assert make_alpha_schedule("guarded", alpha_min=0.3, alpha_max=0.8).alpha == 0.8
    with pytest.raises(ValueError, match="valid: \\['ess', 'fixed', 'guarded'\\]"):
        make_alpha_schedule("cosine")
    with pytest.raises(ValueError, match="not \\['alpha'\\]"):
        make_alpha_schedule("guarded", alpha=0.5)
    with pytest.raises(ValueError, match="alpha_min"):
        make_alpha_schedule("guarded", alpha_min=0.9, alpha_max=0.3)
    with pytest.raises(ValueError, match="alpha must be in"):
        make_alpha_schedule("fixed", alpha=1.5)
