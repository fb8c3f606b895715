"""`apo train` / `apo config` / `apo eval` end to end on the shipped tiny model (offline, CPU)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from apo.cli.main import main
from apo.stats import mean_ci
from apo.tasks.evaluate import reward_gain

FIXTURES = Path(__file__).parent / "fixtures"
FAST = ["eval_size=16", "eval_samples=2", "per_device_train_batch_size=16", "torch_threads=1"]


def _steps(run_dir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_train_default_writes_the_run_directory(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", f"output_dir={run}", "max_steps=2", "save_steps=1", *FAST]) == 0
    for name in ("config.yaml", "metrics.jsonl", "eval_before.json", "eval_after.json", "summary.json", "curves.png"):
        assert (run / name).is_file(), name
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert 0.0 <= r["reward"] <= 1.0 and 0.35 <= r["apo/alpha"] <= 0.9 and "apo/ess" in r
    assert (run / "final" / "model.safetensors").is_file()
    ckpt = run / "checkpoint-2"
    assert (ckpt / "model.safetensors").is_file() and (ckpt / "apo_alpha_schedule.json").is_file()
    assert not (run / ".partial").exists()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2 and "reward_before" in summary and "reward_after" in summary
    # the CLI's truncation policy (APOConfig's default is TRL's "grade") is stated in the config and the summary
    assert summary["truncated_completions"] == "zero"
    assert yaml.safe_load((run / "config.yaml").read_text())["truncated_completions"] == "zero"
    clipped = [r["completions/clipped_ratio"] for r in rows]  # TRL's, per step
    assert (
        summary["clipped_ratio_mean"] == pytest.approx(sum(clipped) / 2)
        and summary["clipped_ratio_last"] == clipped[1]
    )
    assert 0.0 <= summary["eval_clipped_ratio_after"] <= 1.0
    before, after = (json.loads((run / f"eval_{w}.json").read_text()) for w in ("before", "after"))
    diffs = [b - a for a, b in zip(before["prompt_rewards"], after["prompt_rewards"], strict=True)]
    assert len(diffs) == 16 and summary["reward_gain"] == pytest.approx(sum(diffs) / 16)
    assert summary["reward_gain_ci95"] == pytest.approx(mean_ci(diffs)[1])
    for when, result in (("before", before), ("after", after)):  # coverage measures of both evaluations
        assert summary[f"pass_at_k_{when}"] == result["pass_at_k"] and list(result["pass_at_k"])[0] == "1"
        assert summary[f"token_entropy_{when}"] == result["token_entropy"] > 0.0
    out = json.loads(capsys.readouterr().out)
    assert out["run_dir"] == str(run)


def test_train_refuses_to_overwrite_a_run(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", f"output_dir={run}", "max_steps=1", "eval_before_after=false", *FAST]) == 0
    assert main(["train", f"output_dir={run}", "max_steps=1", "eval_before_after=false", *FAST]) == 2
    assert "--resume" in capsys.readouterr().err


def test_a_run_saved_before_keys_were_added_still_resumes(tmp_path, capsys):
    """A config.yaml written by an earlier version lacks the keys added since (their defaults apply): --resume
    continues it instead of calling the config different."""
    run = tmp_path / "run"
    args = [f"output_dir={run}", "max_steps=2", "save_steps=1", "eval_before_after=false", *FAST]
    assert main(["train", *args]) == 0
    saved = yaml.safe_load((run / "config.yaml").read_text())
    for key in ("truncated_completions", "master_weights", "use_peft", "bf16", "use_cpu"):
        saved.pop(key, None)
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    (run / "summary.json").unlink()  # as if killed after step 1's checkpoint
    shutil.rmtree(run / "final")
    shutil.rmtree(run / "checkpoint-2")
    capsys.readouterr()
    assert main(["train", str(run / "config.yaml"), "--resume"]) == 0, capsys.readouterr().err
    assert _steps(run) == [1, 2]


def test_resume_on_another_thread_count_but_not_another_learning_rate(tmp_path, capsys):
    """``torch_threads`` is the machine's: a run resumes with another count; a key of the math is still refused."""
    run = tmp_path / "run"
    args = [f"output_dir={run}", "max_steps=2", "save_steps=1", "eval_before_after=false", *FAST]
    assert main(["train", *args, "torch_threads=1"]) == 0
    (run / "summary.json").unlink()  # as if killed after step 1's checkpoint
    shutil.rmtree(run / "final")
    shutil.rmtree(run / "checkpoint-2")
    capsys.readouterr()
    assert main(["train", str(run / "config.yaml"), "--resume", "learning_rate=0.5"]) == 2
    assert "differs from the saved run in ['learning_rate']" in capsys.readouterr().err
    assert main(["train", str(run / "config.yaml"), "--resume", "torch_threads=2"]) == 0, capsys.readouterr().err
    assert _steps(run) == [1, 2]


@pytest.mark.parametrize(
    "override, message",
    [
        ("alpah=0.5", "unknown config key 'alpah' (did you mean 'alpha'?)"),
        ("alpha=high", "config key 'alpha': expected float, got str 'high'"),
        ("max_steps=1.5", "config key 'max_steps': expected int"),
        ("alpha_min=0.9", "alpha_min (0.9) must be <= alpha_max (0.5)"),
        ("num_generations=1", "config key 'num_generations': 1 is out of range (allowed: >= 2)"),
        ("per_device_train_batch_size=12", "per_device_train_batch_size (12) must be a multiple of num_generations"),
        ("algorithm=ppo", "unknown algorithm 'ppo'"),
        ("mask_truncated_completions=true", "does not support mask_truncated_completions=True"),
        ("reward=nothing", "reward='nothing': unknown name"),
        ("model=/no/such/folder", "model='/no/such/folder'"),
        ("task=arith:%", "ArithmeticTask.ops=('%',): each op must be one of"),
        ("alpha.x=1", "config key 'alpha.x': 'alpha' is not a mapping; set it as alpha=VALUE"),
        ("objectve_kwargs.tau=1", "'objectve_kwargs' is not a config key (did you mean 'objective_kwargs'?)"),
        ("objective_kwargs.a.b=1", "write KEY.SUB with one SUB"),
    ],
)
def test_config_errors_name_the_key(override, message, capsys, tmp_path):
    extra = ["alpha_max=0.5"] if override.startswith("alpha_min") else []
    code = main(["train", f"output_dir={tmp_path / 'r'}", override, *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("apo: error:")
    assert message in err


def test_a_dotted_key_sets_one_entry_of_a_mapping(capsys):
    """``KEY.SUB=v`` merges into the mapping ``KEY`` (the others kept), after the plain keys, so it wins over them."""
    base = ["algorithm=apo-author", "alpha_schedule=fixed", "objective_kwargs={path: alphapo, tau: 0.8}"]
    assert main(["config", *base, "objective_kwargs.beta_reward=1.0", "objective_kwargs.tau=0.5"]) == 0
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["objective_kwargs"] == {"path": "alphapo", "tau": 0.5, "beta_reward": 1.0}
    assert main(["config", "algorithm=apo-author", "alpha_schedule=fixed", "objective_kwargs.tau=0.5"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["objective_kwargs"] == {"tau": 0.5}  # from an unset mapping
    assert main(["config", "algorithm=apo-author", "alpha_schedule=fixed", "objective_kwargs.taux=0.5"]) == 2
    assert "taux" in capsys.readouterr().err  # the objective's own check sees the merged mapping


def test_yaml_no_is_the_string_for_string_settings(capsys):
    assert main(["config", "save_strategy=no", "eval_strategy=no"]) == 0
    out = capsys.readouterr().out
    assert "save_strategy: 'no'" in out or "save_strategy: no" in out
    assert main(["config", "use_cpu=true"]) == 0  # a real boolean stays one
    assert "use_cpu: true" in capsys.readouterr().out
    assert main(["config", "use_cpu=yes"]) == 2  # YAML 1.2: `yes` is a string, not a boolean
    assert "config key 'use_cpu': expected bool, got str 'yes'" in capsys.readouterr().err


def test_config_prints_resolved_values_and_bundled_configs(capsys):
    assert main(["config", "alpha=0.25"]) == 0
    out = capsys.readouterr().out
    assert "alpha: 0.25" in out and "model: tiny-arith" in out
    assert main(["config", "paper-qwen3-1.7b-math-l3"]) == 0
    out = capsys.readouterr().out
    assert "model: Qwen/Qwen3-1.7B" in out and "learning_rate: 1.5e-05" in out and "max_completion_length: 1024" in out
    assert "gradient_accumulation_steps: 16" in out and "lr_scheduler_type: cosine" in out


def test_failing_rewards_are_scored_zero_and_the_run_goes_on(tmp_path, monkeypatch, caplog):
    monkeypatch.syspath_prepend(str(FIXTURES))
    monkeypatch.setenv("APO_TEST_REWARD_CALLS", str(tmp_path / "calls"))
    run = tmp_path / "run"
    args = [
        "train",
        f"output_dir={run}",
        "max_steps=3",
        "reward=bad_rewards:flaky",
        "reward_timeout=0.5",
        "eval_before_after=false",
        *FAST,
    ]
    with caplog.at_level("WARNING"):
        assert main(args) == 0
    assert _steps(run) == [1, 2, 3]
    log = caplog.text
    assert "reward crashed" in log and "timed out" in log.lower() and "nan" in log.lower()
    # call 1: 1 of 16 failed; calls 2 and 3: all 16 (a raise or a timeout costs the whole batch, bounded per call)
    assert json.loads((run / "summary.json").read_text())["reward_failed_frac"] == pytest.approx(33 / 48)


def test_a_reward_failing_on_every_completion_fails_the_run(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(FIXTURES))
    run = tmp_path / "run"
    args = ["train", f"output_dir={run}", "max_steps=5", "reward=bad_rewards:always_raises", "eval_before_after=false"]
    assert main([*args, *FAST]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("apo: error: reward always_raises failed on every one of the 32 completions of the ")
    assert "RuntimeError: reward broken" in err[-1] and "summary.json marks the run failed" in err[-1]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2 and "reward broken" in summary["failed"]  # stopped after 2 of 5 steps
    assert not (run / "final").exists()
    # before training, with an evaluation: refused before any step, and nothing is left to clean up
    run2 = tmp_path / "run2"
    assert main(["train", f"output_dir={run2}", "reward=bad_rewards:always_raises", *FAST]) == 1
    assert "completions of the held-out evaluation before training" in capsys.readouterr().err
    assert not run2.exists()


def test_a_reward_sees_the_whole_batch(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(FIXTURES))
    calls = tmp_path / "calls"
    monkeypatch.setenv("APO_TEST_REWARD_CALLS", str(calls))
    run = tmp_path / "run"
    args = ["train", f"output_dir={run}", "max_steps=2", "reward=bad_rewards:batch_size", "eval_before_after=false"]
    assert main([*args, *FAST]) == 0
    assert calls.read_text().split() == ["16", "16"]  # TRL's generation batch: 2 prompts x 8 completions per call


def test_sigkill_then_resume_loses_and_repeats_no_step(tmp_path):
    run = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "apo.cli.main",
        "train",
        f"output_dir={run}",
        "max_steps=8",
        "save_steps=2",
        "eval_before_after=false",
        *FAST,
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (run / "checkpoint-2").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (run / "checkpoint-2").exists(), "the run never wrote its first checkpoint"
    assert not (run / "summary.json").exists(), "the run finished before it could be killed"
    done = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert _steps(run) == list(range(1, 9))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 8
    # the wall time carries over the resume: it keeps growing from the kept steps, and counts them in the summary
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    times = [r["wall_time_s"] for r in rows]
    assert times == sorted(times) and times[0] > 0
    resumed_at = rows[2]["time"]  # step 3: the first step of the resumed process
    assert times[2] - times[1] < resumed_at - rows[1]["time"]  # the pause between the processes is not counted
    assert summary["wall_time_s"] >= times[-1] > times[1]


def test_eval_command(capsys, tmp_path):
    out = tmp_path / "eval.json"
    assert main(["eval", "eval_size=8", "eval_samples=2", f"--out={out}"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["prompts"] == 8 and 0.0 <= printed["reward"] <= 1.0 and "prompt_rewards" not in printed
    written = json.loads(out.read_text())
    per_prompt = written["prompt_rewards"]  # each the mean of 2 samples in {0, 1}
    assert len(per_prompt) == 8 and all(2 * r in (0.0, 1.0, 2.0) for r in per_prompt)
    assert written["reward"] == pytest.approx(sum(per_prompt) / 8) == printed["reward"]
    assert written["reward_ci95"] == pytest.approx(mean_ci(per_prompt)[1], nan_ok=True)


def test_reward_gain_pairs_prompts():
    before = {"reward": 0.25, "prompt_rewards": [0.0, 0.5, 0.0, 0.5]}
    after = {"reward": 0.625, "prompt_rewards": [0.5, 1.0, 0.0, 1.0]}
    gain = reward_gain(before, after)
    # differences 0.5, 0.5, 0, 0.5: mean 0.375, s = 0.25, t_{0.975,3} = 3.1824
    assert gain["reward_gain"] == pytest.approx(0.375)
    assert gain["reward_gain_ci95"] == pytest.approx(3.1824 * 0.25 / 2, abs=1e-4)
    # the same per-prompt means in another order pair differently: prompts, not pooled samples, are the units
    shuffled = {"reward": 0.625, "prompt_rewards": [1.0, 0.5, 1.0, 0.0]}
    assert reward_gain(before, shuffled)["reward_gain_ci95"] != pytest.approx(gain["reward_gain_ci95"])
    assert reward_gain({"reward": 0.25}, after) == {"reward_gain": 0.375, "reward_gain_ci95": None}
    assert reward_gain(before, {"reward": 0.5, "prompt_rewards": [0.5]})["reward_gain_ci95"] is None
