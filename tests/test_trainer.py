"""APOTrainer / APOConfig on a tiny random Llama, CPU, offline: config checks, short runs of every algorithm and
schedule, group integrity, loss parity with TRL, the alpha that reaches the loss, and resume."""

from __future__ import annotations

import inspect
import math
import os
import subprocess
import sys

import pytest
import torch
from conftest import FAST_DEFAULTS, build_tiny_llama, count_a_reward, hash_reward, prompt_dataset

import apo
from apo.core.objectives import apo_objective, grpo_loss, gspo_loss

# ----------------------------------------------------------------------------------------------------------------
# Version pin and import hygiene.


def test_trl_version_is_the_tested_one():
    import trl

    from apo.integrations.trl.trainer import TESTED_TRL_VERSION

    assert trl.__version__ == TESTED_TRL_VERSION == "1.16.0", (
        f"APOTrainer overrides private GRPOTrainer hooks tested with trl 1.16.0; installed trl {trl.__version__}. "
        "Re-check _prepare_inputs, _generate_and_score_completions, _calculate_rewards, _compute_loss, "
        "_get_per_token_logps_and_entropies and the old-log-prob condition before moving the pin."
    )


def test_overridden_trl_hooks_keep_their_signatures():
    from trl import GRPOTrainer

    expected = {
        "_prepare_inputs": ["self", "generation_batch"],
        "_generate_and_score_completions": ["self", "inputs"],
        "_calculate_rewards": ["self", "inputs", "prompts", "completions", "completion_ids_list"],
        "_compute_loss": ["self", "model", "inputs"],
        "_save_checkpoint": ["self", "model", "trial"],
        "_load_optimizer_and_scheduler": ["self", "checkpoint"],
    }
    for name, params in expected.items():
        assert list(inspect.signature(getattr(GRPOTrainer, name)).parameters) == params, name
    sig = inspect.signature(GRPOTrainer._get_per_token_logps_and_entropies).parameters
    assert {"model", "input_ids", "attention_mask", "logits_to_keep", "compute_entropy"} <= set(sig)
    # The hook apo.integrations.trl.scoring switches on CPU: TRL's compact test in the fused LM head.
    import trl.trainer.utils as trl_utils

    assert "compact = _use_triton(hidden_states.device)" in inspect.getsource(trl_utils.add_fused_lm_head)
    # The condition under which TRL computes old_per_token_logps (pi_old), on which the anchor relies.
    source = inspect.getsource(GRPOTrainer._generate_and_score_completions)
    assert "self.args.gradient_accumulation_steps % generate_every != 0" in source


def test_import_apo_does_not_import_trl():
    code = "import sys, apo; apo.make_groups; assert 'trl' not in sys.modules, 'trl imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# ----------------------------------------------------------------------------------------------------------------
# Config.


def config(**overrides):
    return apo.APOConfig(**{**FAST_DEFAULTS, "output_dir": "/tmp/apo-test-config", **overrides})


@pytest.mark.parametrize(
    "overrides, names",
    [
        ({"alpha_min": 0.8, "alpha_max": 0.5}, ["alpha_min", "alpha_max"]),
        ({"alpha": 1.5}, ["alpha"]),
        ({"alpha": -0.1}, ["alpha"]),
        ({"tau_anchor": 0.0}, ["tau_anchor"]),
        ({"beta_reward": -1.0}, ["beta_reward"]),
        ({"num_generations": 1, "per_device_train_batch_size": 1}, ["num_generations"]),
        ({"per_device_train_batch_size": 6}, ["per_device_train_batch_size", "num_generations"]),
        ({"algorithm": "adpo", "per_device_train_batch_size": 2}, ["per_device_train_batch_size", "num_generations"]),
        ({"algorithm": "ppo"}, ["algorithm"]),
        ({"alpha_schedule": "cosine"}, ["alpha_schedule"]),
        ({"algorithm": "grpo", "alpha_schedule": "guarded"}, ["alpha_schedule", "algorithm"]),
        ({"confidence_source": "sequence"}, ["confidence_source", "alpha_schedule"]),
        ({"sequence_score": "max"}, ["sequence_score"]),
        ({"weight_clip_min": 0.5, "weight_clip_max": 0.9}, ["weight_clip_min", "weight_clip_max"]),
        ({"beta": 0.04}, ["beta"]),
        ({"scale_rewards": "batch"}, ["scale_rewards"]),
        ({"algorithm": "gspo", "importance_sampling_level": "token"}, ["importance_sampling_level"]),
        ({"algorithm": "dapo", "importance_sampling_level": "sequence"}, ["importance_sampling_level", "'grpo'"]),
        ({"algorithm": "gspo", "loss_type": "dapo"}, ["loss_type", "algorithm='grpo'"]),
        ({"algorithm": "grpo", "loss_type": "vespo", "importance_sampling_level": "sequence"}, ["'token'"]),
        ({"algorithm": "grpo", "loss_type": "ppo"}, ["loss_type", "dapo"]),
        ({"algorithm": "apo", "loss_type": "bogus"}, ["loss_type='bogus'", "leave loss_type unset"]),
        ({"algorithm": "adpo", "importance_sampling_level": "tok"}, ["importance_sampling_level", "'sequence'"]),
        ({"alpha_ema": 0.0, "alpha_schedule": "guarded"}, ["alpha_ema"]),
    ],
)
def test_contradictory_settings_are_rejected(overrides, names):
    with pytest.raises(ValueError) as err:
        config(**overrides)
    for name in names:
        assert name in str(err.value)


def test_peers_may_split_groups_across_micro_batches():
    # TRL's own GRPO tolerates it (advantages are precomputed over the whole generation batch).
    assert config(algorithm="grpo", per_device_train_batch_size=6, steps_per_generation=2).generation_batch_size == 12


def test_gspo_preset_and_explicit_overrides():
    c = config(algorithm="gspo")
    assert (c.importance_sampling_level, c.loss_type, c.epsilon, c.epsilon_high) == ("sequence", "grpo", 3e-4, 4e-4)
    c = config(algorithm="gspo", epsilon=1e-3, epsilon_high=2e-3)
    assert (c.epsilon, c.epsilon_high) == (1e-3, 2e-3)
    c = config(algorithm="grpo")
    assert (c.importance_sampling_level, c.loss_type, c.epsilon, c.epsilon_high) == ("token", "grpo", 0.2, None)


def test_paper_defaults():
    c = config()
    assert (c.algorithm, c.alpha_schedule, c.alpha, c.alpha_min, c.alpha_max) == ("apo", "fixed", 0.6, 0.35, 0.9)
    assert (c.tau_anchor, c.beta_reward, c.alpha_ema, c.baseline_ema, c.reward_scale) == (0.8, 1.0, 0.1, 0.1, 0.5)
    assert (c.sequence_score, c.confidence_source, c.weight_clip) == ("sum", "anchored", None)


def test_vllm_importance_sampling_correction_is_off_for_group_objectives(caplog):
    # vLLM is not installed: the decision is checked on the config and, below, on the loss.
    with caplog.at_level("WARNING"):
        c = config(algorithm="apo", use_vllm=True)
    assert c.vllm_importance_sampling_correction is False
    assert "vllm_importance_sampling_correction is switched off" in caplog.text
    assert config(algorithm="adpo").vllm_importance_sampling_correction is False
    assert config(algorithm="grpo", use_vllm=True).vllm_importance_sampling_correction is True


# ----------------------------------------------------------------------------------------------------------------
# Short runs.


def params_snapshot(model):
    return [p.detach().clone() for p in model.parameters()]


def train_and_check(trainer, expect_prefix):
    before = params_snapshot(trainer.model)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == trainer.args.max_steps
    assert all(math.isfinite(h["loss"]) for h in logs)
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters(), strict=True))
    if expect_prefix:
        assert all(any(k.startswith(expect_prefix) for k in h) for h in logs)
    return logs


@pytest.mark.parametrize(
    "algorithm, schedule, extra",
    [
        ("apo", "fixed", {}),
        ("apo", "fixed", {"weight_clip_min": 0.5, "weight_clip_max": 2.0, "sequence_score": "mean"}),
        ("apo", "guarded", {"confidence_source": "sequence"}),
        ("apo", "guarded", {"confidence_source": "token"}),
        ("apo", "ess", {}),
        ("adpo", "fixed", {}),
        ("grpo", "fixed", {}),
        ("gspo", "fixed", {}),
    ],
)
def test_short_run_every_algorithm_and_schedule(make_trainer, algorithm, schedule, extra):
    trainer = make_trainer(algorithm=algorithm, alpha_schedule=schedule, **extra)
    logs = train_and_check(trainer, "apo/" if algorithm in ("apo", "adpo") else None)
    if algorithm in ("apo", "adpo"):
        for key in ("apo/alpha", "apo/divergence", "apo/u_abs_max", "apo/u_abs_mean", "apo/ess", "apo/entropy"):
            assert all(key in h for h in logs), key
    if algorithm == "adpo":
        assert all(h["apo/alpha"] == 1.0 and "adpo/cross_entropy" in h for h in logs)
    if schedule == "guarded":
        assert all("apo/guard_confidence" in h for h in logs)


# ----------------------------------------------------------------------------------------------------------------
# Group integrity.


class RecordingTrainer(apo.APOTrainer):
    """Checks every loss call: whole groups of one prompt each, and records what the loss saw."""

    def _compute_loss(self, model, inputs):
        G = self.num_generations
        ids = inputs["group_ids"]
        unique, counts = torch.unique(ids, return_counts=True)
        assert bool((counts == G).all()), f"broken groups at a loss call: {ids.tolist()}"
        for gid in unique:
            rows = inputs["prompt_ids"][ids == gid]
            assert bool((rows == rows[0]).all()), "a group mixes prompts"
        self.calls = getattr(self, "calls", [])
        self.calls.append(
            {
                "step": self.state.global_step,
                "ids": sorted(ids.tolist()),
                "has_old": "old_per_token_logps" in inputs,
            }
        )
        return super()._compute_loss(model, inputs)


def test_group_integrity_with_mini_batches_epochs_and_accumulation(make_trainer):
    # 4 prompts x G=2 per rollout, 2 micro-batches of 2 whole groups, each used twice (num_iterations=2), 2 micro-
    # batches per optimizer step: every rollout spans 2 optimizer steps, so the policy moves and u != 0.
    trainer = make_trainer(
        trainer_cls=RecordingTrainer,
        num_generations=2,
        per_device_train_batch_size=4,
        steps_per_generation=2,
        num_iterations=2,
        gradient_accumulation_steps=2,
        max_steps=4,
        alpha_schedule="guarded",
    )
    updates = []
    update = trainer.alpha_schedule.update
    trainer.alpha_schedule.update = lambda **kw: updates.append(update(**kw)) or updates[-1]
    logs = train_and_check(trainer, "apo/")
    assert len(trainer.calls) == 4 * 2
    assert all(c["has_old"] for c in trainer.calls)  # pi_old is computed when the policy can move
    assert len(updates) == 4  # alpha advances once per optimizer step, not per micro-batch
    # Each rollout's 4 groups are split 2 + 2 over its two micro-batches, and each micro-batch is seen twice.
    for r in range(2):
        calls = trainer.calls[4 * r : 4 * r + 4]
        assert sorted(calls[0]["ids"] + calls[1]["ids"]) == sorted(calls[2]["ids"] + calls[3]["ids"])
        assert len(set(calls[0]["ids"] + calls[1]["ids"])) == 4
    assert any(h["apo/u_abs_max"] > 0 for h in logs)  # the second pass over a rollout is off the anchor
    # with the anchored confidence, the schedule moves only once p leaves uniform
    assert logs[0]["apo/guard_confidence"] == 0.0


def test_row_wise_shuffle_breaks_groups_and_is_caught(make_trainer):
    from trl import GRPOTrainer

    class RowShuffleTrainer(apo.APOTrainer):
        def _prepare_inputs(self, generation_batch):  # TRL's stock batching
            return GRPOTrainer._prepare_inputs(self, generation_batch)

    trainer = make_trainer(
        trainer_cls=RowShuffleTrainer,
        num_generations=2,
        per_device_train_batch_size=4,
        steps_per_generation=4,
        max_steps=4,
        dataset=prompt_dataset(32),
    )
    with pytest.raises(ValueError, match="broken groups.*per_device_train_batch_size"):
        trainer.train()


def test_broken_grouping_raises_at_the_loss(make_trainer):
    trainer = make_trainer()
    inputs = hand_built_inputs(trainer, seed=1)
    inputs["group_ids"] = torch.tensor([0, 0, 0, 1])
    with pytest.raises(ValueError, match="broken groups"):
        trainer._compute_loss(trainer.model, inputs)


def test_shuffle_whole_groups_keeps_groups_contiguous():
    from apo.integrations.trl.batching import shuffle_whole_groups

    torch.manual_seed(0)
    ids = torch.tensor([5, 5, 5, 7, 7, 7, 9, 9, 9, 11, 11, 11])
    batch = {"group_ids": ids, "x": torch.arange(12), "names": list("abcdefghijkl"), "n": torch.tensor(3)}
    out = shuffle_whole_groups(batch, 3)
    assert out["n"] is batch["n"]
    blocks = out["group_ids"].view(4, 3)
    assert bool((blocks == blocks[:, :1]).all()) and sorted(blocks[:, 0].tolist()) == [5, 7, 9, 11]
    assert [batch["names"][i] for i in out["x"].tolist()] == out["names"]
    assert torch.equal(batch["group_ids"][out["x"]], out["group_ids"])


def test_local_group_ids_checks_the_sampler_layout():
    from apo.integrations.trl.batching import fill_unscorable, local_group_ids

    assert local_group_ids(["a", "a", "b", "b"], 2, first_group=10).tolist() == [10, 10, 11, 11]
    with pytest.raises(ValueError, match="not 2 completions of one prompt"):
        local_group_ids(["a", "b", "a", "b"], 2, first_group=0)
    with pytest.raises(ValueError, match="not a multiple of G=2"):
        local_group_ids(["a", "a", "b"], 2, first_group=0)
    # NaN (unscorable) -> the group's mean scored reward; an all-NaN group -> zeros
    r = torch.tensor([[1.0, float("nan"), 0.0], [float("nan")] * 3])
    assert fill_unscorable(r).tolist() == [[1.0, 0.5, 0.0], [0.0, 0.0, 0.0]]


# ----------------------------------------------------------------------------------------------------------------
# Losses on one hand-built batch.


def hand_built_inputs(trainer, seed=0, N=4, T=6, old_noise=0.0, per_sequence_noise=None):
    """A fixed batch: random prompt/completion ids with ragged completion masks, rewards, groups of G=4, advantages
    as TRL computes them (z-score, unbiased std + 1e-4), and old log-probs = current + noise."""
    g = torch.Generator().manual_seed(seed)
    vocab = trainer.model.config.vocab_size
    prompt_ids = torch.randint(4, vocab, (N, 3), generator=g)
    completion_ids = torch.randint(4, vocab, (N, T), generator=g)
    lengths = torch.tensor([T, T - 2, 3, T - 1][:N])
    completion_mask = (torch.arange(T)[None] < lengths[:, None]).long()
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.25][:N])
    adv = (rewards - rewards.mean()) / (rewards.std() + 1e-4)
    inputs = {
        "prompt_ids": prompt_ids,
        "prompt_mask": torch.ones_like(prompt_ids),
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "advantages": adv,
        "rewards": rewards,
        "group_ids": torch.zeros(N, dtype=torch.long),
        "num_items_in_batch": completion_mask.sum(),
    }
    with torch.no_grad():
        logp, _, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model,
            torch.cat([prompt_ids, completion_ids], 1),
            torch.cat([inputs["prompt_mask"], completion_mask], 1),
            T,
        )
    noise = old_noise * torch.randn(N, T, generator=g)
    if per_sequence_noise is not None:
        noise = noise + per_sequence_noise[:, None]
    inputs["old_per_token_logps"] = logp + noise
    return inputs


def test_cpu_scoring_projects_only_completion_tokens_with_trl_values(make_trainer, monkeypatch):
    """On CPU the fused LM head sees only the completion tokens (not prompt or padding) and returns TRL's stock
    all-positions log-probs and entropies, and their gradients."""
    import trl.trainer.utils as trl_utils
    from trl import GRPOTrainer

    trainer = make_trainer(algorithm="apo")
    inputs = hand_built_inputs(trainer)
    prompt_mask = inputs["prompt_mask"].clone()
    prompt_mask[1:, 0] = 0  # left padding, as TRL pads prompts
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
    mask = torch.cat([prompt_mask, inputs["completion_mask"]], 1)
    T = inputs["completion_ids"].shape[1]
    rows, apply = [], trl_utils._ChunkedLogProbFunction.apply
    monkeypatch.setattr(
        trl_utils._ChunkedLogProbFunction, "apply", lambda h, *a: rows.append(h.shape[0]) or apply(h, *a)
    )
    weights = torch.randn(ids.shape[0], T, generator=torch.Generator().manual_seed(1))

    def scored(method):
        trainer.model.zero_grad()
        logp, ent, _ = method(trainer, trainer.model, ids, mask, T, compute_entropy=True)
        (logp * weights).sum().backward()
        grads = [p.grad.clone() for p in trainer.model.parameters() if p.grad is not None]
        return logp.detach(), ent, grads

    stock_use_triton = trl_utils._use_triton
    ours = scored(type(trainer)._get_per_token_logps_and_entropies)
    stock = scored(GRPOTrainer._get_per_token_logps_and_entropies)
    assert rows == [int(inputs["completion_mask"].sum()), ids.shape[0] * (ids.shape[1] - 1)]
    assert trl_utils._use_triton is stock_use_triton  # restored after the call
    assert (ours[0][inputs["completion_mask"] == 0] == 0).all()
    torch.testing.assert_close(ours[0], stock[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours[1], stock[1], rtol=1e-5, atol=1e-6)
    assert len(ours[2]) == len(stock[2]) > 0
    for a, b in zip(ours[2], stock[2], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_cpu_scoring_restores_trl_on_error():
    import trl.trainer.utils as trl_utils

    from apo.integrations.trl.scoring import score_completions_only

    stock = trl_utils._use_triton
    with pytest.raises(RuntimeError, match="boom"), score_completions_only(torch.device("cpu")) as switched:
        assert switched and trl_utils._use_triton(torch.device("cpu"))
        raise RuntimeError("boom")
    assert trl_utils._use_triton is stock and not stock(torch.device("cpu"))
    with score_completions_only(torch.device("meta")) as switched:
        assert not switched and trl_utils._use_triton is stock


def loss_and_grads(trainer, fn):
    trainer.model.train()
    trainer.model.zero_grad()
    loss = fn()
    loss.backward()
    grads = [p.grad.detach().clone() for p in trainer.model.parameters() if p.grad is not None]
    return loss.detach(), grads


def library_loss(trainer, inputs, loss_fn, **kw):
    logp, _, _ = trainer._get_per_token_logps_and_entropies(
        trainer.model,
        torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1),
        torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1),
        inputs["completion_ids"].shape[1],
    )
    loss, _ = loss_fn(logp, inputs["old_per_token_logps"], inputs["advantages"], inputs["completion_mask"], **kw)
    return loss


@pytest.mark.parametrize(
    "algorithm, loss_fn, eps, noise",
    [
        ("grpo", grpo_loss, (0.2, 0.2), {"old_noise": 0.3}),
        ("gspo", gspo_loss, (3e-4, 4e-4), {"per_sequence_noise": torch.tensor([-1e-3, 1e-3, 1e-4, -5e-4])}),
    ],
)
def test_library_peer_losses_match_trl(make_trainer, algorithm, loss_fn, eps, noise):
    trainer = make_trainer(algorithm=algorithm)
    trainer.current_gradient_accumulation_steps = 1
    inputs = hand_built_inputs(trainer, **noise)
    trl_loss, trl_grads = loss_and_grads(trainer, lambda: trainer._compute_loss(trainer.model, inputs))
    lib_loss, lib_grads = loss_and_grads(
        trainer, lambda: library_loss(trainer, inputs, loss_fn, eps_low=eps[0], eps_high=eps[1])
    )
    assert trainer._metrics["train"]["clip_ratio/region_mean"][-1] > 0  # clipping is active on this batch
    torch.testing.assert_close(lib_loss, trl_loss, rtol=1e-6, atol=1e-7)
    for a, b in zip(lib_grads, trl_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_configured_alpha_is_the_alpha_of_the_loss(make_trainer):
    losses = {}
    for alpha in (0.3, 0.9):
        trainer = make_trainer(alpha=alpha, gradient_accumulation_steps=2)
        trainer.current_gradient_accumulation_steps = 2
        inputs = hand_built_inputs(trainer, old_noise=0.2)
        trainer.model.train()
        loss = trainer._compute_loss(trainer.model, inputs)
        assert trainer._metrics["train"]["apo/alpha"] == [pytest.approx(alpha)]
        logp, _, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model,
            torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1),
            torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1),
            inputs["completion_ids"].shape[1],
        )
        expected, _ = apo_objective(
            logp,
            inputs["old_per_token_logps"],
            inputs["completion_mask"],
            inputs["rewards"],
            inputs["group_ids"],
            alpha=alpha,
            tau_anchor=0.8,
        )
        torch.testing.assert_close(loss, expected / 2)  # divided by the accumulation steps, as TRL's grpo loss
        losses[alpha] = loss.item()
    assert abs(losses[0.3] - losses[0.9]) > 1e-3


def test_vllm_importance_ratio_never_reaches_the_apo_loss(make_trainer):
    trainer = make_trainer()
    trainer.current_gradient_accumulation_steps = 1
    inputs = hand_built_inputs(trainer, old_noise=0.2)
    trainer.model.train()
    base = trainer._compute_loss(trainer.model, inputs)
    inputs["importance_sampling_ratio"] = torch.full_like(inputs["old_per_token_logps"], 5.0)
    inputs["sampling_per_token_logps"] = inputs["old_per_token_logps"] - 1.0
    torch.testing.assert_close(trainer._compute_loss(trainer.model, inputs), base)


def test_missing_old_logps_after_a_step_raise(make_trainer):
    trainer = make_trainer()
    trainer.current_gradient_accumulation_steps = 1
    inputs = hand_built_inputs(trainer)
    del inputs["old_per_token_logps"]
    trainer._generated_at_step = 0
    trainer.state.global_step = 1
    trainer.model.train()
    with pytest.raises(RuntimeError, match="pi_old"):
        trainer._compute_loss(trainer.model, inputs)


# ----------------------------------------------------------------------------------------------------------------
# alpha in the logs, and resume.


def test_logged_alpha_is_the_scheduled_alpha(make_trainer):
    trainer = make_trainer(alpha_schedule="guarded", confidence_source="sequence", max_steps=3)
    # one earlier step at mean reward 0 sets the baseline to 0 (the first step of a run is never a gain, b_0 = R_1),
    # so the first training step's positive mean reward is a gain and alpha moves off alpha_max
    assert trainer.alpha_schedule.step(0.0, 1.0) == 0.9
    produced = []
    update = trainer.alpha_schedule.update
    trainer.alpha_schedule.update = lambda **kw: produced.append(update(**kw)) or produced[-1]
    logs = train_and_check(trainer, "apo/")
    assert len(produced) == 3
    assert [h["apo/alpha"] for h in logs] == pytest.approx(produced, rel=1e-6)
    assert produced[0] < 0.9  # confident and improving: alpha moved below alpha_max


@pytest.mark.parametrize(
    "layout, expected_groups",
    [
        # one optimizer step per rollout of 2 groups, 1 group per micro-batch: alpha sees both groups
        (dict(gradient_accumulation_steps=2, max_steps=2), [2, 2]),
        # 4 optimizer steps per rollout of 4 groups: the first from the whole rollout (u = 0), the next three from
        # their micro-batch (u != 0 after an update)
        (dict(steps_per_generation=4, max_steps=4), [4, 1, 1, 1]),
        # two rollouts per optimizer step: the first one stands for the step, the second does not advance alpha
        (dict(gradient_accumulation_steps=2, steps_per_generation=1, max_steps=2), [1, 1]),
    ],
)
def test_alpha_comes_from_the_whole_rollout_when_a_rollout_starts_the_step(make_trainer, layout, expected_groups):
    trainer = make_trainer(alpha_schedule="ess", reward_funcs=hash_reward, **layout)
    seen, produced = [], []
    update = trainer.alpha_schedule.update

    def spy(**kw):
        seen.append({k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in kw.items()})
        produced.append(update(**kw))
        return produced[-1]

    trainer.alpha_schedule.update = spy
    logs = train_and_check(trainer, "apo/")
    assert [k["rewards_BG"].shape[0] for k in seen] == expected_groups
    # the rollout's p is uniform (u = 0), its q the Boltzmann target of those rewards
    first = seen[0]
    assert torch.allclose(first["log_p_BG"], torch.full_like(first["log_p_BG"], -math.log(4)), atol=1e-12)
    assert torch.allclose(first["log_q_BG"], apo.boltzmann_log_target(first["rewards_BG"], 1.0))
    ga = layout.get("gradient_accumulation_steps", 1)
    if layout.get("steps_per_generation", ga) >= ga:  # one rollout in the step: the schedule saw all its completions
        assert logs[0]["reward"] == pytest.approx(first["rewards_BG"].mean().item(), rel=1e-6)
    assert [h["apo/alpha"] for h in logs] == pytest.approx(produced, rel=1e-6)


# A peaked random model (init_std 0.5): the token confidence is far from 0, so alpha moves and its state matters.
GUARDED = dict(
    alpha_schedule="guarded",
    confidence_source="token",
    max_steps=3,
    alpha_ema=0.5,
    init_std=0.5,
    reward_funcs=hash_reward,
)
COMPARED = ("apo/alpha", "apo/divergence", "apo/guard_baseline", "apo/guard_reward_scale", "reward", "loss")


def test_resume_continues_the_schedule(make_trainer):
    full = make_trainer(**GUARDED, save_strategy="steps", save_steps=2)
    full.train()
    ref = [h for h in full.state.log_history if "loss" in h]
    ckpt = os.path.join(full.args.output_dir, "checkpoint-2")
    state = os.path.join(ckpt, "apo_alpha_schedule.json")
    assert os.path.exists(state)

    resumed = make_trainer(**GUARDED)
    resumed.train(resume_from_checkpoint=ckpt)
    step3 = [h for h in resumed.state.log_history if "loss" in h and h["step"] == 3]
    assert len(step3) == 1
    for key in COMPARED:
        assert step3[0][key] == pytest.approx(ref[2][key], rel=1e-5, abs=1e-7), key

    # Without the saved state, the schedule restarts and step 3's alpha differs: the state matters.
    os.remove(state)
    fresh = make_trainer(**GUARDED)
    with pytest.warns(RuntimeWarning, match="restarts"):
        fresh.train(resume_from_checkpoint=ckpt)
    restarted = [h for h in fresh.state.log_history if "loss" in h and h["step"] == 3][0]
    assert restarted["reward"] == pytest.approx(ref[2]["reward"], rel=1e-6)
    assert abs(restarted["apo/alpha"] - ref[2]["apo/alpha"]) > 1e-3


def test_reward_funcs_used(make_trainer):
    # the raw rewards carried to the loss are TRL's weighted sum over reward functions
    def const(completions, **kw):
        return [1.0] * len(completions)

    trainer = make_trainer(reward_funcs=[count_a_reward, const], reward_weights=[2.0, 0.5], max_steps=1)
    seen = []
    compute = trainer._compute_loss
    trainer._compute_loss = lambda model, inputs: seen.append(inputs["rewards"].clone()) or compute(model, inputs)
    trainer.train()
    logged = trainer.state.log_history[0]
    mean = seen[0].mean().item()
    assert mean == pytest.approx(2.0 * logged["rewards/count_a_reward/mean"] + 0.5, rel=1e-5)


def test_a_step_without_reward_variance_logs_no_ess_over_signal_groups(make_trainer):
    def const(completions, **kw):
        return [1.0] * len(completions)

    trainer = make_trainer(reward_funcs=const, max_steps=1)
    trainer.train()
    logged = trainer.state.log_history[0]
    assert logged["apo/zero_var_frac"] == 1.0 and logged["apo/ess"] == pytest.approx(1.0)
    assert "apo/ess_signal" not in logged  # undefined: neither a placeholder nor NaN in the logs


def test_tiny_model_builder_is_deterministic(tokenizer):
    a, b = build_tiny_llama(tokenizer), build_tiny_llama(tokenizer)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))


def test_evaluation_uses_whole_groups_and_leaves_alpha_alone(make_trainer):
    trainer = make_trainer(
        alpha_schedule="guarded",
        confidence_source="sequence",
        eval_strategy="steps",
        eval_steps=1,
        per_device_eval_batch_size=4,
        max_steps=1,
        eval_dataset=prompt_dataset(8),
    )
    produced = []
    update = trainer.alpha_schedule.update
    trainer.alpha_schedule.update = lambda **kw: produced.append(update(**kw)) or produced[-1]
    trainer.train()
    evals = [h for h in trainer.state.log_history if "eval_loss" in h]
    assert evals and math.isfinite(evals[0]["eval_loss"]) and "eval_apo/divergence" in evals[0]
    assert len(produced) == 1  # one optimizer step; evaluation did not advance the schedule
    assert evals[0]["eval_apo/alpha"] == pytest.approx(produced[0], rel=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# Truncated completions.


@pytest.mark.parametrize("algorithm", ["apo", "adpo", "grpo", "gspo"])
@pytest.mark.parametrize("policy", ["zero", "grade"])
def test_truncated_completions_policy(make_trainer, tokenizer, algorithm, policy):
    def const(completions, **kw):
        return [1.0] * len(completions)

    trainer = make_trainer(
        reward_funcs=const,
        algorithm=algorithm,
        truncated_completions=policy,
        max_completion_length=2,
        per_device_train_batch_size=16,
        max_steps=1,
    )
    # Raise the EOS logit so that about half of the 2-token completions end and half are cut.
    bias_V = torch.zeros(len(tokenizer))
    bias_V[tokenizer.eos_token_id] = 3.0
    trainer.model.lm_head.register_forward_hook(lambda module, inputs, out: out + bias_V.to(out.dtype))
    seen = []
    calculate = trainer._calculate_rewards

    def spy(inputs, prompts, completions, completion_ids_list):
        rewards = calculate(inputs, prompts, completions, completion_ids_list)
        seen.append(([list(map(int, ids)) for ids in completion_ids_list], rewards.clone()))
        return rewards

    trainer._calculate_rewards = spy
    trainer.train()
    ids_list, rewards_N1 = seen[0]
    cut = torch.tensor([tokenizer.eos_token_id not in ids for ids in ids_list])
    assert all(len(ids) == 2 for ids, c in zip(ids_list, cut.tolist(), strict=True) if c)
    assert 0 < int(cut.sum()) < len(ids_list), "the test needs both cut and finished completions"
    expected_N = torch.where(cut, 0.0 if policy == "zero" else 1.0, 1.0)
    assert torch.equal(rewards_N1[:, 0], expected_N)
    logged = trainer.state.log_history[0]
    assert logged["completions/clipped_ratio"] == pytest.approx(cut.float().mean().item())
    assert logged["completions/truncated_graded_reward"] == pytest.approx(1.0)  # what `const` paid before the policy
    assert logged["reward"] == pytest.approx(1.0)  # TRL's meaning: the graded reward, whatever the policy
    assert logged["rewards/const/mean"] == pytest.approx(1.0)
    if policy == "zero":
        assert logged["reward_zeroed"] == pytest.approx(expected_N.mean().item())  # the mean trained on
    else:
        assert "reward_zeroed" not in logged


def test_truncated_completions_setting_is_validated():
    from apo.cli.config import run_config_class

    with pytest.raises(ValueError, match="truncated_completions"):
        config(truncated_completions="drop")
    assert apo.APOConfig.__dataclass_fields__["truncated_completions"].default == "grade"  # TRL's behaviour
    assert run_config_class().__dataclass_fields__["truncated_completions"].default == "zero"  # `apo train`'s
