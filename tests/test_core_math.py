"""The APO math on hand-computed values, limits, Theorem 4.1, the on-policy closed form and invariances."""

import math

import pytest
import torch

import apo
from apo.core.objectives import adpo_loss, apo_loss


@pytest.fixture(autouse=True)
def _float64():
    """Float64 for this module's tests only (set at import, it would leak into every other test file)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


# One group of P = 3 with rewards R = (1, 0, 0):
#   mean = 1/3, population var = ((2/3)^2 + 2 (1/3)^2) / 3 = 2/9, std = sqrt(2)/3
#   A = (2/3, -1/3, -1/3) / (sqrt(2)/3) = (sqrt 2, -1/sqrt 2, -1/sqrt 2) = (1.41421, -0.70711, -0.70711)
#   beta_r = 1: exp(A) = (4.11325, 0.49307, 0.49307), sum = 5.09939, q = (0.80662, 0.09669, 0.09669)
R3 = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)
Q3 = torch.tensor([[0.806617, 0.096692, 0.096692]], dtype=torch.float64)
UNIFORM3 = torch.full((1, 3), -math.log(3.0), dtype=torch.float64)


def test_boltzmann_target_hand_computed():
    assert torch.allclose(apo.boltzmann_target(R3, 1.0), Q3, atol=1e-5)
    # beta_r = 0.5 squares the unnormalised weights: exp(2A) = (16.9188, 0.24312, 0.24312), sum 17.4050
    assert torch.allclose(apo.boltzmann_target(R3, 0.5), torch.tensor([[0.97206, 0.013968, 0.013968]]), atol=1e-5)


def test_alpha_divergence_hand_computed():
    # p uniform (u = 0). alpha = 1/2: sum_i sqrt(q_i / 3) = 0.57735 * (0.89812 + 2 * 0.31095) = 0.877586
    #   D = (1 - 0.877586) / (0.5 * 0.5) = 0.489654
    assert apo.alpha_divergence(Q3, UNIFORM3, 0.5).item() == pytest.approx(0.489654, abs=1e-5)
    # alpha = 1: KL(q || p) = sum q log q + log 3 = -0.17334 - 2 * 0.22589 + 1.09861 = 0.473477
    assert apo.alpha_divergence(Q3, UNIFORM3, 1.0).item() == pytest.approx(0.473477, abs=1e-5)
    # alpha = 0: KL(p || q) = (1/3) sum log((1/3) / q_i) = (1/3)(-0.88351 + 2 * 1.23764) = 0.530508
    assert apo.alpha_divergence(Q3, UNIFORM3, 0.0).item() == pytest.approx(0.530508, abs=1e-5)


def test_effective_sample_size_hand_computed():
    # p uniform: w_i = q_i^a (1/3)^(1-a).
    # a = 1: ESS = 1 / sum q^2 = 1 / (0.650631 + 2 * 0.009349) = 1 / 0.669330 = 1.49403
    assert apo.effective_sample_size(Q3.log(), UNIFORM3, 1.0).item() == pytest.approx(1.49403, abs=1e-4)
    # a = 0: w uniform, ESS = P = 3
    assert apo.effective_sample_size(Q3.log(), UNIFORM3, 0.0).item() == pytest.approx(3.0, abs=1e-12)


def _random_case(B=4, G=6, seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    q = torch.softmax(torch.randn(B, G, generator=g) * scale, -1)
    u = torch.randn(B, G, generator=g) * scale
    return q, u


@pytest.mark.parametrize("alpha", [0.05, 0.3, 0.5, 0.6, 0.9, 0.999])
def test_theorem_4_1_gradient(alpha):
    q, u = _random_case()
    u.requires_grad_(True)
    log_p = torch.log_softmax(u, -1)
    apo.alpha_divergence(q, log_p, alpha).sum().backward()
    # Theorem 4.1: dD/du_j = -(1/a) sum_i p_i r_i^a (delta_ij - p_j) = -(1/a) (p_j r_j^a - p_j E_p[r^a])
    p = log_p.detach().exp()
    pr = p * (q / p) ** alpha
    expected = -(pr - p * pr.sum(-1, keepdim=True)) / alpha
    assert torch.allclose(u.grad, expected, atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("alpha", [0.0, 1e-7, 0.3, 0.5, 0.7, 1 - 1e-7, 1.0])
def test_finite_differences(alpha):
    q, u = _random_case(B=2, G=4, seed=1)
    u.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: apo.alpha_divergence(q, torch.log_softmax(x, -1), alpha), (u,))


def test_kl_limits_without_jump():
    q, u = _random_case(seed=2)
    log_p = torch.log_softmax(u, -1)
    fwd, rev = apo.kl_divergence(q.log(), log_p), apo.kl_divergence(log_p, q.log())
    assert torch.allclose(apo.alpha_divergence(q, log_p, 1.0), fwd, atol=1e-12)
    assert torch.allclose(apo.alpha_divergence(q, log_p, 0.0), rev, atol=1e-12)
    for eps in (1e-4, 1e-6, 1e-9):
        # D_a is smooth: D(1 - e) = KL(q||p) + O(e), D(e) = KL(p||q) + O(e); no cancellation blow-up near the ends.
        assert torch.allclose(apo.alpha_divergence(q, log_p, 1 - eps), fwd, atol=50 * eps)
        assert torch.allclose(apo.alpha_divergence(q, log_p, eps), rev, atol=50 * eps)


def test_float32_near_limits_matches_float64():
    q, u = _random_case(seed=3)
    log_p = torch.log_softmax(u, -1)
    for alpha in (1e-6, 1e-3, 0.5, 1 - 1e-3, 1 - 1e-6):
        d64 = apo.alpha_divergence(q, log_p, alpha)
        d32 = apo.alpha_divergence(q.float(), log_p.float(), alpha)
        assert torch.allclose(d32.double(), d64, rtol=1e-4, atol=1e-5), alpha


def test_apo_at_alpha_one_has_adpo_gradient():
    g = torch.Generator().manual_seed(4)
    rewards = torch.randint(0, 2, (3, 5), generator=g).double()
    ref = torch.randn(3, 5, generator=g)
    seq1 = (ref + 0.3 * torch.randn(3, 5, generator=g)).requires_grad_(True)
    seq2 = seq1.detach().clone().requires_grad_(True)
    apo_loss(seq1, ref, rewards, alpha=1.0, tau_anchor=0.8)[0].backward()
    adpo_loss(seq2, ref, rewards, tau_anchor=0.8)[0].backward()
    assert torch.allclose(seq1.grad, seq2.grad, atol=1e-12)


@pytest.mark.parametrize("alpha", [0.35, 0.6, 0.9])
def test_on_policy_closed_form(alpha):
    # u = 0: dL/dl_i = -(1 / (a tau)) (w_i - mean_j w_j) / B with w_i = q_i^a P^(a-1)
    g = torch.Generator().manual_seed(5)
    B, P, tau = 4, 8, 0.8
    rewards = torch.randint(0, 2, (B, P), generator=g).double()
    ref = torch.randn(B, P, generator=g) * 5
    seq = ref.clone().requires_grad_(True)
    apo_loss(seq, ref, rewards, alpha=alpha, tau_anchor=tau, beta_reward=1.0)[0].backward()
    w = apo.boltzmann_target(rewards, 1.0) ** alpha * P ** (alpha - 1)
    expected = -(w - w.mean(-1, keepdim=True)) / (alpha * tau) / B
    assert torch.allclose(seq.grad, expected, atol=1e-12)


def test_permuting_a_group_permutes_outputs():
    g = torch.Generator().manual_seed(6)
    rewards = torch.rand(2, 6, generator=g)
    seq, ref = torch.randn(2, 6, generator=g), torch.randn(2, 6, generator=g)
    perm = torch.randperm(6, generator=g)
    q, qp = apo.boltzmann_target(rewards, 1.0), apo.boltzmann_target(rewards[:, perm], 1.0)
    assert torch.allclose(qp, q[:, perm], atol=1e-12)
    lp, lpp = apo.anchored_log_policy(seq, ref, 0.8), apo.anchored_log_policy(seq[:, perm], ref[:, perm], 0.8)
    assert torch.allclose(lpp, lp[:, perm], atol=1e-12)
    for alpha in (0.2, 0.7):
        assert torch.allclose(apo.alpha_divergence(qp, lpp, alpha), apo.alpha_divergence(q, lp, alpha), atol=1e-12)
        assert torch.allclose(
            apo.effective_sample_size(qp.log(), lpp, alpha), apo.effective_sample_size(q.log(), lp, alpha)
        )


def test_reward_shift_and_scale_change_nothing():
    rewards = torch.tensor([[0.0, 1.0, 1.0, 0.5], [3.0, -1.0, 2.0, 0.0]])
    q = apo.boltzmann_target(rewards, 0.7)
    assert torch.allclose(apo.boltzmann_target(rewards + 11.0, 0.7), q, atol=1e-12)
    # the eps in the z-score denominator makes scaling invariant to ~eps / std
    assert torch.allclose(apo.boltzmann_target(rewards * 3.0, 0.7), q, atol=1e-5)
    seq, ref = torch.randn(2, 4), torch.randn(2, 4)
    l1, _ = apo_loss(seq, ref, rewards, alpha=0.6)
    l2, _ = apo_loss(seq, ref, rewards * 3.0 + 11.0, alpha=0.6)
    assert l1.item() == pytest.approx(l2.item(), abs=1e-5)


def test_equal_rewards_give_uniform_target_and_are_reported():
    rewards = torch.tensor([[1.0, 1.0, 1.0], [0.0, 1.0, 0.0]])
    q = apo.boltzmann_target(rewards, 1.0)
    assert torch.allclose(q[0], torch.full((3,), 1 / 3))
    _, metrics = apo_loss(torch.zeros(2, 3), torch.zeros(2, 3), rewards, alpha=0.5)
    assert metrics["apo/zero_var_frac"].item() == 0.5
    # on-policy (p uniform), the one group with signal: ESS of q^0.5 = [1, e^1.41, 1]^0.5 over G = 3, by hand:
    # z = [-0.7071, 1.4142, -0.7071] (population std 0.4714), w ~ exp(0.5 z) = [0.7022, 2.0281, 0.7022],
    # ESS = (3.4325)^2 / (0.4931 + 4.1132 + 0.4931) = 11.7821 / 5.0994 = 2.3105, / 3 = 0.7702
    assert metrics["apo/ess_signal"].item() == pytest.approx(0.7702, abs=2e-4)
    _, flat = apo_loss(torch.zeros(1, 3), torch.zeros(1, 3), rewards[:1], alpha=0.5)
    assert flat["apo/ess"].item() == pytest.approx(1.0) and math.isnan(flat["apo/ess_signal"].item())


def test_weight_clipping_is_straight_through():
    q, u = _random_case(B=3, G=5, seed=7, scale=3.0)
    rewards = torch.log(q)  # any rewards; we only need the target to be far from p
    ref = torch.zeros(3, 5)
    alpha, clip = 0.4, (0.8, 1.25)
    seq = u.clone().requires_grad_(True)
    loss, metrics = apo_loss(seq, ref, rewards, alpha=alpha, tau_anchor=1.0, weight_clip=clip)
    loss_plain, _ = apo_loss(u, ref, rewards, alpha=alpha, tau_anchor=1.0)
    assert loss.item() == pytest.approx(loss_plain.item(), abs=1e-12)  # the value is D_alpha's
    loss.backward()
    # gradient = -(1/a) sum_i p_i clip(r_i^a) d log p_i / B, d log p_i / du_j = delta_ij - p_j
    log_q = apo.boltzmann_log_target(rewards, 1.0)
    p = torch.softmax(u, -1)
    w = ((log_q.exp() / p) ** alpha).clamp(*clip)
    pw = p * w
    expected = -(pw - p * pw.sum(-1, keepdim=True)) / alpha / 3
    assert torch.allclose(seq.grad, expected, atol=1e-10)
    assert 0.0 < metrics["apo/clip_frac"].item() <= 1.0
    # clipping to [0, inf) changes nothing
    seq2 = u.clone().requires_grad_(True)
    apo_loss(seq2, ref, rewards, alpha=alpha, weight_clip=(0.0, float("inf")))[0].backward()
    seq3 = u.clone().requires_grad_(True)
    apo_loss(seq3, ref, rewards, alpha=alpha)[0].backward()
    assert torch.allclose(seq2.grad, seq3.grad, atol=1e-10)


def test_sequence_scores_sum_and_mean():
    logp = torch.tensor([[-1.0, -2.0, float("-inf")], [-0.5, -0.5, -0.5]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert apo.sequence_logprob(logp, mask).tolist() == [-3.0, -1.5]
    assert apo.sequence_logprob(logp, mask, "mean").tolist() == [-1.5, -0.5]


def test_metrics_are_present_and_sane():
    g = torch.Generator().manual_seed(8)
    rewards = torch.randint(0, 2, (4, 8), generator=g).double()
    ref = torch.randn(4, 8, generator=g)
    _, m = apo_loss(ref + 0.1, ref, rewards, alpha=0.6, weight_clip=(0.5, 2.0))
    for key in (
        "apo/divergence",
        "apo/alpha",
        "apo/ess",
        "apo/entropy",
        "apo/confidence",
        "apo/u_abs_max",
        "apo/u_abs_mean",
        "apo/weight_var",
        "apo/zero_var_frac",
        "apo/clip_frac",
    ):
        assert key in m and torch.isfinite(m[key]), key
    # every u equals 0.1 / tau: the anchored p is uniform, confidence 0, |u| = 0.1
    assert m["apo/confidence"].item() == pytest.approx(0.0, abs=1e-9)
    assert m["apo/u_abs_max"].item() == pytest.approx(0.1, abs=1e-9)
    assert m["apo/alpha"].item() == pytest.approx(0.6)


@pytest.mark.parametrize("alpha, clip", [(0.0, None), (0.35, None), (0.9, None), (1.0, None), (0.5, (0.8, 1.25))])
def test_on_policy_advantages_give_the_apo_gradient(alpha, clip):
    # A per-sample policy-gradient loss -(1/(B G)) sum_i A_i l_i has APO's gradient at u = 0.
    g = torch.Generator().manual_seed(9)
    B, G, tau = 3, 8, 0.8
    rewards = torch.randint(0, 2, (B, G), generator=g).double()
    ref = torch.randn(B, G, generator=g)
    seq = ref.clone().requires_grad_(True)
    apo_loss(seq, ref, rewards, alpha=alpha, tau_anchor=tau, weight_clip=clip)[0].backward()
    adv = apo.on_policy_advantages(rewards, alpha=alpha, tau_anchor=tau, beta_reward=1.0, weight_clip=clip)
    assert torch.allclose(seq.grad, -adv / (B * G), atol=1e-12)
