"""A pre-imported ``apo`` process that forks one ``apo`` command per request (used by the fault-injection test).

Each request on stdin is a JSON line ``{"argv": [...], "log": path}``; the zygote forks, the child redirects its stdout
and stderr to ``log`` and runs :func:`apo.cli.main.main` (exactly as ``python -m apo.cli.main``, minus the import
time, which would dominate a test that starts a dozen processes), and the zygote answers with the child's pid. A line
``{"wait": pid}`` is answered with the child's exit status (``-N`` when killed by signal N). Children are real
processes: the test signals and kills them, and they fork their own workers.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil


class Zygote:
    """Client of ``fault_zygote.py``: ``start(argv, log) -> pid``, ``wait(pid) -> exit status``."""

    def __init__(self):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
        # the rewards of tests/fixtures by import path (reward=bad_rewards:slow)
        paths = [str(Path(__file__).with_name("fixtures")), env.get("PYTHONPATH", "")]
        env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("fault_zygote.py"))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert self.proc.stdout.readline().strip() == "ready"

    def _ask(self, req: dict) -> int:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        return int(self.proc.stdout.readline())

    def start(self, argv: list[str], log: Path) -> int:
        return self._ask({"argv": argv, "log": str(log)})

    def wait(self, pid: int) -> int:
        return self._ask({"wait": pid})

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    """The processes of ``procs`` still running (a zombie, dead but not reaped, counts as gone)."""
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def survivors(procs: list[psutil.Process], timeout: float = 10.0) -> list[psutil.Process]:
    deadline = time.time() + timeout
    while (left := alive(procs)) and time.time() < deadline:
        time.sleep(0.05)
    return left


def _child(argv: list[str], log: str, zygote: int) -> None:
    from apo.cli.process import die_with_parent

    die_with_parent(zygote)  # a test that dies leaves nothing running
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdin.close()
    import apo.cli.main

    code = 1
    try:
        code = apo.cli.main.main(argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def serve() -> None:
    import apo.cli.main  # noqa: F401 - preload what `apo train` imports
    import apo.cli.run  # noqa: F401
    import apo.integrations.trl.trainer  # noqa: F401
    import apo.tasks.datasets  # noqa: F401
    import apo.tasks.rewards  # noqa: F401

    print("ready", flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        if "wait" in req:
            _, status = os.waitpid(int(req["wait"]), 0)
            print(os.waitstatus_to_exitcode(status), flush=True)
            continue
        zygote = os.getpid()
        pid = os.fork()
        if pid == 0:
            _child(req["argv"], req["log"], zygote)
        print(pid, flush=True)


if __name__ == "__main__":
    serve()
