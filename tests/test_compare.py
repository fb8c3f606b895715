"""`apo compare` / `apo plot`: presets, the comparison table's statistics (hand-computed), and an end-to-end run of the
real CLI on the shipped tiny model (2 presets x 1 seed x 2 steps, CPU, offline)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from apo.cli import plots
from apo.cli.compare import plan_workers, run_name, visible_gpus
from apo.cli.config import build, resolve_values
from apo.cli.main import main
from apo.cli.plots import run_label
from apo.cli.presets import PRESETS, preset
from apo.stats import mean_ci, moving_average, t_quantile_975


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_builds_on_the_default(name):
    from apo.algorithms import get_algorithm

    cfg = build(resolve_values(None, preset(name)))
    assert name in get_algorithm(cfg.algorithm).presets  # the preset builds the algorithm that defines it


def test_presets_carry_the_papers_settings():
    ess = build(resolve_values(None, preset("apo-ess")))
    assert (ess.alpha_schedule, ess.alpha_min, ess.alpha_max, ess.ess_target) == ("ess", 0.35, 0.9, 0.5)
    assert build(resolve_values(None, preset("apo-fixed"))).alpha == 0.6
    g = build(resolve_values(None, preset("apo-guarded")))
    assert (g.alpha_schedule, g.alpha_ema, g.baseline_ema, g.reward_scale) == ("guarded", 0.1, 0.1, 0.5)
    assert g.confidence_source == "anchored"
    gspo = build(resolve_values(None, preset("gspo")))
    assert (gspo.importance_sampling_level, gspo.loss_type, gspo.epsilon, gspo.epsilon_high) == (
        "sequence",
        "grpo",
        3e-4,
        4e-4,
    )
    for name in ("apo-ess", "apo-fixed", "apo-guarded", "adpo"):
        cfg = build(resolve_values(None, preset(name)))
        assert (cfg.tau_anchor, cfg.beta_reward) == (0.8, 1.0)


def test_unknown_preset_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown algorithm preset 'apo-foo'; valid: apo-ess, apo-fixed"):
        preset("apo-foo")
    rc = main(["compare", "--algorithms", "apo-ess,apo-foo", "--seeds", "0", "--out", str(tmp_path / "c")])
    assert rc == 2
    assert "unknown algorithm preset 'apo-foo'" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()  # validated before anything is trained


def test_statistics_by_hand():
    # t_{0.975} with 2 and 40 degrees of freedom (tables: 4.3027, 2.0211).
    assert t_quantile_975(2) == 4.3027
    assert abs(t_quantile_975(40) - 2.0211) < 1e-4
    # [1, 2, 3]: mean 2, s = 1, half-width 4.3027 * 1 / sqrt(3) = 2.48417
    m, hw, n = mean_ci([1.0, 2.0, 3.0])
    assert (m, n) == (2.0, 3) and abs(hw - 2.48417) < 1e-5
    assert math.isnan(mean_ci([5.0])[1])
    # window 3: 1, (1+2)/2, (1+2+3)/3, (2+3+4)/3
    assert moving_average([1.0, 2.0, 3.0, 4.0], 3) == [1.0, 1.5, 2.0, 3.0]


def _fake_run(root, name, rewards, entropies, before, after, wall):
    d = root / name
    d.mkdir(parents=True)
    (d / "metrics.jsonl").write_text(
        "".join(
            json.dumps({"step": i + 1, "reward": r, "entropy": e}) + "\n"
            for i, (r, e) in enumerate(zip(rewards, entropies, strict=True))
        )
    )
    (d / "eval_before.json").write_text(json.dumps({"reward": before}))
    (d / "eval_after.json").write_text(json.dumps({"reward": after}))
    (d / "summary.json").write_text(json.dumps({"wall_time_s": wall}))
    return d


def test_table_of_synthetic_runs(tmp_path):
    ent = [1.0] * 9 + [0.5]  # 10 steps: the last 10% is the last step
    _fake_run(tmp_path, "gspo-seed0", [0.1] * 10, ent, 0.3, 0.4, 10.0)
    _fake_run(tmp_path, "gspo-seed1", [0.2] * 10, ent, 0.3, 0.6, 20.0)
    # seed 2 reaches 0.5 at step 3 with window 2: smoothed = 0.2, 0.45, 0.7, ...
    _fake_run(tmp_path, "gspo-seed2", [0.2, 0.7] + [0.7] * 8, ent, 0.3, 0.8, 30.0)
    _fake_run(tmp_path, "apo-ess-seed0", [0.6] * 10, ent, 0.3, 0.5, 5.0)
    plots.write_comparison([tmp_path], tmp_path / "out", window=2, threshold=0.5)
    table = json.loads((tmp_path / "out" / "table.json").read_text())
    rows = {r["algorithm"]: r for r in table["algorithms"]}
    assert [r["algorithm"] for r in table["algorithms"]] == ["apo-ess", "gspo"]  # preset order
    g = rows["gspo"]
    # held-out after: 0.4, 0.6, 0.8 -> mean 0.6, s = 0.2, half-width 4.3027 * 0.2 / sqrt(3) = 0.49683
    assert abs(g["reward_after"]["mean"] - 0.6) < 1e-12 and abs(g["reward_after"]["half_width"] - 0.49683) < 1e-5
    assert g["best_train_reward"]["values"] == pytest.approx([0.1, 0.2, 0.7])
    assert g["steps_to_threshold"]["values"] == [None, None, 3]
    assert g["steps_to_threshold"]["n"] == 1
    assert g["final_entropy"]["values"] == [0.5, 0.5, 0.5]
    assert g["wall_time_s"]["mean"] == 20.0
    assert rows["apo-ess"]["steps_to_threshold"]["values"] == [1]
    md = (tmp_path / "out" / "table.md").read_text()
    assert "| gspo | 3 | 0.300 ± 0.000 | 0.600 ± 0.497 |" in md
    assert "| 3 (1 of 3) |" in md


def test_plot_counts_each_run_once_and_reads_a_torn_last_line(tmp_path, monkeypatch, capsys):
    for cmp in ("cmp1", "cmp2"):
        for seed in (0, 1):
            _fake_run(tmp_path / cmp, f"grpo-seed{seed}", [0.1, 0.2], [1.0, 1.0], 0.3, 0.4, 1.0)
    monkeypatch.chdir(tmp_path)
    # one run named twice, with a trailing slash and ./: still two seeds
    runs = plots.find_runs(["cmp1", "cmp1/grpo-seed0", "./cmp1/", "cmp1/grpo-seed1/"])
    assert [r.name for r in runs] == ["grpo-seed0", "grpo-seed1"]
    assert list(plots.group_runs(runs)) == ["grpo"]
    # same-named runs of two comparisons: two groups of two seeds, not one group of four
    groups = plots.group_runs(plots.find_runs(["cmp1", "cmp2"]))
    assert {k: [r.parent.name for r in v] for k, v in groups.items()} == {
        "cmp1/grpo": ["cmp1", "cmp1"],
        "cmp2/grpo": ["cmp2", "cmp2"],
    }
    # a kill while a line was written: the torn last line is left out, as --resume does
    with open(tmp_path / "cmp1" / "grpo-seed0" / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "rew')
    assert [r["step"] for r in plots.read_metrics(tmp_path / "cmp1" / "grpo-seed0")] == [1, 2]
    assert main(["plot", "cmp1", "--out", "fig"]) == 0
    assert "| grpo | 2 |" in (tmp_path / "fig" / "table.md").read_text()
    # a damaged line before the last is one line naming the file and line
    (tmp_path / "cmp1" / "grpo-seed1" / "metrics.jsonl").write_text('{"step": 1}\nxx\n{"step": 2}\n')
    assert main(["plot", "cmp1", "--out", "fig"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "grpo-seed1/metrics.jsonl, line 2: not a metrics row" in err


def _recomputed(run_dir, window, threshold):
    """The table's per-run numbers recomputed from the run's files, independently of apo.cli.plots."""
    rows = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        rows[row["step"]] = row
    steps = sorted(rows)
    rewards = [rows[s].get("reward_zeroed", rows[s]["reward"]) for s in steps]  # the mean trained on
    windows = [rewards[max(0, i - window + 1) : i + 1] for i in range(len(rewards))]
    smooth = [sum(w) / len(w) for w in windows]
    ent = [rows[s]["entropy"] for s in steps]
    k = max(1, math.ceil(0.1 * len(ent)))
    return {
        "reward_before": json.loads((run_dir / "eval_before.json").read_text())["reward"],
        "reward_after": json.loads((run_dir / "eval_after.json").read_text())["reward"],
        "best_train_reward": max(smooth),
        "steps_to_threshold": next((s for s, y in zip(steps, smooth, strict=True) if y >= threshold), None),
        "final_entropy": sum(ent[-k:]) / k,
        "wall_time_s": json.loads((run_dir / "summary.json").read_text())["wall_time_s"],
    }


def test_compare_then_plot_through_the_cli(tmp_path):
    out = tmp_path / "cmp"
    overrides = ["max_steps=2", "eval_size=16", "eval_samples=2", "save_strategy=no", "train_size=64"]
    argv = ["compare", *overrides, "--algorithms", "apo-guarded,gspo", "--seeds", "0", "--out", str(out)]
    assert main(argv) == 0
    for name in ("curves.png", "alpha.png", "table.md", "table.json", "compare.json"):
        assert (out / name).is_file(), name
    table = json.loads((out / "table.json").read_text())
    assert [r["algorithm"] for r in table["algorithms"]] == ["apo-guarded", "gspo"]
    for row in table["algorithms"]:
        (run,) = row["runs"]
        assert run == f"{row['algorithm']}-seed0"
        assert (out / run / "config.yaml").is_file()
        expected = _recomputed(out / run, table["window"], table["threshold"])
        for key, value in expected.items():
            assert row[key]["values"] == [value], key
            assert row[key]["mean"] == value and row[key]["half_width"] is None
    # both runs start from the same policy and held-out draw
    assert len({r["reward_before"]["values"][0] for r in table["algorithms"]}) == 1

    # `apo plot` redraws the same table from the saved runs
    assert main(["plot", str(out), "--out", str(tmp_path / "replot")]) == 0
    assert (tmp_path / "replot" / "table.md").read_bytes() == (out / "table.md").read_bytes()
    assert json.loads((tmp_path / "replot" / "table.json").read_text()) == table

    # rerunning skips finished runs and resumes an unfinished one
    (out / "gspo-seed0" / "summary.json").unlink()
    assert main(argv) == 0
    status = {r["run"]: r["status"] for r in json.loads((out / "compare.json").read_text())["runs"]}
    assert status == {"apo-guarded-seed0": "skipped", "gspo-seed0": "resumed"}
    assert (out / "gspo-seed0" / "summary.json").is_file()
    # a finished run is not passed off as a run of other settings
    assert main([a.replace("max_steps=2", "max_steps=3") for a in argv]) == 2


def test_a_changed_setting_does_not_resume_silently(tmp_path):
    run = tmp_path / "cmp" / "adpo-seed0"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("max_steps: 999\n")
    argv = ["compare", "max_steps=2", "--algorithms", "adpo", "--seeds", "0", "--out", str(tmp_path / "cmp")]
    assert main(argv) == 2
    # checked before any run starts, in its own process or not
    assert main([*argv, "--jobs", "2"]) == 2
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml"]


def test_repeated_algorithms_or_seeds_are_rejected(tmp_path, capsys):
    out = str(tmp_path / "c")
    assert main(["compare", "--algorithms", "gspo,adpo,gspo", "--seeds", "0", "--out", out]) == 2
    assert "--algorithms lists gspo more than once" in capsys.readouterr().err
    assert main(["compare", "--algorithms", "gspo", "--seeds", "1,1", "--out", out]) == 2
    assert "--seeds lists 1 more than once" in capsys.readouterr().err


def test_preset_variants():
    assert preset("apo-fixed@alpha=0.35") == {**PRESETS["apo-fixed"], "alpha": 0.35}
    v = preset("apo-guarded@steps_per_generation=4@per_device_train_batch_size=32")
    assert (v["alpha_schedule"], v["steps_per_generation"], v["per_device_train_batch_size"]) == ("guarded", 4, 32)
    with pytest.raises(ValueError, match="write a preset variant as PRESET@key=value"):
        preset("apo-fixed@alpha")
    with pytest.raises(ValueError, match="unknown algorithm preset 'apo-fxed'"):
        preset("apo-fxed@alpha=0.3")
    # one setting of a mapping: merged into the preset's objective_kwargs, the others kept
    values = resolve_values(None, preset("apo-author-paper@objective_kwargs.tau=0.5"))
    assert values["objective_kwargs"] == {**PRESETS["apo-author-paper"]["objective_kwargs"], "tau": 0.5}
    with pytest.raises(ValueError, match="algorithm 'grpo' ignores objective_kwargs"):
        preset("grpo@objective_kwargs.tau=0.5")


def test_variants_follow_their_preset_in_tables(tmp_path):
    names = ["grpo", "apo-fixed@alpha=0.9", "zzz", "apo-fixed", "apo-fixed@alpha=0.35", "apo-ess"]
    runs = [_fake_run(tmp_path, f"{n}-seed0", [0.1], [1.0], 0.3, 0.4, 1.0) for n in names]
    assert list(plots.group_runs(runs)) == [
        "apo-ess",
        "apo-fixed",
        "apo-fixed@alpha=0.35",
        "apo-fixed@alpha=0.9",
        "grpo",
        "zzz",
    ]


def test_a_variant_and_the_command_line_may_not_set_the_same_key(tmp_path, capsys):
    argv = ["compare", "alpha=0.5", "--algorithms", "apo-fixed@alpha=0.35", "--seeds", "0", "--out", str(tmp_path)]
    assert main(argv) == 2
    assert "alpha set both by the variant 'apo-fixed@alpha=0.35' and on the command line" in capsys.readouterr().err


def test_overrides_may_follow_options_but_the_config_comes_first(capsys):
    with pytest.raises(SystemExit):
        main(["compare", "max_steps=2", "--seeds", "0", "smollm2-arith"])
    assert "smollm2-arith: CONFIG (a file or a bundled config name) comes first" in capsys.readouterr().err


def test_run_names_are_distinct_single_folders_for_any_value():
    values = ["data/a/train.jsonl", "data/b/train.jsonl", "data_a_train.jsonl", "a b", "x%2Fy", "..", "v" * 400]
    names = [run_name(f"grpo@task={v}", 0) for v in values] + [run_name(f"grpo@task={values[-1]}x", 0)]
    assert len(set(names)) == len(names)
    for name in names:
        assert "/" not in name and len(name) <= 200 and name.endswith("-seed0") and not name.startswith(".")
    for v, name in zip(values[:-1], names, strict=False):
        assert run_label(Path(name)) == f"grpo@task={v}"  # the table and figures show the value as written
    assert run_name("apo-fixed@alpha=0.35", 2) == "apo-fixed@alpha=0.35-seed2"  # plain names unchanged


def test_worker_slots():
    cpu = []
    assert plan_workers(None, None, cpu) == [None]
    assert plan_workers(3, None, cpu) == [None, None, None]
    assert plan_workers(None, None, ["0"]) == [None]  # one GPU: in this process
    assert plan_workers(None, None, ["0", "1", "2", "3"]) == ["0", "1", "2", "3"]  # one run per GPU
    assert plan_workers(2, None, ["0", "1", "2", "3"]) == ["0", "1"]
    assert plan_workers(1, None, ["0", "1", "2", "3"]) == [None]  # one at a time, in this process
    assert plan_workers(None, ["2", "5"], ["0"]) == ["2", "5"]
    assert plan_workers(2, ["2", "5"], []) == ["2", "5"]
    with pytest.raises(ValueError, match="--jobs 3 with --devices 2,5"):
        plan_workers(3, ["2", "5"], [])
    with pytest.raises(ValueError, match="--jobs 5 but 4 GPUs are visible"):
        plan_workers(5, None, ["0", "1", "2", "3"])
    with pytest.raises(ValueError, match="--jobs must be >= 1"):
        plan_workers(0, None, cpu)


def test_visible_gpus_keep_the_schedulers_assignment():
    # a job given GPUs 2 and 3 (or UUIDs) hands out exactly those, never 0 and 1
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "2,3"}) == ["2", "3"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "GPU-a1b2, GPU-c3d4"}) == ["GPU-a1b2", "GPU-c3d4"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert plan_workers(None, None, visible_gpus({"CUDA_VISIBLE_DEVICES": "2,3"})) == ["2", "3"]


def _training_rows(run_dir):
    keep = ("step", "reward", "loss", "apo/alpha", "entropy", "grad_norm")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: r[k] for k in keep if k in r} for r in rows]


def test_runs_in_their_own_processes_match_runs_in_one(tmp_path):
    # One thread in both: the bundled config leaves torch_threads to torch (every core), and this compares numbers.
    overrides = [
        "max_steps=2",
        "eval_size=16",
        "eval_samples=2",
        "save_strategy=no",
        "train_size=64",
        "torch_threads=1",
    ]
    common = [*overrides, "--algorithms", "apo-fixed@alpha=0.35,grpo", "--seeds", "0"]
    assert main(["compare", *common, "--out", str(tmp_path / "one")]) == 0
    # CPU config: two processes share the CPU (--devices is refused there: the runs would not use them)
    assert main(["compare", *common, "--jobs", "2", "--out", str(tmp_path / "two")]) == 0
    log = json.loads((tmp_path / "two" / "compare.json").read_text())
    assert log["workers"] == 2
    assert {r["run"]: (r["status"], r["device"]) for r in log["runs"]} == {
        "apo-fixed@alpha=0.35-seed0": ("trained", None),
        "grpo-seed0": ("trained", None),
    }
    for run in ("apo-fixed@alpha=0.35-seed0", "grpo-seed0"):
        assert (tmp_path / "two" / f"{run}.log").read_text()
        rows = _training_rows(tmp_path / "two" / run)
        assert len(rows) == 2 and rows == _training_rows(tmp_path / "one" / run)
        for name in ("eval_before.json", "eval_after.json"):
            assert (tmp_path / "two" / run / name).read_text() == (tmp_path / "one" / run / name).read_text()
    table = json.loads((tmp_path / "two" / "table.json").read_text())
    assert [r["algorithm"] for r in table["algorithms"]] == ["apo-fixed@alpha=0.35", "grpo"]
    # the variant's setting reached the run and its loss
    variant = tmp_path / "two" / "apo-fixed@alpha=0.35-seed0"
    assert yaml.safe_load((variant / "config.yaml").read_text())["alpha"] == 0.35
    assert [r["apo/alpha"] for r in _training_rows(variant)] == [0.35, 0.35]


def test_a_failed_run_process_is_reported_with_its_log(tmp_path, capsys):
    out = tmp_path / "cmp"
    # valid as a setting, fails when the run loads its reward
    argv = ["compare", "max_steps=2", "reward=no_such_module:score", "--algorithms", "adpo", "--seeds", "0,1"]
    assert main([*argv, "--jobs", "2", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "2 of 2 runs failed: adpo-seed0 (exit 1, see" in err and "adpo-seed0.log" in err
    assert "no_such_module" in (out / "adpo-seed0.log").read_text()
    status = [r["status"] for r in json.loads((out / "compare.json").read_text())["runs"]]
    assert status == ["failed", "failed"]
    assert not (out / "table.md").exists()
