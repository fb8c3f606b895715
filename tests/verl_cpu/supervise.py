"""Run one command under a hard time limit and leave nothing behind: every process it started (Ray's raylet and
workers, vLLM's engine processes), the POSIX shared-memory segments they mapped (``/dev/shm``) and verl's ZeroMQ
sockets (``/tmp/rl-colocate-zmq-*``).

Processes are found three ways, so that one that left the session or was re-parented is still found: the command's
own session (``start_new_session``), its descendants seen while it ran (pid + start time, so a recycled pid is never
hit), and a marker in the environment that every descendant inherits. Shared-memory segments are those the
processes had mapped or open while they ran; sockets those verl names after the Ray job the run started.
"""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass, field

import psutil

MARKER = "APO_VERL_E2E_RUN"


@dataclass
class Supervised:
    """What a supervised command did and what was cleaned up after it."""

    returncode: int | None
    """Exit status; ``None`` when the time limit killed it."""
    wall_s: float
    """Seconds from start to exit (or to the kill)."""
    peak_pss_gb: float
    """Largest sum of the proportional set sizes of its processes, sampled every ``poll_s`` (GB)."""
    processes: int
    """Processes seen in its tree."""
    killed_after_exit: list[str] = field(default_factory=list)
    """Processes still alive after the command exited (then killed)."""
    removed: list[str] = field(default_factory=list)
    """Shared-memory segments and sockets it left behind (then removed)."""
    survivors: list[str] = field(default_factory=list)
    """Processes still alive after SIGTERM and SIGKILL (should be none)."""


def _pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _shm_paths(pid: int) -> set[str]:
    paths = set()
    try:
        with open(f"/proc/{pid}/maps") as f:
            for line in f:
                i = line.find("/dev/shm/")
                if i >= 0:
                    paths.add(line[i:].strip().removesuffix(" (deleted)"))
    except OSError:
        pass
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("/dev/shm/"):
                paths.add(target.removesuffix(" (deleted)"))
    except OSError:
        pass
    return paths


def _marked(token: str) -> dict[int, float]:
    found = {}
    needle = f"{MARKER}={token}".encode()
    for p in psutil.process_iter(["pid"]):
        try:
            with open(f"/proc/{p.pid}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    found[p.pid] = p.create_time()
        except (OSError, psutil.Error):
            pass
    return found


def _alive(seen: dict[int, float]) -> list[psutil.Process]:
    alive = []
    for pid, created in seen.items():
        try:
            p = psutil.Process(pid)
            if p.create_time() == created and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p)
        except psutil.Error:
            pass
    return alive


def _kill(procs: list[psutil.Process], grace_s: float) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in procs:
            try:
                p.send_signal(sig)
            except psutil.Error:
                pass
        _, procs = psutil.wait_procs(procs, timeout=grace_s)
        if not procs:
            return


def run(argv: list[str], *, env: dict, cwd: str, log_path: str, timeout_s: float, poll_s: float = 1.0) -> Supervised:
    """Run ``argv`` (stdout and stderr to ``log_path``) for at most ``timeout_s`` seconds, then clean up.

    ``env`` is the command's whole environment (a marker is added). Returns a :class:`Supervised`.
    """
    token = uuid.uuid4().hex
    env = {**env, MARKER: token}
    seen: dict[int, float] = {}
    shm: set[str] = set()
    peak_kb = 0
    zmq_before = set(glob.glob("/tmp/rl-colocate-zmq-*"))
    t0 = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    returncode = None
    try:
        seen[proc.pid] = psutil.Process(proc.pid).create_time()
        while True:
            try:
                top = psutil.Process(proc.pid)
                for p in top.children(recursive=True):
                    seen.setdefault(p.pid, p.create_time())
            except psutil.Error:
                pass
            alive = _alive(seen)
            peak_kb = max(peak_kb, sum(_pss_kb(p.pid) for p in alive))
            for p in alive:
                shm |= _shm_paths(p.pid)
            try:
                returncode = proc.wait(timeout=poll_s)
                break
            except subprocess.TimeoutExpired:
                if time.monotonic() - t0 > timeout_s:
                    break
    finally:
        wall_s = time.monotonic() - t0
        if returncode is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass
            proc.wait()
        for pid, created in _marked(token).items():
            seen.setdefault(pid, created)
        left = _alive(seen)
        killed = [f"{p.pid} {' '.join(p.cmdline())[:100]}" for p in left if p.is_running()]
        _kill(left, grace_s=5.0)
        survivors = [f"{p.pid} {' '.join(p.cmdline())[:100]}" for p in _alive(seen)]
        removed = []
        zmq_new = set(glob.glob("/tmp/rl-colocate-zmq-*")) - zmq_before
        for path in sorted(shm | zmq_new):
            if os.path.exists(path):
                os.unlink(path)
                removed.append(path)
    return Supervised(returncode, wall_s, peak_kb / 1e6, len(seen), killed, removed, survivors)
