"""``apo train`` and ``apo eval`` launched as multi-GPU runs are, on a CPU: ``torchrun --nproc_per_node 2`` starting
the installed console script on each rank (gloo), run to their exit under generous bounds, with no process left.

Each rank runs the whole command; rank 0 alone locks and writes the run folder and prints (:mod:`apo.cli.ranks`).
The held-out evaluation deals its batches out over the ranks (``eval_batch_size=4``: 4 batches of the 16 prompts),
so a launch of 2 evaluates the same prompts with the same samples as one process: the results are compared exactly.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from journey_tools import APO, Journey, run_apo, signal_all, torchrun

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not APO.exists(), reason=f"no installed apo console script at {APO}"),
]

EVAL = ["eval_size=16", "eval_samples=2", "eval_batch_size=4", "torch_threads=1"]
BOUND_S = 600  # a hang never ends; a loaded 2-core machine takes about 20 s per launch


def _steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def _clean(j: Journey, code: int = 0) -> None:
    assert j.code == code, (j.code, j.stderr[-3000:])
    assert not j.left, f"processes left behind: {j.left}"


def _json_documents(text: str) -> list[dict]:
    """The JSON objects printed one after another on stdout."""
    decoder, docs, i = json.JSONDecoder(), [], 0
    while (i := text.find("{", i)) != -1:
        doc, i = decoder.raw_decode(text, i)
        docs.append(doc)
    return docs


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("multiprocess")


@pytest.fixture(scope="module")
def two(work) -> tuple[Journey, Path]:
    """The default config with its evaluations before and after, 3 steps, 2 processes."""
    run = work / "two"
    return run_apo(["train", "max_steps=3", *EVAL, f"output_dir={run}"], work, BOUND_S, launcher=torchrun(2)), run


def test_two_processes_write_one_run_folder_and_one_summary(two):
    j, run = two
    _clean(j)
    docs = _json_documents(j.stdout)
    assert len(docs) == 1 and docs[0]["steps"] == 3 and docs[0]["run_dir"] == str(run)
    assert _steps(run) == [1, 2, 3]  # one line per optimizer step, written once
    assert j.stderr.count("held-out reward before training") == 1  # one process speaks
    assert "Traceback" not in j.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 3 and "reward_after" in summary
    assert (run / "final" / "model.safetensors").is_file() and (run / "checkpoint-3").is_dir()
    assert sorted(p.name for p in (run / "checkpoint-3").glob("rng_state*")) == ["rng_state_0.pth", "rng_state_1.pth"]
    assert not (run / ".apo.lock").exists() and not (run / "final.tmp").exists()


def test_evaluation_over_two_processes_is_the_one_process_evaluation(two, work):
    """Every held-out prompt once, the same samples: ``eval_before.json`` of the 2-process run equals ``apo eval`` of
    the starting model in one process, and ``apo eval`` under torchrun gives the same again."""
    _, run = two
    before = json.loads((run / "eval_before.json").read_text())
    one = run_apo(["eval", *EVAL, "--out", str(work / "one.json")], work, BOUND_S)
    _clean(one)
    launched = run_apo(["eval", *EVAL, "--out", str(work / "two.json")], work, BOUND_S, launcher=torchrun(2))
    _clean(launched)
    assert len(_json_documents(launched.stdout)) == 1  # rank 0 prints the whole result
    for name in ("one.json", "two.json"):
        result = json.loads((work / name).read_text())
        assert result["prompts"] == 16 and len(result["prompt_rewards"]) == 16
        assert result["prompt_rewards"] == before["prompt_rewards"], name
        assert result["reward"] == before["reward"]
        # entropies of the same samples: equal up to the order of float sums (threads per process)
        assert result["token_entropy"] == pytest.approx(before["token_entropy"], rel=1e-6)


@pytest.fixture(scope="module")
def stopped(work) -> tuple[Journey, Journey, Path]:
    """A 12-step run on 2 processes; once it has trained a step, it is held (SIGSTOP to all its processes) while a
    second launch into the same folder runs to its exit, then let go (SIGCONT) and sent SIGTERM (to the launcher,
    which passes it on to the ranks)."""
    run = work / "stopped"
    second: list[Journey] = []

    def launch_again(proc):
        argv = ["train", "max_steps=12", "eval_before_after=false", f"output_dir={run}"]
        signal_all(proc.pid, signal.SIGSTOP)  # the first run holds the lock however long the second takes to start
        try:
            second.append(run_apo(argv, work, BOUND_S, launcher=torchrun(2)))
        finally:
            signal_all(proc.pid, signal.SIGCONT)

    argv = ["train", "max_steps=12", "save_steps=2", "eval_before_after=false", "torch_threads=1", f"output_dir={run}"]
    first = run_apo(
        argv,
        work,
        BOUND_S,
        launcher=torchrun(2),
        signal_when=lambda: (run / "metrics.jsonl").exists(),
        while_running=launch_again,
        signum=signal.SIGTERM,
    )
    return first, second[0], run


def test_a_second_launch_into_a_running_folder_is_refused_by_one_line(stopped):
    first, second, run = stopped
    assert second.code != 0 and not second.left
    assert second.stderr.count("is in use by apo process") == 1, second.stderr[-3000:]
    # one line from apo; the rest of stderr is torchrun's own report of a rank's non-zero exit
    assert [ln for ln in second.stderr.splitlines() if ln.startswith("apo:")] == [
        next(ln for ln in second.stderr.splitlines() if "is in use by apo process" in ln)
    ]
    assert "apo: error: output_dir" in second.stderr and "]: Traceback" not in second.stderr
    assert "max_steps: 12" in (run / "config.yaml").read_text() and first.code != -9


def test_sigterm_stops_every_rank_at_one_step_with_a_checkpoint(stopped):
    first, _, run = stopped
    assert not first.left, first.left
    lines = [ln for ln in first.stderr.splitlines() if ln.startswith("apo: stopped by SIGTERM")]
    assert len(lines) == 1, first.stderr[-3000:]  # said once, by rank 0
    step = int(lines[0].split("at step ")[1].split()[0])
    assert (run / f"checkpoint-{step}").is_dir() and _steps(run) == list(range(1, step + 1))
    assert not (run / "summary.json").exists() and not (run / ".apo.lock").exists()


def test_sigkill_of_the_launch_then_resume_loses_and_repeats_no_step(stopped, work):
    """SIGKILL of the launcher of a resumed run once it has saved a new checkpoint (its ranks die with it, however
    it is killed); a resume with another process count is refused in one line; a resume with 2 processes trains to
    the end."""
    _, _, run = stopped
    resume = ["train", str(run / "config.yaml"), "--resume"]
    saved = max(int(p.name.split("-")[1]) for p in run.glob("checkpoint-*"))

    def newer_checkpoint() -> bool:
        return any(int(p.name.split("-")[1]) > saved for p in run.glob("checkpoint-*"))

    killed = run_apo(
        resume,
        work,
        BOUND_S,
        launcher=torchrun(2),
        signal_when=newer_checkpoint,
        signum=signal.SIGKILL,
    )
    assert killed.code == -signal.SIGKILL and not killed.left, killed.left
    assert not (run / "summary.json").exists()

    alone = run_apo(resume, work, BOUND_S)
    _clean(alone, 2)
    assert alone.stderr.strip().splitlines()[-1].startswith("apo: error: --resume: checkpoint-")
    assert "written by 2 processes and this launch has 1" in alone.stderr

    finished = run_apo(resume, work, BOUND_S, launcher=torchrun(2))
    _clean(finished)
    assert _steps(run) == list(range(1, 13))  # every step once, none lost, none repeated
    assert json.loads((run / "summary.json").read_text())["steps"] == 12


def test_lora_on_two_processes(work):
    run = work / "lora"
    argv = ["train", "use_peft=true", "max_steps=2", "eval_before_after=false", "torch_threads=1", f"output_dir={run}"]
    j = run_apo(argv, work, BOUND_S, launcher=torchrun(2))
    _clean(j)
    assert _steps(run) == [1, 2]
    final = run / "final"
    assert (final / "adapter_config.json").is_file() and (final / "adapter_model.safetensors").is_file()
    assert not (final / "model.safetensors").exists()


def test_compare_under_a_launcher_is_refused_in_one_line(work):
    j = run_apo(["compare", "--seeds", "0", "--algorithms", "grpo"], work, BOUND_S, launcher=torchrun(2))
    assert j.code != 0 and not j.left
    assert j.stderr.count("apo: error: apo compare starts a process per run itself") == 1, j.stderr[-2000:]
