"""One ``apo`` process per run directory: an advisory lock on ``<run>/.apo.lock`` that holds the holder's pid.

Two ``apo train`` on one ``output_dir`` would both append to ``metrics.jsonl`` and overwrite each other's
checkpoints; the second is refused with the first one's pid. The lock is ``fcntl.flock`` on an open file, so the
kernel releases it when the holder dies, however (``SIGKILL`` included): a stale file never blocks a resume. The file
is removed on release; a process that locked a file another one removed meanwhile tries again. Elsewhere than on
POSIX systems the lock is not taken.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

LOCK_NAME = ".apo.lock"


class RunDirBusy(RuntimeError):
    """Another live process holds the run directory; ``pid`` is its pid (``None`` if it did not say)."""

    def __init__(self, run_dir: Path, pid: int | None):
        who = f"apo process {pid}" if pid else "another apo process"
        super().__init__(
            f"output_dir {str(run_dir)!r} is in use by {who}: one run per output_dir at a time; wait for it to end, "
            "or set output_dir=<another folder>"
        )
        self.pid = pid


def holder(run_dir: Path) -> int | None:
    """The pid written in ``run_dir``'s lock file if a live process holds the lock (``-1`` when it holds it but has
    not written its pid yet), else ``None``."""
    try:
        import fcntl
    except ImportError:
        return None
    path = Path(run_dir) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 32, 0).decode(errors="replace").strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


class RunLock:
    """The lock of one run directory held by this process (see the module docstring)."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.fd: int | None = None

    def acquire(self) -> RunLock:
        """Take the lock (``run_dir`` must exist); raises :class:`RunDirBusy` naming the holder's pid."""
        try:
            import fcntl
        except ImportError:
            return self
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                text = os.pread(fd, 32, 0).decode(errors="replace").strip()
                os.close(fd)
                raise RunDirBusy(self.run_dir, int(text) if text.isdigit() else None) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the holder removed the file between our open and our lock: try the new one
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        """Remove the lock file and drop the lock (idempotent)."""
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self.fd)
        self.fd = None
