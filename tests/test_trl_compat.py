"""``APOTrainer(algorithm="grpo")`` as a drop-in for TRL's ``GRPOTrainer``: both run side by side on the same tiny
Llama, data and seed, and must give the same losses, weights (1e-6 relative), logged metrics, reward-function
calls and checkpoint files; every difference that remains is a documented choice (docs/trainer.md, "APOTrainer as a
drop-in for GRPOTrainer"), and each has a test here that switches it off or shows it."""

from __future__ import annotations

import logging
import os

import pytest
import torch
from conftest import FAST_DEFAULTS, build_char_tokenizer, build_tiny_llama, hash_reward, prompt_dataset

import apo
from apo.integrations.trl import trainer as apo_trainer_module

# TRL's defaults but for what a CPU test needs (and APOConfig's truncated_completions, left at its default).
COMMON = {k: v for k, v in FAST_DEFAULTS.items() if k != "truncated_completions"}
COMMON.update(per_device_train_batch_size=8, max_steps=3)
EXTRA_METRICS = {
    "offpolicy/kl_old",
    "offpolicy/seq_log_ratio_abs_mean",
    "offpolicy/seq_log_ratio_abs_max",
    "offpolicy/staleness",
    "completions/truncated_graded_reward",
}
"""Metrics APOTrainer logs beyond TRL's (docs/metrics.md); every TRL metric keeps its name and value."""
TIMING = ("runtime", "per_second", "step_time")


class RecordingReward:
    """A reward function that records what each call receives: ``hash_reward`` of the completions, plus the
    ``answer`` column, so that a wrong column order or batching changes the reward."""

    __name__ = "recording_reward"

    def __init__(self):
        self.calls = []

    def __call__(self, prompts, completions, completion_ids, answer, trainer_state, **kwargs):
        self.calls.append(
            {
                "keys": sorted(kwargs) + ["answer", "completion_ids", "completions", "prompts", "trainer_state"],
                "prompts": list(prompts),
                "completions": list(completions),
                "answer": list(answer),
                "step": trainer_state.global_step,
            }
        )
        return [r + 0.1 * (a == "x") for r, a in zip(hash_reward(completions), answer, strict=True)]


def dataset(n: int = 32):
    ds = prompt_dataset(n)
    return ds.add_column("answer", ["x" if i % 3 else "y" for i in range(n)])


def length_reward(completions, **kwargs):
    """A second reward function that abstains (``None``) on completions of a length divisible by 3."""
    return [None if len(c) % 3 == 0 else len(c) / 8 for c in completions]


def run(kind: str, tmp_path, *, train: bool = True, more_rewards=(), eval_dataset=None, **overrides):
    """Train ``kind`` ("trl": ``GRPOTrainer`` + ``GRPOConfig``; "apo": ``APOTrainer`` + ``APOConfig``;
    "apo-trl-config": ``APOTrainer`` + ``GRPOConfig``) for ``max_steps`` on a fresh tiny Llama (seed 0); returns the
    trainer and the reward function's record."""
    from trl import GRPOConfig, GRPOTrainer

    config_cls = apo.APOConfig if kind == "apo" else GRPOConfig
    trainer_cls = GRPOTrainer if kind == "trl" else apo.APOTrainer
    kwargs = {**COMMON, "output_dir": str(tmp_path / kind), **overrides}
    if kind == "apo":
        kwargs.setdefault("algorithm", "grpo")
    tokenizer = build_char_tokenizer()
    reward = RecordingReward()
    trainer = trainer_cls(
        model=build_tiny_llama(tokenizer),
        reward_funcs=[reward, *more_rewards] if more_rewards else reward,
        args=config_cls(**kwargs),
        train_dataset=dataset(),
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
    )
    if train:
        trainer.train()
    return trainer, reward


def step_logs(trainer) -> list[dict]:
    return [{k: v for k, v in h.items() if not any(t in k for t in TIMING)} for h in trainer.state.log_history]


def assert_same_run(trl, apo_):
    """Same loss and metrics at every logged step (1e-6 relative), same weights (1e-6 relative)."""
    trl_logs, apo_logs = step_logs(trl), step_logs(apo_)
    assert len(trl_logs) == len(apo_logs) >= trl.state.global_step + 1  # a row per step (and evaluation), a summary
    for step, (a, b) in enumerate(zip(trl_logs, apo_logs, strict=True), start=1):
        assert a.keys() <= b.keys(), f"step {step}: metrics missing from APOTrainer: {a.keys() - b.keys()}"
        extra = {k.removeprefix("eval_") for k in b.keys() - a.keys()}
        assert extra <= EXTRA_METRICS, f"step {step}: undocumented metrics {extra - EXTRA_METRICS}"
        for key in a:
            assert b[key] == pytest.approx(a[key], rel=1e-6, abs=1e-9, nan_ok=True), f"step {step}: {key}"
    trl_weights, apo_weights = trl.model.state_dict(), apo_.model.state_dict()
    assert trl_weights.keys() == apo_weights.keys()
    initial = build_tiny_llama(build_char_tokenizer()).state_dict()
    assert any(not torch.equal(trl_weights[k], initial[k]) for k in initial), "the runs must move the weights"
    for key, w in trl_weights.items():
        torch.testing.assert_close(apo_weights[key], w, rtol=1e-6, atol=1e-9, msg=lambda m, k=key: f"{k}: {m}")


# ----------------------------------------------------------------------------------------------------------------
# Defaults.


def test_apo_config_defaults_are_grpo_configs_but_for_the_documented_ones(tmp_path):
    from trl import GRPOConfig

    trl_cfg = GRPOConfig(str(tmp_path), use_cpu=True)  # bf16 (TRL's default) needs use_cpu on a CPU
    # apo under bf16 (TRL's default) also casts the LM head to fp32, for its anchor (docs/numerics.md)
    apo_differ = {"loss_type", "vllm_importance_sampling_correction", "cast_lm_head_to_fp32"}
    for algorithm, differ in (("grpo", {"loss_type"}), ("apo", apo_differ)):
        cfg = apo.APOConfig(str(tmp_path), algorithm=algorithm, use_cpu=True)
        different = {
            name
            for name in GRPOConfig.__dataclass_fields__
            if name in cfg.__dict__ and getattr(cfg, name) != getattr(trl_cfg, name)
        }
        assert different == differ, algorithm
    assert (trl_cfg.loss_type, cfg.loss_type) == ("dapo", "grpo")
    assert cfg.truncated_completions == "grade"  # TRL grades cut completions too


def test_args_none_builds_a_default_config_as_trl_does(tmp_path, monkeypatch):
    import trl.trainer.grpo_trainer as trl_trainer_module
    from trl import GRPOTrainer

    def on_cpu(cls):  # the default config's bf16 needs use_cpu on a machine without a GPU
        def post_init(self):
            self.use_cpu = True
            cls.__post_init__(self)

        return type(cls.__name__, (cls,), {"__post_init__": post_init})

    monkeypatch.setattr(trl_trainer_module, "GRPOConfig", on_cpu(trl_trainer_module.GRPOConfig))
    monkeypatch.setattr(apo_trainer_module, "APOConfig", on_cpu(apo.APOConfig))
    monkeypatch.chdir(tmp_path)
    tokenizer = build_char_tokenizer()
    model = build_tiny_llama(tokenizer)
    model.config._name_or_path = "org/tiny-llama"
    kwargs = dict(reward_funcs=hash_reward, train_dataset=prompt_dataset(), processing_class=tokenizer)
    trl = GRPOTrainer(model, **kwargs)
    ours = apo.APOTrainer(model, **kwargs)
    assert isinstance(ours.args, apo.APOConfig) and ours.args.algorithm == "apo"
    assert (os.path.basename(trl.args.output_dir), os.path.basename(ours.args.output_dir)) == (
        "tiny-llama-GRPO",
        "tiny-llama-APO",
    )


def test_a_grpo_config_runs_as_grpo_trainer_runs_it(tmp_path, caplog):
    trl, trl_reward = run("trl", tmp_path)
    with caplog.at_level(logging.WARNING, logger=apo_trainer_module.__name__):
        ours, our_reward = run("apo-trl-config", tmp_path)
    assert (ours.args.algorithm, ours.args.loss_type) == ("grpo", "dapo")  # TRL's loss_type, not APOConfig's
    assert "args is a GRPOConfig: running algorithm='grpo'" in caplog.text
    assert_same_run(trl, ours)
    assert trl_reward.calls == our_reward.calls
    with pytest.raises(TypeError, match="APOConfig"):
        apo.APOTrainer(ours.model, hash_reward, args={"algorithm": "grpo"})


# ----------------------------------------------------------------------------------------------------------------
# Same runs.


@pytest.mark.parametrize(
    "trl_overrides, apo_overrides",
    [
        ({}, {"loss_type": "dapo"}),  # TRL's default loss
        ({"loss_type": "grpo"}, {}),  # APOConfig(algorithm="grpo")'s default loss
    ],
    ids=["dapo", "grpo"],
)
def test_on_policy_run_is_grpo_trainers(tmp_path, trl_overrides, apo_overrides):
    save = {"save_strategy": "steps", "save_steps": 3}
    trl, trl_reward = run("trl", tmp_path, **save, **trl_overrides)
    ours, our_reward = run("apo", tmp_path, **save, **apo_overrides)
    assert_same_run(trl, ours)
    # The reward functions see the same columns, batches and values.
    assert len(trl_reward.calls) == len(our_reward.calls) == 3
    assert trl_reward.calls == our_reward.calls
    assert {"answer", "completion_ids", "trainer_state"} <= set(our_reward.calls[0]["keys"])
    # The checkpoint holds TRL's files, plus the integrity manifest.
    trl_files = set(os.listdir(tmp_path / "trl" / "checkpoint-3"))
    our_files = set(os.listdir(tmp_path / "apo" / "checkpoint-3"))
    assert our_files - trl_files == {"apo_manifest.json"} and trl_files <= our_files
    assert sorted(os.listdir(tmp_path / "apo")) == ["checkpoint-3"]  # no staging folder left behind


def test_weighted_abstaining_rewards_and_evaluation_are_grpo_trainers(tmp_path):
    overrides = dict(
        more_rewards=[length_reward],
        reward_weights=[1.0, 0.5],
        eval_dataset=dataset(4),
        eval_strategy="steps",
        eval_steps=2,
        num_generations_eval=2,  # TRL's minimum (APO's is 2)
        per_device_eval_batch_size=4,
        max_steps=2,
    )
    trl, trl_reward = run("trl", tmp_path, loss_type="grpo", **overrides)
    ours, our_reward = run("apo", tmp_path, **overrides)
    assert_same_run(trl, ours)
    assert trl_reward.calls == our_reward.calls and len(our_reward.calls) == 2 + 2  # 2 steps, 2 eval batches
    evaluated = [h for h in step_logs(ours) if "eval_loss" in h]
    assert len(evaluated) == 1 and "eval_rewards/length_reward/mean" in evaluated[0]


def test_epochs_over_a_rollout_are_grpo_trainers(tmp_path):
    # num_iterations = 2: the second pass trains on the same rollout off-policy (old log-probs, clipped ratios).
    overrides = {"num_iterations": 2, "max_steps": 4}
    trl, _ = run("trl", tmp_path, loss_type="grpo", **overrides)
    ours, _ = run("apo", tmp_path, **overrides)
    assert_same_run(trl, ours)
    assert step_logs(ours)[1]["offpolicy/staleness"] == 1.0  # the second step trains on the first step's rollout


def test_mini_batches_differ_only_by_the_whole_group_shuffle(tmp_path, monkeypatch):
    # steps_per_generation = 2, per_device_train_batch_size a multiple of G: APOTrainer shuffles whole groups.
    overrides = {"steps_per_generation": 2, "per_device_train_batch_size": 4, "max_steps": 4}
    trl, _ = run("trl", tmp_path, loss_type="grpo", **overrides)
    ours, _ = run("apo", tmp_path, **overrides)
    trl_logs, our_logs = step_logs(trl), step_logs(ours)
    assert trl_logs[0]["reward"] == our_logs[0]["reward"]  # the same rollout...
    assert [h["loss"] for h in trl_logs[:-1]] != [h["loss"] for h in our_logs[:-1]]  # ...cut differently
    # With TRL's row-wise shuffle in place of the whole-group one, the runs are the same.
    from trl.trainer.utils import shuffle_sequence_dict

    def row_wise(batch, group_size, hint=""):
        return shuffle_sequence_dict(batch)

    monkeypatch.setattr(apo_trainer_module, "shuffle_whole_groups", row_wise)
    ours, _ = run("apo", tmp_path / "row", **overrides)
    assert_same_run(trl, ours)


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo"])
def test_every_trl_loss_at_sequence_level(tmp_path, loss_type):
    # Two epochs over one rollout, so that the second step's sequence-level ratios differ from 1.
    overrides = {"loss_type": loss_type, "importance_sampling_level": "sequence", "num_iterations": 2}
    overrides.update(max_steps=2, per_device_train_batch_size=4)
    trl, _ = run("trl", tmp_path, **overrides)
    ours, _ = run("apo", tmp_path, **overrides)
    assert (ours.args.algorithm, ours.importance_sampling_level, ours.loss_type) == ("grpo", "sequence", loss_type)
    assert_same_run(trl, ours)
    assert step_logs(ours)[1]["offpolicy/seq_log_ratio_abs_max"] > 0  # the ratios of step 2 are not 1


# ----------------------------------------------------------------------------------------------------------------
# Truncated completions and refusals.


def test_a_run_whose_every_completion_is_cut_says_so_once(tmp_path, caplog):
    ours, _ = run("apo", tmp_path, train=False, truncated_completions="zero", max_steps=2)
    bias_V = torch.zeros(ours.model.config.vocab_size)
    bias_V[ours.processing_class.eos_token_id] = -1e4  # no completion ends
    ours.model.lm_head.register_forward_hook(lambda module, inputs, out: out + bias_V.to(out.dtype))
    with caplog.at_level(logging.WARNING, logger=apo_trainer_module.__name__):
        ours.train()
    lines = [r.getMessage() for r in caplog.records if r.name == apo_trainer_module.__name__]
    assert len(lines) == 1 and "\n" not in lines[0]
    assert "all 8 train completions were cut" in lines[0] and "truncated_completions='grade'" in lines[0]
    first = step_logs(ours)[0]
    assert first["completions/clipped_ratio"] == 1.0 and first["reward_zeroed"] == 0.0
    assert first["reward"] == pytest.approx(first["completions/truncated_graded_reward"]) and first["reward"] > 0


@pytest.mark.parametrize(
    "overrides, fix",
    [
        ({"num_generations_eval": 1}, "num_generations_eval"),
        ({"per_device_eval_batch_size": 6, "eval_strategy": "steps"}, "per_device_eval_batch_size=8"),
        ({"num_generations_eval": 3, "eval_strategy": "steps"}, "per_device_eval_batch_size=9"),
        ({"per_device_train_batch_size": 6}, "per_device_train_batch_size=8"),
        ({"beta": 0.04}, "beta=0"),
        ({"entropy_coef": 0.01}, "entropy_coef=0"),
        ({"top_entropy_quantile": 0.2}, "top_entropy_quantile=1.0"),
        ({"off_policy_mask_threshold": 0.5}, "unset it"),
        ({"scale_rewards": "batch"}, "scale_rewards='group'"),
        ({"mask_truncated_completions": True}, "mask_truncated_completions=False"),
        ({"load_best_model_at_end": True, "eval_strategy": "steps"}, "set it False"),
    ],
)
@pytest.mark.parametrize("algorithm", ["apo", "adpo"])
def test_group_objective_refusals_are_one_line_at_config_time(tmp_path, algorithm, overrides, fix):
    with pytest.raises(ValueError) as err:
        apo.APOConfig(
            **{**COMMON, "output_dir": str(tmp_path), "num_generations": 4, **overrides}, algorithm=algorithm
        )
    message = str(err.value)
    assert "\n" not in message and fix in message and next(iter(overrides)) in message


def test_a_grpo_config_turned_into_apo_casts_the_lm_head_to_fp32(tmp_path):
    """TRL's cast_lm_head_to_fp32=False is its default, not a choice: as apo under bf16 the anchor's fp32 head applies;
    as grpo, TRL's default stays."""
    from trl import GRPOConfig

    trl_cfg = GRPOConfig(str(tmp_path), use_cpu=True, bf16=True)
    assert apo.APOConfig.from_grpo_config(trl_cfg, algorithm="apo").cast_lm_head_to_fp32 is True
    assert apo.APOConfig.from_grpo_config(trl_cfg).cast_lm_head_to_fp32 is False
