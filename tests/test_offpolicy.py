"""Off-policy training: several optimizer steps per rollout (``updates_per_rollout``, ``num_iterations``), the
TRL-run baselines by name (dapo, dr_grpo, cispo, sapo), the off-policy metrics every algorithm logs, the stability
numbers of a run, and ``apo compare --sweep``. CPU, offline, tiny random model."""

from __future__ import annotations

import json
import math

import pytest
from conftest import FAST_DEFAULTS

import apo
from apo.cli import config as cfglib
from apo.cli.plots import swept_keys, variant_pairs, write_comparison
from apo.cli.presets import PRESETS, check_keys_read, expand_sweep, preset
from apo.stats import slope_interval, stability_stats, welch_interval


def config(**overrides):
    return apo.APOConfig(**{**FAST_DEFAULTS, "output_dir": "/tmp/apo-test-offpolicy", **overrides})


# ----------------------------------------------------------------------------------------------------------------
# updates_per_rollout -> TRL's steps_per_generation, groups whole.


@pytest.mark.parametrize("k, accumulation, expected", [(1, 1, 1), (4, 1, 4), (16, 1, 16), (4, 2, 8)])
def test_updates_per_rollout_sets_steps_per_generation(k, accumulation, expected):
    c = config(updates_per_rollout=k, gradient_accumulation_steps=accumulation)
    assert c.steps_per_generation == expected
    assert c.optimizer_steps_per_rollout == k
    # TRL's rollout: k optimizer steps' worth of completions at once.
    assert c.generation_batch_size == c.per_device_train_batch_size * expected


def test_epochs_multiply_the_updates_of_a_rollout():
    assert config(updates_per_rollout=4, num_iterations=2).optimizer_steps_per_rollout == 8
    assert config().optimizer_steps_per_rollout == 1


@pytest.mark.parametrize(
    "overrides, names",
    [
        ({"updates_per_rollout": 0}, ["updates_per_rollout"]),
        ({"updates_per_rollout": 2.5}, ["updates_per_rollout"]),
        ({"num_iterations": 0}, ["num_iterations"]),
        ({"updates_per_rollout": 4, "steps_per_generation": 2}, ["updates_per_rollout", "steps_per_generation"]),
        ({"updates_per_rollout": 4, "generation_batch_size": 16}, ["updates_per_rollout", "generation_batch_size"]),
        # a mini-batch of 6 rows with groups of 4 would split a group across optimizer steps, whatever the loss
        (
            {"algorithm": "grpo", "per_device_train_batch_size": 6, "num_generations": 3, "updates_per_rollout": 2},
            None,
        ),
        (
            {"algorithm": "cispo", "per_device_train_batch_size": 2, "updates_per_rollout": 4},
            ["per_device_train_batch_size", "num_generations"],
        ),
        (
            {"algorithm": "sapo", "per_device_train_batch_size": 2, "num_iterations": 2, "updates_per_rollout": 1},
            ["per_device_train_batch_size"],
        ),
        # TRL's own knobs keep TRL's behaviour for its losses (row-wise mini-batches); apo/adpo never split a group
        ({"algorithm": "sapo", "per_device_train_batch_size": 6, "steps_per_generation": 2}, None),
        ({"algorithm": "apo", "per_device_train_batch_size": 2, "num_iterations": 2}, ["num_generations"]),
    ],
)
def test_bad_off_policy_settings_are_one_line_errors(overrides, names):
    if names is None:  # a valid setting among the bad ones
        config(**overrides)
        return
    with pytest.raises(ValueError) as err:
        config(**overrides)
    message = str(err.value)
    assert "\n" not in message
    for name in names:
        assert name in message


# ----------------------------------------------------------------------------------------------------------------
# TRL-run baselines by name.


@pytest.mark.parametrize(
    "algorithm, loss_type, level, eps, eps_high",
    [
        ("grpo", "grpo", "token", 0.2, None),
        ("gspo", "grpo", "sequence", 3e-4, 4e-4),
        ("dapo", "dapo", "token", 0.2, 0.28),
        ("dr_grpo", "dr_grpo", "token", 0.2, None),
        ("cispo", "cispo", "token", 0.2, 5.0),
        ("sapo", "sapo", "token", 0.2, None),
    ],
)
def test_each_trl_algorithm_implies_its_loss(algorithm, loss_type, level, eps, eps_high):
    c = config(algorithm=algorithm)
    assert (c.loss_type, c.importance_sampling_level, c.epsilon, c.epsilon_high) == (loss_type, level, eps, eps_high)


def test_a_named_algorithm_rejects_another_loss_but_grpo_takes_any():
    with pytest.raises(ValueError, match="loss_type"):
        config(algorithm="cispo", loss_type="dapo")
    assert config(algorithm="grpo", loss_type="bnpo").loss_type == "bnpo"
    assert config(algorithm="dapo", epsilon_high=0.3).epsilon_high == 0.3  # explicit values win


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds(name):
    values = cfglib.resolve_values(None, {**preset(name), "output_dir": "/tmp/apo-test-offpolicy"})
    cfg = cfglib.build(values)
    assert cfg.algorithm == PRESETS[name]["algorithm"]


def test_preset_values_are_their_papers():
    assert PRESETS["dapo"]["epsilon_high"] == 0.28 and PRESETS["dapo"]["mask_truncated_completions"] is True
    assert PRESETS["dr_grpo"]["scale_rewards"] == "none"
    assert PRESETS["cispo"]["epsilon_high"] == 5.0
    assert (PRESETS["sapo"]["sapo_temperature_pos"], PRESETS["sapo"]["sapo_temperature_neg"]) == (1.0, 1.05)


@pytest.mark.parametrize(
    "name, key",
    [
        ("cispo@alpha=0.3", "alpha"),
        ("gspo@alpha_schedule=guarded", "alpha_schedule"),
        ("grpo@tau_anchor=1.0", "tau_anchor"),
        ("apo-ess@epsilon=0.1", "epsilon"),
        ("adpo@alpha=0.5", "alpha"),
        ("dapo@sapo_temperature_neg=2.0", "sapo_temperature_neg"),
        ("cispo@delta=2.0", "delta"),
        ("cispo@epsilon=0.1", "epsilon"),  # CISPO truncates at epsilon_high only
        ("sapo@epsilon_high=0.3", "epsilon_high"),  # SAPO's soft gate has no clip
    ],
)
def test_a_variant_key_the_algorithm_ignores_is_an_error(name, key):
    with pytest.raises(cfglib.ConfigError) as err:
        preset(name)
    message = str(err.value)
    assert key in message and name in message and "\n" not in message


def test_keys_read_by_all_pass():
    check_keys_read("cispo", ["learning_rate", "updates_per_rollout", "epsilon_high"], "x")
    check_keys_read("apo", ["alpha", "tau_anchor", "num_iterations"], "x")
    assert preset("apo-fixed@alpha=0.35@updates_per_rollout=4")["alpha"] == 0.35


# ----------------------------------------------------------------------------------------------------------------
# --sweep.


def test_sweep_expands_every_algorithm_in_order():
    assert expand_sweep(["apo-ess", "grpo"], ["updates_per_rollout=1,4"]) == [
        "apo-ess@updates_per_rollout=1",
        "apo-ess@updates_per_rollout=4",
        "grpo@updates_per_rollout=1",
        "grpo@updates_per_rollout=4",
    ]
    two = expand_sweep(["adpo"], ["updates_per_rollout=1,16", "learning_rate=1e-4,3e-4"])
    assert two == [
        "adpo@updates_per_rollout=1@learning_rate=1e-4",
        "adpo@updates_per_rollout=1@learning_rate=3e-4",
        "adpo@updates_per_rollout=16@learning_rate=1e-4",
        "adpo@updates_per_rollout=16@learning_rate=3e-4",
    ]
    assert preset(two[-1])["updates_per_rollout"] == 16
    assert expand_sweep(["grpo"], []) == ["grpo"]


@pytest.mark.parametrize(
    "algorithms, sweep, words",
    [
        (["grpo"], ["updates_per_rollout"], ["KEY=V1,V2"]),
        (["grpo"], ["updates_per_rollout=1,,4"], ["KEY=V1,V2"]),
        (["grpo"], ["updates_per_rollout=1", "updates_per_rollout=4"], ["twice"]),
        (["apo-fixed@alpha=0.3"], ["alpha=0.1,0.2"], ["alpha", "apo-fixed@alpha=0.3"]),
    ],
)
def test_bad_sweeps_are_errors(algorithms, sweep, words):
    with pytest.raises(cfglib.ConfigError) as err:
        expand_sweep(algorithms, sweep)
    for word in words:
        assert word in str(err.value)


def test_compare_command_passes_the_swept_variants(monkeypatch):
    import apo.cli.compare as compare_mod
    from apo.cli.main import main

    seen = {}

    def fake_compare(path, algorithms, seeds, pairs, **kw):
        seen.update(algorithms=algorithms, seeds=seeds, pairs=pairs)
        return "out"

    monkeypatch.setattr(compare_mod, "compare", fake_compare)
    argv = ["compare", "--algorithms", "cispo,apo-ess", "--seeds", "0,1", "--sweep", "updates_per_rollout=1,16"]
    assert main(argv + ["max_steps=5"]) == 0
    assert seen["algorithms"] == [
        "cispo@updates_per_rollout=1",
        "cispo@updates_per_rollout=16",
        "apo-ess@updates_per_rollout=1",
        "apo-ess@updates_per_rollout=16",
    ]
    assert seen["pairs"] == ["max_steps=5"]


# ----------------------------------------------------------------------------------------------------------------
# Stability numbers and the sweep figure, from saved files.


def test_stability_stats_by_hand():
    rewards = [0.2, 0.4, 0.6, 0.8, 0.6, 0.4, 0.1, 0.1]
    s = stability_stats([{"step": i + 1, "reward": r} for i, r in enumerate(rewards)], window=2)
    # n = 8 logged rewards -> w = min(2, 8 // 4) = 2; 2-point means: 0.3, 0.5, 0.7, 0.7, 0.5, 0.25, 0.1
    assert s["peak_train_reward"] == pytest.approx(0.7)
    assert s["final_train_reward"] == pytest.approx(0.1)
    assert s["drop_from_peak"] == pytest.approx(0.6)
    assert s["collapsed"] is True  # 0.1 < 0.3
    # under truncated_completions=zero the numbers are of the reward trained on (reward_zeroed), not TRL's graded one
    zeroed = stability_stats([{"reward": 1.0, "reward_zeroed": r} for r in rewards], window=2)
    assert zeroed["peak_train_reward"] == pytest.approx(0.7) and zeroed["final_train_reward"] == pytest.approx(0.1)
    # few rollouts (n = 3 -> w = 1): the first and the last reward, never the same window
    rising = stability_stats([{"reward": r} for r in (0.1, 0.3, 0.2)], window=10)
    assert (rising["peak_train_reward"], rising["final_train_reward"]) == pytest.approx((0.3, 0.2))
    assert rising["drop_from_peak"] == pytest.approx(0.1) and rising["collapsed"] is False  # 0.2 > 0.1
    fell = stability_stats([{"reward": r} for r in (0.3, 0.4, 0.05)], window=10)
    assert fell["collapsed"] is True
    assert stability_stats([{"loss": 1.0}])["collapsed"] is None


def test_welch_interval_by_hand():
    # xs = 1, 2, 3: mean 2, s^2 = 1, s^2/n = 1/3; ys = 0, 0, 3: mean 1, s^2 = 3, s^2/n = 1.
    # se^2 = 4/3; df = (16/9) / ((1/9)/2 + 1/2) = (16/9) / (10/18) = 3.2 -> 3; t_{0.975,3} = 3.1824
    diff, half = welch_interval([1.0, 2.0, 3.0], [0.0, 0.0, 3.0])
    assert diff == pytest.approx(1.0)
    assert half == pytest.approx(3.1824 * math.sqrt(4 / 3), rel=1e-6)
    assert welch_interval([1.0, 1.0], [0.5, 0.5]) == (0.5, 0.0)
    assert math.isnan(welch_interval([1.0], [0.0, 1.0])[1])


def test_slope_interval_by_hand():
    # x = 0, 1, 2, 3; y = 1, 3, 2, 6: mean x 1.5, mean y 3, S_xx = 5,
    # S_xy = (-1.5)(-2) + (-0.5)(0) + (0.5)(-1) + (1.5)(3) = 7 -> b = 1.4, a = 3 - 2.1 = 0.9;
    # residuals 0.1, 0.7, -1.7, 0.9: rss = 0.01 + 0.49 + 2.89 + 0.81 = 4.2;
    # se^2 = 4.2 / 2 / 5 = 0.42; t_{0.975, 2} = 4.3027
    b, half = slope_interval([0.0, 1.0, 2.0, 3.0], [1.0, 3.0, 2.0, 6.0])
    assert b == pytest.approx(1.4)
    assert half == pytest.approx(4.3027 * math.sqrt(0.42), rel=1e-5)
    assert slope_interval([0.0, 1.0, 2.0], [1.0, 3.0, 5.0]) == (pytest.approx(2.0), pytest.approx(0.0, abs=1e-12))
    assert math.isnan(slope_interval([1.0, 1.0, 1.0], [0.0, 1.0, 2.0])[0])
    assert math.isnan(slope_interval([0.0, 1.0], [0.0, 1.0])[1])
    with pytest.raises(ValueError, match="2 y values"):
        slope_interval([0.0, 1.0, 2.0], [0.0, 1.0])


def _fake_run(folder, rewards, after):
    folder.mkdir(parents=True)
    with open(folder / "metrics.jsonl", "w") as f:
        for step, r in enumerate(rewards, 1):
            f.write(json.dumps({"step": step, "reward": r, "entropy": 0.5}) + "\n")
    (folder / "eval_before.json").write_text(json.dumps({"reward": 0.3}))
    (folder / "eval_after.json").write_text(json.dumps({"reward": after}))


def test_sweep_figure_and_stability_columns(tmp_path):
    afters = {
        ("apo-ess", 4): (0.6, 0.62),
        ("apo-ess", 16): (0.5, 0.54),
        ("grpo", 4): (0.61, 0.6),
        ("grpo", 16): (0.2, 0.3),
    }
    for (alg, k), values in afters.items():
        for seed, after in enumerate(values):
            # 10-point smoothing: the collapsed runs end at 0.1, below their start 0.3
            rewards = [0.3] * 10 + [0.6] * 20 if after > 0.4 else [0.3] * 10 + [0.6] * 10 + [0.1] * 10
            _fake_run(tmp_path / f"{alg}@updates_per_rollout={k}-seed{seed}", rewards, after)
    out = write_comparison([tmp_path])
    assert (out / "sweep-updates_per_rollout.png").stat().st_size > 0
    table = json.loads((out / "table.json").read_text())
    rows = {row["algorithm"]: row for row in table["algorithms"]}
    assert list(rows) == [  # presets in their order, variants with numbers compared as numbers (4 before 16)
        "apo-ess@updates_per_rollout=4",
        "apo-ess@updates_per_rollout=16",
        "grpo@updates_per_rollout=4",
        "grpo@updates_per_rollout=16",
    ]
    collapsed = rows["grpo@updates_per_rollout=16"]["collapsed"]
    assert (collapsed["count"], collapsed["n"]) == (2, 2)
    assert rows["apo-ess@updates_per_rollout=16"]["collapsed"]["count"] == 0
    assert rows["grpo@updates_per_rollout=16"]["reward_after"]["mean"] == pytest.approx(0.25)
    assert "| 2 of 2 |" in (out / "table.md").read_text()
    assert swept_keys(list(rows)) == ["updates_per_rollout"]
    assert variant_pairs("a@x=1@y=2e-4") == ("a", {"x": "1", "y": "2e-4"})


# ----------------------------------------------------------------------------------------------------------------
# The trainer: off-policy metrics for every algorithm.


@pytest.mark.parametrize("algorithm", ["apo", "adpo", "grpo", "gspo", "dapo", "dr_grpo", "cispo", "sapo"])
def test_every_algorithm_trains_off_policy_and_logs_how_far_it_moved(make_trainer, algorithm):
    trainer = make_trainer(algorithm=algorithm, updates_per_rollout=2, max_steps=4, learning_rate=5e-2)
    trainer.train()
    rows = [row for row in trainer.state.log_history if "offpolicy/staleness" in row]
    assert [row["offpolicy/staleness"] for row in rows] == [0.0, 1.0, 0.0, 1.0]
    for row in rows:
        if row["offpolicy/staleness"] == 0.0:  # the rollout's own parameters: no movement (up to rounding)
            assert row["offpolicy/kl_old"] < 1e-9 and row["offpolicy/seq_log_ratio_abs_max"] < 1e-4
        else:  # one optimizer step at a large learning rate later
            assert row["offpolicy/kl_old"] > 1e-6 and row["offpolicy/seq_log_ratio_abs_max"] > 1e-3
    if algorithm in ("apo", "adpo"):  # the anchored coordinates see the same movement: u = d / tau_anc
        moved = [row for row in rows if row["offpolicy/staleness"] == 1.0]
        for row in moved:
            assert row["apo/u_abs_max"] == pytest.approx(row["offpolicy/seq_log_ratio_abs_max"] / 0.8, rel=1e-4)


def test_kl_estimate_by_hand(make_trainer):
    import torch

    trainer = make_trainer(algorithm="grpo")
    trainer._generated_at_step = 0
    log2 = math.log(2.0)
    logp = torch.tensor([[log2, 0.0, 5.0]])
    old = torch.tensor([[0.0, 0.0, -3.0]])
    mask = torch.tensor([[1, 1, 0]])  # the third token is padding: ignored
    trainer._log_offpolicy_metrics(logp, old, mask)
    m = trainer._metrics["train"]
    # tokens: r = 2 -> 2 ln 2 - 2 + 1 = 0.386294; r = 1 -> 0. Mean over 2 tokens: 0.193147.
    assert m["offpolicy/kl_old"][-1] == pytest.approx(0.193147, abs=1e-6)
    # sequence log-ratio: ln 2 + 0 = 0.693147 (the masked token does not count)
    assert m["offpolicy/seq_log_ratio_abs_max"][-1] == pytest.approx(0.693147, abs=1e-6)
    assert m["offpolicy/staleness"][-1] == 0.0


def test_kl_estimator_is_unbiased_for_kl_theta_old():
    # E_{y ~ old}[r log r - r + 1] = sum_y theta(y) log(theta(y)/old(y)) = KL(theta || old), exactly.
    import torch

    old = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    theta = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    r = theta / old
    estimate = (old * (r * r.log() - r + 1)).sum()
    assert float(estimate) == pytest.approx(float((theta * (theta / old).log()).sum()), rel=1e-12)
