"""The README's commands and every way a run ends, as a user meets them: the installed ``apo`` console script in a
process of its own, run to its exit under a time bound, with no process of it left behind (``journey_tools``).

Runs are shortened by overrides (``max_steps=2``, 16 held-out prompts x 2 samples) and shared across assertions
(module-scoped fixtures). Repetitions of the racy paths (>= 10 each), SIGHUP, and a comparison whose runs fail after
their first reward call (``apo compare --jobs 2`` on a full disk): ``scripts/journey_repeat.py``.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from journey_tools import APO, SMALL, Journey, last_step_time, metric_lines, run_apo

pytestmark = pytest.mark.skipif(not APO.exists(), reason=f"no installed apo console script at {APO}")

AFTER_LAST_STEP_S = 30.0
"""A command exits within this many seconds of its last optimizer step's end."""
HANG_S = 600.0
"""The bound on a whole command: a hang never ends, while a loaded machine (another job on both cores) can take
minutes to import, load and train; the tight bound that catches a slow exit is :data:`AFTER_LAST_STEP_S`."""


def _ok(j: Journey, code: int, bound_s: float) -> None:
    assert j.code == code, (j.code, j.stderr[-2000:])
    assert j.wall_s < bound_s, (j.wall_s, bound_s)
    assert not j.left, f"processes left behind: {j.left}"


def _last_line(j: Journey) -> str:
    return [ln for ln in j.stderr.splitlines() if ln.strip()][-1]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("journeys")


@pytest.fixture(scope="module")
def finished(work) -> tuple[Journey, Path]:
    """`apo train max_steps=2` (the README's first command, shortened; its evaluations as they are: 200 held-out
    prompts x 4 samples), its stdout closed at once (`apo train | true`)."""
    run = work / "run"
    return run_apo(["train", "max_steps=2", f"output_dir={run}"], work, HANG_S, close_stdout=True), run


def test_train_finishes_with_a_checkpoint_at_its_last_step_and_exits(finished):
    j, run = finished
    _ok(j, 0, HANG_S)
    assert j.ended_at - last_step_time(run) < AFTER_LAST_STEP_S
    assert j.seen >= 2  # the reward worker ran, and is gone
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["reward_failed_frac"] == 0.0
    # the README's figure before training (docs/default-run.json, from the 400-step run): the same evaluation
    recorded = json.loads((Path(__file__).parents[1] / "docs" / "default-run.json").read_text())
    assert summary["reward_before"] == pytest.approx(recorded["reward_before"], abs=1e-9)
    assert (run / "checkpoint-2").is_dir() and (run / "final").is_dir() and not (run / ".apo.lock").exists()
    assert "Traceback" not in j.stderr and "BrokenPipe" not in j.stderr  # its reader left: still exit 0, quietly


def test_resume_of_a_finished_run_from_another_folder(finished, work):
    _, run = finished
    elsewhere = work / "elsewhere"
    elsewhere.mkdir()
    before = sorted(p.name for p in run.iterdir())
    j = run_apo(["train", str(run.resolve() / "config.yaml"), "--resume"], elsewhere, HANG_S)
    _ok(j, 0, HANG_S)
    assert "is finished (summary.json written): nothing to resume" in j.stderr
    assert sorted(p.name for p in run.iterdir()) == before and not list(elsewhere.iterdir())


def test_eval_of_the_trained_policy(finished, work):
    _, run = finished
    j = run_apo(["eval", "--policy", str(run / "final"), *SMALL], work, HANG_S)
    _ok(j, 0, HANG_S)
    assert json.loads(j.stdout)["prompts"] == 16


def test_sigkill_then_resume_to_the_end(work):
    run = work / "killed"
    argv = ["train", "max_steps=6", "save_steps=2", "eval_before_after=false", *SMALL, f"output_dir={run}"]
    killed = run_apo(argv, work, HANG_S, signal_when=lambda: (run / "checkpoint-2").is_dir(), signum=signal.SIGKILL)
    _ok(killed, -signal.SIGKILL, HANG_S)  # the reward worker died with it
    assert not (run / "summary.json").exists()
    resumed = run_apo([*argv, "--resume"], work, HANG_S)
    _ok(resumed, 0, HANG_S)
    steps = [json.loads(ln)["step"] for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert resumed.ended_at - last_step_time(run) < AFTER_LAST_STEP_S


def test_signals_stop_at_a_step_with_a_checkpoint_and_a_second_run_is_refused(work):
    """SIGTERM, then SIGINT on the resumed run: each stops at the next step with a checkpoint and the resume line;
    meanwhile a second `apo train` on the same output_dir is refused with the holder's pid (an error exit: one line,
    exit 2; the other error exits, run in-process, are tests/reliability_cases.py). (SIGHUP, which stops
    the same way with exit 129: scripts/journey_repeat.py --paths sighup.)"""
    run = work / "stopped"
    argv = ["train", "max_steps=40", "eval_before_after=false", *SMALL, f"output_dir={run}"]
    second: list = []

    def start_second(proc):
        second.append(run_apo(["train", "max_steps=40", f"output_dir={run}"], work, HANG_S))
        second.append(proc.pid)

    for k, (signum, code) in enumerate(((signal.SIGTERM, 143), (signal.SIGINT, 130))):
        lines = metric_lines(run)
        j = run_apo(
            argv + (["--resume"] if k else []),
            work,
            120,
            signal_when=lambda lines=lines: metric_lines(run) > lines,
            signum=signum,
            while_running=start_second if k == 0 else None,
        )
        _ok(j, code, HANG_S)
        step = metric_lines(run)
        name = signal.Signals(signum).name
        assert _last_line(j) == (
            f"apo: stopped by {name} at step {step} (checkpoint-{step} saved); resume with: apo train "
            f"{run}/config.yaml --resume"
        )
        assert (run / f"checkpoint-{step}").is_dir() and not (run / "summary.json").exists()
    refused, holder = second
    _ok(refused, 2, HANG_S)
    assert _last_line(refused).startswith(f"apo: error: output_dir '{run}' is in use by apo process {holder}")


def test_an_exception_after_the_first_reward_call_exits(work):
    """A full disk (RLIMIT_FSIZE, as `ulimit -f`) while the checkpoint is written: exit 1, nothing left running."""
    run = work / "full"
    argv = ["train", "max_steps=1", "eval_before_after=false", *SMALL, f"output_dir={run}"]
    j = run_apo(argv, work, HANG_S, file_size_limit=6_000_000)
    _ok(j, 1, HANG_S)
    assert metric_lines(run) == 1 and "SIGTERM received" not in j.stderr
    assert j.ended_at - last_step_time(run) < AFTER_LAST_STEP_S


@pytest.fixture(scope="module")
def compared(work) -> dict[int, tuple[Journey, Path, list[str]]]:
    """`apo compare` (README), one seed, with --jobs 1 (one algorithm) and --jobs 2 (two at once), no evaluations."""
    out = {}
    for jobs, algorithms in ((1, ["grpo"]), (2, ["apo-ess", "grpo"])):
        folder = work / f"cmp{jobs}"
        argv = ["compare", "--algorithms", ",".join(algorithms), "--seeds", "0", "--jobs", str(jobs)]
        argv += ["--out", str(folder), "max_steps=2", "eval_before_after=false", *SMALL]
        out[jobs] = run_apo(argv, work, HANG_S), folder, algorithms
    return out


@pytest.mark.parametrize("jobs", [1, 2])
def test_compare_finishes_and_exits(compared, jobs):
    j, folder, algorithms = compared[jobs]
    _ok(j, 0, HANG_S)
    assert j.stdout.strip() == f"comparison written to {folder}"
    assert j.seen >= 1 + jobs  # with --jobs 2, a process per run
    for name in (f"{a}-seed0" for a in algorithms):
        assert json.loads((folder / name / "summary.json").read_text())["steps"] == 2
        assert j.ended_at - last_step_time(folder / name) < AFTER_LAST_STEP_S + 60  # + drawing the figures


def test_plot_redraws_and_exits(compared, work):
    _, folder, _ = compared[2]
    (folder / "table.md").unlink()
    j = run_apo(["plot", str(folder)], work, HANG_S)
    _ok(j, 0, HANG_S)
    assert (folder / "table.md").exists() and (folder / "curves.png").exists()
