"""Two processes on CPU (gloo): groups stay whole and on one process, and every process uses the same alpha."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ddp_group_integrity.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("schedule", ["guarded-token", "ess"])
def test_two_processes_keep_groups_whole_and_agree_on_alpha(tmp_path, schedule):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        SCRIPT,
    ]
    results_dir = tmp_path / "results"
    results_dir.mkdir()
    env = {
        **os.environ,
        "APO_TEST_OUT": str(tmp_path / "out"),
        "APO_TEST_RESULTS": str(results_dir),
        "OMP_NUM_THREADS": "1",
        "APO_TEST_SCHEDULE": schedule,
    }
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    files = sorted(results_dir.glob("rank*.json"))
    assert [f.name for f in files] == ["rank0.json", "rank1.json"], output[-4000:]
    results = {int(f.stem[4:]): json.loads(f.read_text()) for f in files}
    assert results[0] == results[1]  # same alpha and metrics on both processes
    assert results[0]["checked"] == 8
    assert len(set(results[0]["alphas"])) > 1  # the schedule moved
    assert max(results[0]["u_abs_max"]) > 0  # the second pass over each rollout is off the anchor
    if schedule == "ess":  # 2 rollouts of 4 groups per process: alpha of their first step from all 8 groups
        assert results[0]["rollout_groups"] == [8, 8]
    else:  # the token confidence needs the policy: alpha from the micro-batches
        assert results[0]["rollout_groups"] == []
