"""``apo.cli.ranks`` with two processes on gloo: a failure inside an ``agreed`` block that meets another rank's
``gather`` (the failed rank left the block early) ends that rank with ``PeerFailed`` and the failing rank's code."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from journey_tools import torchrun

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ranks_failure.py")


def test_a_failure_that_meets_a_gather_is_a_peer_failure_not_data(tmp_path):
    env = {**os.environ, "APO_TEST_RESULTS": str(tmp_path), "OMP_NUM_THREADS": "1"}
    launcher = torchrun(2)
    launcher[0] = sys.executable
    launcher.insert(1, "-m")
    launcher.insert(2, "torch.distributed.run")
    proc = subprocess.run([*launcher, SCRIPT], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    rank0 = json.loads((tmp_path / "rank0.json").read_text())
    rank1 = json.loads((tmp_path / "rank1.json").read_text())
    assert rank0 == {"raised": "PeerFailed", "code": 7, "speaks": True, "after": [0, 1]}
    assert rank1 == {"raised": "RuntimeError", "message": "rank 1 failed first", "speaks": True, "after": [0, 1]}
    # both ranks ended through ranks.leave, which runs the atexit handlers before os._exit
    assert [(tmp_path / f"rank{r}.atexit").read_text() for r in (0, 1)] == ["ran", "ran"]


def test_leave_runs_exit_handlers_flushes_and_exits_with_the_code(tmp_path):
    marker = tmp_path / "atexit"
    script = (
        "import atexit, sys, pathlib\n"
        "from apo.cli import ranks\n"
        f"atexit.register(pathlib.Path({str(marker)!r}).write_text, 'ran')\n"
        "sys.stdout.write('no newline, still buffered')\n"
        "sys.stderr.write('err')\n"
        "ranks.leave(3)\n"
        "print('never reached')\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout == "no newline, still buffered"
    assert proc.stderr == "err"
    assert marker.read_text() == "ran"
