"""alpha schedules (Eq. 19-23) and the ESS solver (Eq. 21)."""

import json
import math

import pytest
import torch

import apo
from apo.core.divergence import _mean_ess_fraction
from apo.core.schedules import ESSAlpha, FixedAlpha, GuardedAlpha, make_alpha_schedule


def test_guarded_follows_eq_20_to_23_step_by_step():
    s = GuardedAlpha(alpha_min=0.35, alpha_max=0.9, rho=0.5, lam=0.1, reward_scale=0.5)
    # t = 1: R = 0.2, c = 1, spread 0.4. b_0 = R_1 = 0.2, so p_1 = tanh(0) = 0
    #   b_1 = 0.9 * 0.2 + 0.1 * 0.2 = 0.2;  a_raw = 0.9;  a_1 = 0.9
    #   s_R afterwards: sqrt(0.4^2 / 1) = 0.4 (was 0.5, unused at t = 1)
    assert s.step(0.2, 1.0, reward_std=0.4) == 0.9
    assert s.last["improvement"] == 0.0 and s.baseline == pytest.approx(0.2)
    assert s.reward_scale == pytest.approx(0.4)
    # t = 2: R = 0.6, c = 0.5, spread 0.3. s_R = 0.4 (the past steps' spread only)
    #   p_2 = tanh((0.6 - 0.2) / 0.4) = tanh(1) = 0.761594
    #   b_2 = 0.9 * 0.2 + 0.1 * 0.6 = 0.24
    #   a_raw = 0.9 - 0.55 * 0.5 * 0.761594 = 0.690562;  a_2 = 0.9 + 0.5 * (0.690562 - 0.9) = 0.795281
    assert s.step(0.6, 0.5, reward_std=0.3) == pytest.approx(0.795281, abs=1e-6)
    assert s.last["improvement"] == pytest.approx(0.761594, abs=1e-6)
    assert s.baseline == pytest.approx(0.24)
    # t = 3: R = 0.5, c = 1, no spread given. s_R = sqrt((0.4^2 + 0.3^2) / 2) = sqrt(0.125) = 0.353553
    #   p_3 = tanh((0.5 - 0.24) / 0.353553) = tanh(0.735391) = 0.626352
    #   a_raw = 0.9 - 0.55 * 0.626352 = 0.555506;  a_3 = 0.795281 + 0.5 * (0.555506 - 0.795281) = 0.675393
    assert s.reward_scale == pytest.approx(0.353553, abs=1e-6)
    assert s.step(0.5, 1.0) == pytest.approx(0.675393, abs=1e-6)
    assert s.reward_scale == pytest.approx(0.353553, abs=1e-6)  # unchanged without a spread


def test_guarded_first_step_is_no_gain():
    # b_0 = R_1 whatever R_1 is: p_1 = 0, alpha_1 = alpha_max even at full confidence and a high reward
    for r in (0.0, 0.6, 1.0, 37.0):
        s = GuardedAlpha()
        assert s.step(r, 1.0) == 0.9
        assert s.last["improvement"] == 0.0 and s.baseline == r


def test_guarded_confident_flat_noisy_reward_keeps_alpha_near_max():
    # c = 1, R_t = 0.6 + N(0, 0.03), s_R = reward_scale = 0.5 (no spread given). R_t - b_{t-1} has std
    # 0.03 * sqrt(1 + lam / (2 - lam)) = 0.031, so p_t ~ max(0, (R_t - b_{t-1}) / 0.5) has mean 0.4 * 0.031 / 0.5 =
    # 0.025 and alpha settles near 0.9 - 0.55 * 0.025 = 0.886, with std ~0.005 after the rho = 0.1 EMA: 0.85 is ~7
    # std below (benchmarks/guarded_alpha_sim.py: lowest alpha over 20 seeds x 200 steps 0.867). Literal Algorithm 1
    # (b_0 = 0, s_R = running std of R_t) falls to 0.39 within 25 steps here.
    g = torch.Generator().manual_seed(0)
    s = GuardedAlpha()
    alphas = [s.step(0.6 + 0.03 * float(torch.randn((), generator=g)), 1.0) for _ in range(150)]
    assert min(alphas) >= 0.85
    assert 0.87 < sum(alphas[50:]) / 100 < 0.9  # settles below alpha_max: noise is read as a small gain


def test_guarded_update_flat_binary_rewards_keeps_alpha_near_max():
    # 16 x 8 = 128 binary rewards per step, success rate 0.6, c = 1 through `update`. s_R = pooled std of the
    # individual rewards ~ sqrt(0.6 * 0.4) = 0.49; the mean's noise is 0.49 / sqrt(128) = 0.043, so
    # E[p_t] ~ 0.4 * 1.03 / sqrt(128) = 0.036 and alpha ~ 0.9 - 0.55 * 0.036 = 0.880 (simulated: 0.881, lowest of
    # 20 seeds x 200 steps 0.860)
    g = torch.Generator().manual_seed(1)
    s = GuardedAlpha()
    log_p = torch.full((16, 8), -math.log(8))
    alphas = []
    for _ in range(150):
        rewards = (torch.rand(16, 8, generator=g) < 0.6).float()
        log_q = apo.boltzmann_log_target(rewards, 1.0)
        alphas.append(s.update(rewards_BG=rewards, log_q_BG=log_q, log_p_BG=log_p, confidence=1.0))
    assert min(alphas) >= 0.84
    assert s.reward_scale == pytest.approx(math.sqrt(0.24), abs=0.01)
    assert s.metrics()["apo/guard_reward_scale"] == s.reward_scale
    assert s.metrics()["apo/guard_baseline"] == pytest.approx(0.6, abs=0.05)


def test_guarded_confident_and_improving_lowers_alpha():
    # success rate rising 0.1 -> 0.88 by d = 0.02 per step, spread sqrt(R (1 - R)) (binary rewards), c = 1. The
    # baseline lags a linear trend by R_t - b_{t-1} -> d / lam = 0.2, and s_R (pooled spread over the rise) ~0.44,
    # so p_t -> tanh(0.2 / 0.44) = 0.43 and alpha_raw -> 0.9 - 0.55 * 0.43 = 0.67. The baseline lag and the alpha
    # EMA both build with a 1/0.1 = 10-step time constant, so 40 steps (the whole rise) bring alpha below 0.7.
    s = GuardedAlpha()
    alphas = []
    for t in range(40):
        r = 0.1 + 0.02 * t
        alphas.append(s.step(r, 1.0, reward_std=math.sqrt(r * (1 - r))))
    assert all(b < a for a, b in zip(alphas[1:], alphas[2:], strict=False))
    assert alphas[-1] < 0.7
    # a steeper rise with a fixed s_R = 0.5 and c = 0.9 goes further toward alpha_min
    s = GuardedAlpha(rho=0.2)
    alphas = [s.step(0.05 * t, 0.9) for t in range(1, 15)]
    assert alphas[0] == 0.9 and all(b < a for a, b in zip(alphas, alphas[1:], strict=False))
    assert alphas[-1] < 0.65


def test_guarded_uncertain_stays_at_alpha_max_exactly():
    s = GuardedAlpha()
    g = torch.Generator().manual_seed(2)
    for t in range(1, 60):
        r = 0.05 * t + float(torch.randn((), generator=g))
        assert s.step(r, 0.0, reward_std=abs(r)) == 0.9


def test_guarded_confident_but_stuck_or_degrading_returns_to_alpha_max():
    s = GuardedAlpha(rho=0.3)
    for t in range(1, 12):
        s.step(0.08 * t, 1.0)
    low = s.alpha
    assert low < 0.6
    # b_11 = 0.411: the reward drops below the baseline, falls further, then sits still at 0.2. Each R_t is below
    # b_{t-1} (b decays toward R from above), so p_t = 0 and alpha returns to 0.9 as 0.9 - 0.7^k (0.9 - a_11)
    for t in range(40):
        s.step(max(0.2, 0.4 - 0.02 * t), 1.0)
        assert s.last["improvement"] == 0.0
    assert s.alpha > low and s.alpha == pytest.approx(0.9, abs=1e-4)


def test_guarded_state_dict_resumes_exactly():
    a, b = GuardedAlpha(rho=0.3), GuardedAlpha(rho=0.3)
    script = [(0.1, 0.5, 0.3), (0.4, 0.9, 0.5), (0.2, 0.7, None), (0.6, 1.0, 0.45), (0.55, 0.8, 0.5), (0.7, 1.0, 0.4)]
    for r, c, sd in script[:3]:
        a.step(r, c, reward_std=sd)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))  # as the trainer stores it
    for r, c, sd in script[3:]:
        assert a.step(r, c, reward_std=sd) == b.step(r, c, reward_std=sd)
    assert a.state_dict() == b.state_dict() and a.metrics() == b.metrics()
    assert a.alpha < 0.9  # the resumed part did move alpha


def test_guarded_refuses_state_without_reward_spread():
    # a state saved when s_R was the running std of the mean rewards (keys n/mean/m2) is refused, not half-loaded
    old = {"alpha": 0.7, "baseline": 0.3, "step_count": 5, "n": 5, "mean": 0.3, "m2": 0.01, "last": {}}
    with pytest.raises(ValueError, match="var_n"):
        GuardedAlpha().load_state_dict(old)


def test_guarded_update_uses_anchored_entropy_zero_on_policy():
    s = GuardedAlpha()
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    uniform = torch.full((1, 4), -math.log(4))
    s.update(rewards_BG=rewards, log_q_BG=apo.boltzmann_log_target(rewards, 1.0), log_p_BG=uniform)
    assert s.last["confidence"] == pytest.approx(0.0, abs=1e-9) and s.alpha == pytest.approx(0.9)
    # the spread of the individual rewards: unbiased std of (1, 0, 0, 1) = sqrt(4 * 0.25 / 3) = 0.577350
    assert s.reward_scale == pytest.approx(0.577350, abs=1e-6)


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
