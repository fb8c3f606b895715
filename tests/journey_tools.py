"""Run the installed ``apo`` command as a user does: a process of its own, to its exit, under a time bound, and check
that no process it started is left. Used by ``tests/test_journeys.py`` and ``scripts/journey_repeat.py``.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

APO = Path(sys.executable).parent / "apo"
"""The console script installed next to this interpreter (``pip install -e .`` puts it there)."""

SMALL = ["eval_size=16", "eval_samples=2", "torch_threads=1"]
"""Overrides that shorten a run's evaluations (16 held-out prompts, 2 samples each)."""


@dataclass
class Journey:
    argv: list[str]
    code: int  # exit status
    wall_s: float  # from start to exit
    stdout: str
    stderr: str
    left: list[str] = field(default_factory=list)  # processes of the run still alive after it exited
    seen: int = 0  # processes of the run seen while it ran (itself included)
    ended_at: float = 0.0  # time.time() at exit


def _fsize_limit(limit_bytes: int | None):
    if limit_bytes is None:
        return None

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return limit


def run_apo(
    argv: list[str],
    cwd: Path,
    timeout_s: float,
    *,
    signal_when=None,
    signum: int = signal.SIGTERM,
    close_stdout: bool = False,
    file_size_limit: int | None = None,
    while_running=None,
    launcher: list[str] | None = None,
    signal_tree: bool = False,
) -> Journey:
    """Run ``apo <argv>`` in ``cwd`` until it exits or ``timeout_s`` passes (then it and every process it started are
    killed, and ``code`` is -9). Every 0.05 s the process tree is recorded (pid and start time), so that a child
    left behind after the exit is found even once it has been re-parented.

    ``signal_when``: a function of no argument; once it returns true, ``signum`` is sent to the command (once).
    ``while_running``: called once, with the ``Popen``, at the same moment (e.g. to start a second command).
    ``close_stdout``: the reader of stdout goes away at once (``apo ... | true``).
    ``file_size_limit``: ``RLIMIT_FSIZE`` in bytes (``ulimit -f``): writing past it fails as on a full disk.
    ``launcher``: a command that starts the console script, e.g. ``torchrun --nproc_per_node 2`` (:func:`torchrun`);
    signals then go to the launcher alone (``kill PID``). ``signal_tree``: ``signum`` goes to every process of the
    command (:func:`signal_tree`), as a job scheduler's kill does.
    """
    env = dict(os.environ)  # keeps PYTHONPATH: the command imports the same package as the tests
    out_path, err_path = (Path(cwd) / f".journey-{time.monotonic_ns()}.{name}" for name in ("out", "err"))
    with open(out_path, "w") as out_file, open(err_path, "w") as err_file:
        t0 = time.time()
        proc = subprocess.Popen(
            [*(launcher or []), str(APO), *argv],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if close_stdout else out_file,
            stderr=err_file,
            start_new_session=True,
            preexec_fn=_fsize_limit(file_size_limit),
        )
    if close_stdout:
        proc.stdout.close()
    seen: dict[int, float] = {}
    top = psutil.Process(proc.pid)
    signalled = False
    code = None
    while True:
        try:
            for p in [top, *top.children(recursive=True)]:
                seen.setdefault(p.pid, p.create_time())
        except psutil.Error:
            pass
        code = proc.poll()
        if code is not None:
            break
        if time.time() - t0 > timeout_s:
            _kill_tree(proc.pid, seen)
            proc.wait()
            code = -9
            break
        if signal_when is not None and not signalled and signal_when():
            signalled = True
            if while_running is not None:
                while_running(proc)
            signal_all(proc.pid, signum) if signal_tree else os.kill(proc.pid, signum)
        time.sleep(0.05)
    ended = time.time()
    out, err = out_path.read_text(), err_path.read_text()
    out_path.unlink()
    err_path.unlink()
    left = _alive(seen, exclude=proc.pid)
    deadline = time.time() + 2  # a child killed by the kernel with its parent (PR_SET_PDEATHSIG) may take a moment
    while left and time.time() < deadline:
        time.sleep(0.1)
        left = _alive(seen, exclude=proc.pid)
    if left:
        _kill_tree(proc.pid, seen)
    return Journey(argv, code, ended - t0, out, err, left, len(seen), ended)


def _alive(seen: dict[int, float], exclude: int) -> list[str]:
    left = []
    for pid, created in seen.items():
        if pid == exclude:
            continue
        try:
            p = psutil.Process(pid)
            if p.create_time() == created and p.status() != psutil.STATUS_ZOMBIE:
                left.append(f"{pid} {' '.join(p.cmdline())[:120]}")
        except psutil.Error:
            pass
    return left


def _kill_tree(pid: int, seen: dict[int, float]) -> None:
    for q in seen:
        try:
            os.kill(q, signal.SIGKILL)
        except OSError:
            pass
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass


def signal_all(pid: int, signum: int) -> None:
    """Send ``signum`` to ``pid`` and every process below it (a launcher's ranks run in sessions of their own, so
    ``killpg`` of the launcher's group does not reach them)."""
    try:
        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return
    for p in procs:
        try:
            p.send_signal(signum)
        except psutil.Error:
            pass


def torchrun(processes: int) -> list[str]:
    """``torchrun`` with ``processes`` ranks on this machine (a free port; gloo on a CPU), as a launcher for
    :func:`run_apo`: each rank runs the installed console script."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [
        str(Path(sys.executable).parent / "torchrun"),
        "--nproc_per_node",
        str(processes),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(port),
    ]


def metric_lines(run_dir: Path) -> int:
    """Lines of ``run_dir/metrics.jsonl`` (0 without it)."""
    path = Path(run_dir) / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def last_step_time(run_dir: Path) -> float:
    """``time`` of the last line of ``run_dir/metrics.jsonl``: when the last optimizer step was logged."""
    import json

    return json.loads((Path(run_dir) / "metrics.jsonl").read_text().splitlines()[-1])["time"]
