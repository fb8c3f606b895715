"""Repeat the racy ways a run ends, so that a race cannot hide: each path run ``--reps`` times (default 10) with the
installed ``apo`` console script, to its exit, under a time bound, counting the processes left behind.

Paths:
- ``smoke``: ``apo train max_steps=2``, the README's default with its full evaluations (200 prompts x 4 samples);
  it printed its summary and never exited in 5 of 5 tries before children got default signal dispositions;
- ``full-disk``: ``apo train max_steps=1 eval_before_after=false`` with ``RLIMIT_FSIZE`` 6 MB (``ulimit -f``): an
  exception after the first reward call (writing the checkpoint fails);
- ``sigterm`` / ``sighup``: ``apo train max_steps=40 eval_before_after=false``, the signal after the first step:
  stops at the next step with a checkpoint (exit 143 / 129);
- ``compare-full-disk``: ``apo compare --jobs 2`` of two runs that both fail writing their first checkpoint (6 MB
  ``RLIMIT_FSIZE``): the failed-run rule fires, exit 1 (the time after the last step is not measured: no run dir).

Usage: python scripts/journey_repeat.py [--reps N] [--paths smoke,full-disk,sigterm,sighup,compare-full-disk]
Prints one line per try and a table: exits as expected, the longest wall time, the longest time from the last
optimizer step's end to the exit, and processes left. Exit status 1 when any try went wrong.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests")]

from journey_tools import SMALL, last_step_time, metric_lines, run_apo  # noqa: E402


def _paths(work: Path):
    def smoke(run):
        return dict(argv=["train", "max_steps=2", f"output_dir={run}"], timeout_s=120), 0

    def full_disk(run):
        argv = ["train", "max_steps=1", "eval_before_after=false", *SMALL, f"output_dir={run}"]
        return dict(argv=argv, timeout_s=120, file_size_limit=6_000_000), 1

    def sigterm(run):
        argv = ["train", "max_steps=40", "eval_before_after=false", *SMALL, f"output_dir={run}"]
        return dict(argv=argv, timeout_s=120, signal_when=lambda: metric_lines(run) >= 1, signum=signal.SIGTERM), 143

    def sighup(run):
        argv = ["train", "max_steps=40", "eval_before_after=false", *SMALL, f"output_dir={run}"]
        return dict(argv=argv, timeout_s=120, signal_when=lambda: metric_lines(run) >= 1, signum=signal.SIGHUP), 129

    def compare_full_disk(run):  # both runs fail writing their checkpoint: the failed-run rule, exit 1
        argv = ["compare", "--algorithms", "apo-ess,grpo", "--seeds", "0", "--jobs", "2", "--out", str(run)]
        argv += ["max_steps=1", "eval_before_after=false", *SMALL]
        return dict(argv=argv, timeout_s=180, file_size_limit=6_000_000), 1

    return {
        "smoke": smoke,
        "full-disk": full_disk,
        "sigterm": sigterm,
        "sighup": sighup,
        "compare-full-disk": compare_full_disk,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--paths", default="smoke,full-disk,sigterm")
    args = parser.parse_args()
    bad = 0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        paths = _paths(work)
        for name in args.paths.split(","):
            walls, afters, lefts, ok = [], [], 0, 0
            for rep in range(args.reps):
                run = work / f"{name}-{rep}"
                kw, code = paths[name](run)
                j = run_apo(cwd=work, **kw)
                after = j.ended_at - last_step_time(run) if metric_lines(run) else float("nan")
                if name == "compare-full-disk":
                    good_lines = "2 of 2 runs failed" in j.stderr
                    j.code = j.code if good_lines else -1
                good = j.code == code and not j.left
                ok += good
                bad += not good
                lefts += len(j.left)
                walls.append(j.wall_s)
                afters.append(after)
                print(
                    f"{name} try {rep + 1}: exit {j.code} (expected {code}), {j.wall_s:.1f} s, "
                    f"{after:.1f} s after the last step, {len(j.left)} left of {j.seen} processes",
                    flush=True,
                )
                shutil.rmtree(run, ignore_errors=True)
            rows.append((name, args.reps, ok, max(walls), max(afters), lefts))
    print("\n| path | tries | exited as expected | longest wall (s) | longest exit after last step (s) | left |")
    print("|---|---|---|---|---|---|")
    for name, reps, ok, wall, after, left in rows:
        print(f"| {name} | {reps} | {ok} | {wall:.1f} | {after:.1f} | {left} |")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
