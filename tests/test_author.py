"""The author's APO loss (:mod:`apo.core.author`) against values computed by hand, branch by branch.

One group of G = 2 unless said: scores s = (-1.0, -2.0), anchor s_old = (-1.1, -1.9), rewards (1, 0), tau 0.5,
beta_r 0.3, so log_ratio = (0.1, -0.1), u = (0.2, -0.2), A = (0.5, -0.5) and q = softmax(A / 0.3).
"""

from __future__ import annotations

import math

import pytest
import torch

from apo.core.author import author_advantages, author_loss


def _inputs(s=(-1.0, -2.0), old=(-1.1, -1.9), rewards=(1.0, 0.0)):
    logp = torch.tensor([list(s)], dtype=torch.float64, requires_grad=True)
    return logp, torch.tensor([list(old)], dtype=torch.float64), torch.tensor([list(rewards)], dtype=torch.float64)


def _softmax(xs):
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    return [v / sum(e) for v in e]


def _lse(xs):
    m = max(xs)
    return m + math.log(sum(math.exp(x - m) for x in xs))


Q = _softmax([0.5 / 0.3, -0.5 / 0.3])  # (0.96555, 0.03445)
CENTRE = Q[0] * 0.2 + Q[1] * -0.2  # sum q u, detached
UC = [0.2 - CENTRE, -0.2 - CENTRE]  # centred u (use_q_center, on by default)


def test_precomputed_q_branch_is_the_adpo_cross_entropy_plus_the_logit_term():
    logp, old, rewards = _inputs()
    loss, metrics = author_loss(logp, old, rewards, path="precomputed-q")
    # -sum q u + lse(u): the centre cancels (sum q = 1), the logit term 0.01 lse(uc)^2 does not
    expected = -(Q[0] * UC[0] + Q[1] * UC[1]) + _lse(UC) + 0.01 * _lse(UC) ** 2
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    assert metrics["apo_author/switch_frac"].item() == 0.0
    loss.backward()
    p = _softmax(UC)
    # d/ds_i = (p_i - q_i + 0.02 lse p_i) / tau
    grad = [(p[i] - Q[i] + 0.02 * _lse(UC) * p[i]) / 0.5 for i in range(2)]
    assert logp.grad[0].tolist() == pytest.approx(grad, abs=1e-12)


def test_alphapo_branch_off_policy_is_theorem_4_1_surrogate():
    logp, old, rewards = _inputs()
    loss, _ = author_loss(logp, old, rewards, path="alphapo", alpha=0.5)  # mean |log_ratio| 0.1 > 0.01: no switch
    p = _softmax(UC)
    w = [(Q[i] + 1e-10) ** 0.5 * (p[i] + 1e-10) ** 0.5 for i in range(2)]
    expected = -(1 / 0.5) * sum(w[i] * math.log(p[i]) for i in range(2)) + 0.01 * _lse(UC) ** 2
    assert loss.item() == pytest.approx(expected, abs=1e-12)


def test_alphapo_switch_on_policy_is_a_weighted_likelihood_with_an_entropy_bonus():
    logp, old, rewards = _inputs(s=(-1.0, -2.0), old=(-1.0, -2.0))  # on-policy: u = 0, p uniform
    loss, metrics = author_loss(logp, old, rewards, path="alphapo", alpha=0.5)
    assert metrics["apo_author/switch_frac"].item() == 1.0
    w = [(Q[i] + 1e-10) ** 0.5 * (0.5 + 1e-10) ** 0.5 for i in range(2)]
    w_n = [x / (sum(w) + 1e-10) for x in w]  # = sqrt(q) / sum sqrt(q): positive, no baseline
    log2 = math.log(2)
    expected = -(w_n[0] * -1.0 + w_n[1] * -2.0) - 0.01 * log2 + 0.01 * log2**2
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    loss.backward()
    # the entropy is at its maximum (no gradient); the logit term pushes both scores down alike: 0.02 ln2 (1/2) / tau
    grad = [-w_n[i] + 0.02 * log2 * 0.5 / 0.5 for i in range(2)]
    assert logp.grad[0].tolist() == pytest.approx(grad, abs=1e-12)
    assert all(g < 0 for g in logp.grad[0].tolist())  # a descent step raises every score, the wrong answer's too


def test_the_switch_needs_both_the_log_ratio_and_the_spread_of_u_below_the_threshold():
    # mean |log_ratio| = 0.005 < 0.01 but u = (0.01, -0.01) / ... : std(u) = 0.02 / 0.5 * sqrt(2) / 2 > 0.01
    logp, old, rewards = _inputs(s=(-1.0, -2.0), old=(-1.005, -1.995))
    _, metrics = author_loss(logp, old, rewards, path="alphapo", q_center=False)
    assert metrics["apo_author/switch_frac"].item() == 0.0
    logp, old, rewards = _inputs(s=(-1.0, -2.0), old=(-1.001, -1.999))  # both below: the switch fires
    _, metrics = author_loss(logp, old, rewards, path="alphapo", q_center=False)
    assert metrics["apo_author/switch_frac"].item() == 1.0


def test_clips_on_the_log_ratio_then_on_the_anchored_score():
    # log_ratio (7, -7) -> (5, -5); / tau 0.3 -> (16.7, -16.7) -> (10, -10)
    logp, old, rewards = _inputs(s=(-1.0, -15.0), old=(-8.0, -8.0))
    loss, metrics = author_loss(logp, old, rewards, path="precomputed-q", tau=0.3, q_center=False, logit_reg=0.0)
    assert metrics["apo_author/log_ratio_abs_mean"].item() == pytest.approx(5.0)
    expected = -(Q[0] * 10.0 + Q[1] * -10.0) + _lse([10.0, -10.0])
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    loss.backward()
    assert logp.grad.abs().max().item() == 0.0  # both clips saturated: no gradient reaches the scores


def test_adaptive_alpha_and_tau_by_hand():
    logp, old, rewards = _inputs(s=(-0.5, -1.5), old=(-0.6, -1.4))
    V = 100
    _, metrics = author_loss(logp, old, rewards, path="alphapo", adaptive_alpha=True, adaptive_tau=True, vocab_size=V)
    log_v = math.log(V)
    h_static = (0.6 / log_v + 1.4 / log_v) / 2
    confidence = 1 - (0.5 / log_v + 1.5 / log_v) / 2
    signal = 2 * ((1.0 + 0.0) / 2) - 1  # A = (0.5, -0.5): normalised (1, 0), mean 0.5 -> signal 0
    alpha = 0.9 - (0.9 - 0.35) * confidence * max(signal, 0.0)
    tau = min(max(0.5 * (1 + 0.2 * h_static + 0.5 * confidence * -signal), 0.2), 1.5)
    assert metrics["apo_author/alpha"].item() == pytest.approx(alpha)
    assert metrics["apo_author/tau"].item() == pytest.approx(tau)
    # three samples, two right: signal = 2 * mean((1, 1, 0)) - 1 = 1/3 > 0, so alpha moves below alpha_max
    logp3 = torch.tensor([[-0.5, -0.7, -1.5]], dtype=torch.float64)
    rewards3 = torch.tensor([[1.0, 1.0, 0.0]], dtype=torch.float64)
    _, m3 = author_loss(logp3, logp3 - 0.1, rewards3, adaptive_alpha=True, vocab_size=V)
    conf3 = 1 - (0.5 + 0.7 + 1.5) / 3 / log_v
    assert m3["apo_author/alpha"].item() == pytest.approx(0.9 - 0.55 * conf3 * (1 / 3))


def test_advantages_are_centred_or_z_scored_with_the_unbiased_std():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    assert author_advantages(r).tolist() == [[0.5, -0.5, -0.5, 0.5], [0.0, 0.0, 0.0, 0.0]]
    z = author_advantages(r, scale_rewards=True)
    std = math.sqrt(4 * 0.25 / 3)
    assert z[0].tolist() == pytest.approx([0.5 / std, -0.5 / std, -0.5 / std, 0.5 / std])
    assert z[1].tolist() == [0.0, 0.0, 0.0, 0.0]  # std 0 replaced by 1


def test_an_unknown_path_is_refused():
    logp, old, rewards = _inputs()
    with pytest.raises(ValueError, match="path='softmax'"):
        author_loss(logp, old, rewards, path="softmax")


@pytest.mark.parametrize("path", ["alphapo", "precomputed-q"])
def test_apo_author_trains_by_name_and_its_switch_fires_on_policy_only(make_trainer, path):
    # two optimizer steps per rollout: the first of each rollout is on-policy (u = 0), the second is not
    trainer = make_trainer(
        algorithm="apo-author",
        alpha_schedule="fixed",
        sequence_score="mean",
        objective_kwargs={"path": path},
        max_steps=4,
        updates_per_rollout=2,
    )
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()
    rows = [row for row in trainer.state.log_history if "loss" in row]
    switch = [row["apo_author/switch_frac"] for row in rows]
    if path == "alphapo":
        assert switch == [1.0, 0.0, 1.0, 0.0]
    else:
        assert switch == [0.0, 0.0, 0.0, 0.0]  # the cross-entropy branch has no switch
    assert [row["apo_author/log_ratio_abs_mean"] == 0.0 for row in rows] == [True, False, True, False]
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters(), strict=True))


def test_apo_author_presets_are_the_author_s_settings():
    from apo.cli.presets import preset

    ran = preset("apo-author-ran")
    assert ran["objective_kwargs"] == {"path": "precomputed-q"} and ran["sequence_score"] == "mean"
    assert preset("apo-author")["objective_kwargs"] == {"path": "alphapo"}
    paper = preset("apo-author-paper")  # the alpha-divergence branch at the paper's values (Sec. 7.1)
    assert paper["sequence_score"] == "sum"
    assert paper["objective_kwargs"] == {"path": "alphapo", "tau": 0.8, "beta_reward": 1.0, "scale_rewards": True}
    with pytest.raises(ValueError, match="does not accept the setting 'pth'"):
        import apo

        apo.APOConfig(
            output_dir="/tmp/apo-author",
            use_cpu=True,
            algorithm="apo-author",
            alpha_schedule="fixed",
            objective_kwargs={"pth": "alphapo"},
        )
