"""Fault injection: `apo train` on the embedded default config, killed (SIGKILL) or stopped (SIGTERM) at random
moments and resumed, over and over; the resumed runs must end exactly where an uninterrupted run ends.

Checked after every interruption: no process of the run survives it (its descendants, listed with psutil while it
ran, are gone), every visible file is whole (each ``checkpoint-N`` matches its manifest, every JSON file and
``metrics.jsonl`` line parses), a SIGTERM stop exits with 143 and one line naming the resume command, with that step
checkpointed. At the end: ``metrics.jsonl`` equals the uninterrupted run's except the time fields (no step lost or
repeated), ``eval_after.json`` equals it, and no ``.partial`` / ``*.tmp`` is left.

The runs are forked from a pre-imported process (``fault_zygote.py``) so that a dozen starts cost seconds, not a
dozen imports of torch and TRL; each run is still a process of its own, with its own reward worker.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path

import psutil
import pytest
from fault_zygote import Zygote, survivors

from apo.integrations.trl.checkpoints import verify_checkpoint

ARGS = ["max_steps=6", "save_steps=1", "eval_size=4", "eval_samples=2", "torch_threads=1"]
TIME_KEYS = {"time", "wall_time_s", "step_time"}
MIN_TRIALS = 12  # runs interrupted (exit status != 0), alternately by SIGKILL and SIGTERM
MAX_DELAY_S = 4.0  # a fresh run takes about 4-5 s from fork to summary on one core
SEED = 20261130


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def without_time(rs: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIME_KEYS} for r in rs]


def check_visible_files(run: Path) -> None:
    """Every file a reader looks at is whole: checkpoints match their manifests, JSON parses, steps increase."""
    for ckpt in run.glob("checkpoint-*"):
        assert verify_checkpoint(ckpt) is None, f"{ckpt}: {verify_checkpoint(ckpt)}"
    for name in ("eval_before.json", "eval_after.json", "summary.json"):
        if (run / name).exists():
            json.loads((run / name).read_text())
    if (run / "metrics.jsonl").exists():
        steps = [r["step"] for r in rows(run)]
        assert steps == sorted(set(steps)), steps
    if (run / "final").exists():
        assert (run / "final" / "model.safetensors").is_file() and (run / "final" / "config.json").is_file()


@pytest.mark.slow
def test_random_kills_and_stops_then_resume_match_an_uninterrupted_run(tmp_path):
    zyg = Zygote()
    try:
        ref = tmp_path / "ref"
        pid = zyg.start(["train", f"output_dir={ref}", *ARGS], tmp_path / "ref.log")
        assert zyg.wait(pid) == 0, (tmp_path / "ref.log").read_text()[-3000:]
        ref_rows = without_time(rows(ref))
        assert [r["step"] for r in ref_rows] == [1, 2, 3, 4, 5, 6]

        rng = random.Random(SEED)
        trials, finished, chains, attempt = [], [], [], 0
        run = None
        while len(trials) < MIN_TRIALS and attempt < 4 * MIN_TRIALS:
            attempt += 1
            if run is None or (run / "summary.json").exists():
                run = tmp_path / f"run{len(chains)}"
                chains.append(run)
            sig = (signal.SIGKILL, signal.SIGTERM)[len(trials) % 2]
            resume = ["--resume"] if (run / "config.yaml").exists() else []
            log = tmp_path / f"trial{attempt}.log"
            pid = zyg.start(["train", f"output_dir={run}", *ARGS, *resume], log)
            # Every other pair of trials waits for the run's first child process (the reward worker) before the
            # random delay starts, so that at least half the trials kill a run that has children, however slow the
            # machine is; the others strike anywhere from the fork on.
            after_child = (len(trials) // 2) % 2 == 0
            delay = rng.uniform(0.0, 1.0 if after_child else MAX_DELAY_S)
            seen: dict[int, psutil.Process] = {}
            t0 = time.time()
            deadline = t0 + 120.0
            exited = False
            while time.time() - t0 < delay or (after_child and not seen and time.time() < deadline):
                try:
                    me = psutil.Process(pid)
                    if me.status() == psutil.STATUS_ZOMBIE:
                        exited = True
                        break
                    children = me.children(recursive=True)
                    if after_child and children and not seen:
                        t0 = time.time()  # the delay counts from the first child
                    seen.update({c.pid: c for c in children})
                except psutil.NoSuchProcess:
                    exited = True
                    break
                time.sleep(0.02)
            if not exited:
                os.kill(pid, sig)
            code = zyg.wait(pid)
            left = survivors(list(seen.values()))
            assert not left, f"trial {attempt}: {[(p.pid, p.name()) for p in left]} outlived the run"
            check_visible_files(run)
            if exited:  # the run ended before the signal: a completed chain, not a trial
                assert code == 0, log.read_text()[-3000:]
                continue
            err = log.read_text().strip().splitlines()
            if sig == signal.SIGTERM:
                # 143: stopped cleanly; -15: the signal came before the handler was installed (the first ~0.1 s);
                # 0: the signal came while the run wrote its last files (curves.png, summary.json): it finished
                assert code in (143, -15, 0), (code, err[-5:])
                if code == 143:
                    last = err[-1]
                    assert last.startswith("apo: stopped by SIGTERM "), last
                    assert last.endswith(f"resume with: apo train {run / 'config.yaml'} --resume"), last
                    if " at step " in last:
                        step = int(last.split(" at step ")[1].split()[0])
                        assert verify_checkpoint(run / f"checkpoint-{step}") is None
            else:
                assert code == -signal.SIGKILL
            record = {"signal": signal.Signals(sig).name, "delay_s": round(delay, 2), "exit": code}
            record["children"] = len(seen)
            if code == 0:  # SIGTERM while the run wrote its last files: it finished (a completed chain, not a trial)
                finished.append(record)
                continue
            trials.append(record)

        assert len(trials) >= MIN_TRIALS, trials
        for run in chains:  # finish every chain, then compare it with the uninterrupted run
            if not (run / "summary.json").exists():
                pid = zyg.start(["train", f"output_dir={run}", *ARGS, "--resume"], tmp_path / "finish.log")
                assert zyg.wait(pid) == 0, (tmp_path / "finish.log").read_text()[-3000:]
            assert without_time(rows(run)) == ref_rows, run
            assert json.loads((run / "eval_after.json").read_text()) == json.loads(
                (ref / "eval_after.json").read_text()
            )
            summary = json.loads((run / "summary.json").read_text())
            assert summary["steps"] == 6
            assert not (run / ".partial").exists() and not list(run.glob("*.tmp"))
            check_visible_files(run)
        print(f"\n{len(trials)} interruptions over {len(chains)} runs:", json.dumps(trials))
        print("signals that came as a run finished:", json.dumps(finished))
        assert {t["signal"] for t in trials} == {"SIGKILL", "SIGTERM"}
        # the survivor check is not vacuous: most interrupted runs had started their reward worker
        assert sum(t["children"] > 0 for t in trials) >= MIN_TRIALS // 2, trials
    finally:
        zyg.close()
