"""Property tests over the whole input range, and the errors bad input gets."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import apo
from apo.core.diagnostics import NAN_WHEN_UNDEFINED
from apo.core.objectives import apo_loss, get_objective


@st.composite
def groups(draw):
    G = draw(st.integers(2, 64))
    B = draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**31 - 1))
    u_scale = draw(st.sampled_from([1e-3, 1.0, 30.0, 1e3, 1e4]))
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randint(0, 3, (B, G), generator=g).float()
    u = (torch.rand(B, G, generator=g) * 2 - 1) * u_scale
    return rewards, u


alphas = st.floats(1e-6, 1 - 1e-6)


@settings(max_examples=150, deadline=None)
@given(groups(), alphas, st.sampled_from([torch.float32, torch.float64]))
def test_loss_and_gradient_finite_and_nonnegative(case, alpha, dtype):
    rewards, u = case
    seq = u.to(dtype).requires_grad_(True)
    loss, metrics = apo_loss(seq, torch.zeros_like(seq), rewards.to(dtype), alpha=alpha, tau_anchor=1.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(seq.grad).all()
    q = apo.boltzmann_target(rewards.to(dtype), 1.0)
    d = apo.alpha_divergence(q, torch.log_softmax(u.to(dtype), -1), alpha)
    assert (d >= 0).all(), d
    for key, value in metrics.items():
        if key in NAN_WHEN_UNDEFINED:  # over the groups with reward variance: NaN exactly when there is none
            assert bool(torch.isnan(value)) == (metrics["apo/zero_var_frac"].item() == 1.0), key
        else:
            assert not torch.isnan(value), key


@settings(max_examples=100, deadline=None)
@given(groups(), alphas, st.sampled_from([(0.5, 2.0), (0.5, float("inf")), (0.0, 1.5)]))
def test_clipped_loss_and_gradient_finite(case, alpha, clip):
    rewards, u = case
    seq = u.requires_grad_(True)
    loss, _ = apo_loss(seq, torch.zeros_like(seq), rewards, alpha=alpha, tau_anchor=1.0, weight_clip=clip)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(seq.grad).all()


@settings(max_examples=100, deadline=None)
@given(groups(), alphas)
def test_divergence_is_zero_exactly_when_p_equals_q(case, alpha):
    rewards, u = case
    q = apo.boltzmann_target(rewards.double(), 1.0)
    log_q = q.log()
    assert (apo.alpha_divergence(q, log_q, alpha) == 0).all()
    log_p = torch.log_softmax(u.double(), -1)
    differs = (log_p - log_q).abs().amax(-1) > 1e-3
    assert (apo.alpha_divergence(log_q.exp(), log_p, alpha)[differs] > 0).all()


@settings(max_examples=60, deadline=None)
@given(groups(), alphas)
def test_ess_in_range(case, alpha):
    rewards, u = case
    q = apo.boltzmann_target(rewards, 1.0)
    ess = apo.effective_sample_size(q.log(), torch.log_softmax(u, -1), alpha)
    G = rewards.shape[1]
    assert ((ess >= 1 - 1e-4) & (ess <= G + 1e-3)).all()


# --------------------------------------------------------------------------- groups


def test_make_groups_verifies_and_round_trips():
    ids = torch.tensor([7, 3, 7, 3, 9, 9])
    groups_ = apo.make_groups(ids, 2)
    assert groups_.group_ids_B.tolist() == [3, 7, 9]
    assert groups_.index_BG.tolist() == [[1, 3], [0, 2], [4, 5]]  # members keep their order
    values = torch.arange(6.0)
    assert torch.equal(groups_.scatter(groups_.gather(values)), values)


def test_shuffled_rows_give_the_same_loss_as_ordered_rows():
    g = torch.Generator().manual_seed(0)
    N, G, T = 12, 4, 5
    logp, old = -torch.rand(N, T, generator=g), -torch.rand(N, T, generator=g)
    mask = torch.ones(N, T)
    rewards = torch.randint(0, 2, (N,), generator=g).float()
    ids = torch.arange(N) // G
    perm = torch.randperm(N, generator=g)
    fn = get_objective("apo")
    l1, _ = fn(logp, old, mask, rewards, ids, alpha=0.5, group_size=G)
    l2, _ = fn(logp[perm], old[perm], mask[perm], rewards[perm], ids[perm], alpha=0.5, group_size=G)
    assert l1.item() == pytest.approx(l2.item(), abs=1e-6)


@pytest.mark.parametrize(
    "ids, G, match",
    [
        (torch.tensor([0, 0, 1]), 2, "group 1: 1"),
        (torch.tensor([0, 0, 0, 1, 1, 1]), 2, "group 0: 3.*group 1: 3"),
        (torch.tensor([0, 1, 2]), None, "group size must be >= 2"),
        (torch.tensor([0, 0, 1, 1]), 1, "group size must be >= 2"),
        (torch.tensor([0.0, 0.0]), 2, "integer"),
    ],
)
def test_broken_groups_raise(ids, G, match):
    with pytest.raises(ValueError, match=match):
        apo.make_groups(ids, G, hint="(set num_generations)")


def test_hint_names_the_setting():
    with pytest.raises(ValueError, match="per_device_train_batch_size"):
        apo.make_groups(torch.tensor([0, 0, 1]), 2, hint="Make per_device_train_batch_size a multiple of G.")


def test_bad_input_errors_name_the_setting():
    r = torch.tensor([[1.0, 0.0, 0.5]])
    seq, ref = torch.zeros(1, 3), torch.zeros(1, 3)
    with pytest.raises(ValueError, match="rewards contains NaN"):
        apo_loss(seq, ref, torch.tensor([[1.0, math.nan, 0.0]]), alpha=0.5)
    with pytest.raises(ValueError, match="rewards contains NaN or inf"):
        apo_loss(seq, ref, torch.tensor([[1.0, math.inf, 0.0]]), alpha=0.5)
    with pytest.raises(ValueError, match="policy sequence log-probs"):
        apo_loss(torch.tensor([[0.0, math.nan, 0.0]]), ref, r, alpha=0.5)
    with pytest.raises(ValueError, match="anchor sequence log-probs"):
        apo_loss(seq, torch.tensor([[0.0, -math.inf, 0.0]]), r, alpha=0.5)
    for alpha in (-0.1, 1.1, math.nan):
        with pytest.raises(ValueError, match="alpha must be in"):
            apo_loss(seq, ref, r, alpha=alpha)
    for tau in (0.0, -1.0, math.inf):
        with pytest.raises(ValueError, match="tau_anchor"):
            apo_loss(seq, ref, r, alpha=0.5, tau_anchor=tau)
    for beta in (0.0, -2.0):
        with pytest.raises(ValueError, match="beta_reward"):
            apo_loss(seq, ref, r, alpha=0.5, beta_reward=beta)
    with pytest.raises(ValueError, match="G >= 2"):
        apo_loss(torch.zeros(2, 1), torch.zeros(2, 1), torch.zeros(2, 1), alpha=0.5)
    with pytest.raises(ValueError, match="reward_eps"):
        apo_loss(seq, ref, r, alpha=0.5, eps=0.0)
    with pytest.raises(ValueError, match="weight_clip"):
        apo_loss(seq, ref, r, alpha=0.5, weight_clip=(1.5, 2.0))
    with pytest.raises(ValueError, match="non-finite log-probabilities"):
        apo.sequence_logprob(torch.tensor([[math.nan, 0.0]]), torch.tensor([[1, 1]]))
    with pytest.raises(ValueError, match="valid: \\['adpo', 'apo', 'grpo', 'gspo'\\]"):
        get_objective("ppo")
    with pytest.raises(ValueError, match="loss_agg"):
        get_objective("grpo")(
            torch.zeros(2, 3), None, torch.ones(2, 3), torch.tensor([0.0, 1.0]), torch.tensor([0, 0]), loss_agg="sum"
        )
