"""What every ``apo`` process shares: logging setup, children that die with their parent, and clean stops on signals.

- :func:`setup`: logging and warnings of an ``apo`` process (the command, and each run process of ``apo compare``).
- :func:`die_with_parent`: Linux ``PR_SET_PDEATHSIG``: the calling process gets ``SIGKILL`` when the thread that
  started it ends, whatever the reason (``SIGKILL`` included). :func:`children_die_with_this_process` applies it to
  every child forked from the main thread of this process from then on (``os.register_at_fork``), so a worker that
  some library forks (the reward worker, a data loader) cannot outlive a killed run. Elsewhere than Linux both are
  no-ops.
- :class:`StopSignals`: the first ``SIGINT`` / ``SIGTERM`` / ``SIGHUP`` asks the run to stop at the next
  optimizer-step boundary (the training loop polls :attr:`StopSignals.requested`); a second one ends the process at
  once (``os._exit(128 + signum)``), after one line on stderr.
- :class:`RunStopped`: raised once a run has stopped on a signal; ``code`` is the exit status (129 for ``SIGHUP``,
  130 for ``SIGINT``, 143 for ``SIGTERM``: ``128 + signum``, the shell's convention) and the message is the one line
  to print.

This module imports neither ``apo.cli.main`` nor TRL: the CLI modules import it, never the other way round.
"""

from __future__ import annotations

import collections
import logging
import os
import signal
import sys
import threading
import warnings

from apo.cli import ranks

PR_SET_PDEATHSIG = 1


def setup() -> None:
    """Logging and warnings of an ``apo`` process (the command, and each run process of ``apo compare``)."""
    # transformers' renaming of gradient_checkpointing -> activation_checkpointing warns on every TRL config; not
    # actionable for a user of this command.
    warnings.filterwarnings("ignore", message=r".*(gradient|is_gradient)_checkpointing.*", category=FutureWarning)
    # in a launch of several processes, one speaks (apo.cli.ranks): the others log warnings and errors only
    logging.basicConfig(
        level=logging.INFO if ranks.is_main() else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )


def die_with_parent(parent_pid: int | None = None) -> bool:
    """Ask the kernel to ``SIGKILL`` this process when its parent thread ends (Linux ``prctl(PR_SET_PDEATHSIG)``).

    ``parent_pid``: the parent's pid as the parent knew it; if the parent is already gone (``os.getppid()`` differs),
    the process exits at once, closing the race between ``fork`` and this call. Returns whether the request was made
    (``False`` elsewhere than Linux or without libc). Only that: a grader or reward worker also takes the default
    signal actions and a process group of its own (:func:`apo.tasks.bounded.become_child_of`)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)
    return True


_fork_state = {"parent": None, "main_thread": False, "installed": False}


def _before_fork() -> None:
    _fork_state["parent"] = os.getpid()
    _fork_state["main_thread"] = threading.current_thread() is threading.main_thread()


def _after_fork_in_child() -> None:
    # PR_SET_PDEATHSIG fires when the forking *thread* ends: only children forked from the main thread get it, so a
    # child forked from a short-lived helper thread is not killed when that thread returns.
    if _fork_state["main_thread"]:
        die_with_parent(_fork_state["parent"])


def children_die_with_this_process() -> None:
    """From now on, every child forked (without exec) from this process's main thread dies with this process (see
    :func:`die_with_parent`). Idempotent. ``subprocess`` children are not covered (their fork runs no Python): start
    them with ``preexec_fn=die_with_parent`` or have them call :func:`die_with_parent` themselves."""
    if _fork_state["installed"] or not hasattr(os, "register_at_fork"):
        return
    os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)
    _fork_state["installed"] = True


class RunStopped(Exception):
    """A run stopped on a signal; ``str(self)`` is the one line to print, ``code`` the exit status."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


SIGNAL_NAMES = {signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM"}
if hasattr(signal, "SIGHUP"):  # a closed terminal or `kill -HUP`: stop as on SIGTERM (exit 129)
    SIGNAL_NAMES[signal.SIGHUP] = "SIGHUP"

_installed: collections.Counter[int] = collections.Counter()  # signal -> active StopSignals handling it (nested)


def _default_signals_in_child() -> None:
    # A forked child (a reward worker, a data loader) must not inherit the run's graceful stop handler: it would
    # ignore the SIGTERM that ends it, and whoever waits for it would wait for ever.
    for sig in [s for s, n in _installed.items() if n > 0]:
        try:
            signal.signal(sig, signal.SIG_DFL)
        except (ValueError, OSError):  # not the main thread of the child: nothing Python-level runs there
            pass
    _installed.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_default_signals_in_child)


class StopSignals:
    """Context manager: while active, the first ``SIGINT`` / ``SIGTERM`` / ``SIGHUP`` sets :attr:`signum` (the run
    stops at the next step boundary); a second ends the process at once with ``128 + signum`` after printing
    ``urgent_line`` (``{signal}`` in it: the second signal's name).
    Outside the main thread (where Python cannot set handlers) it does nothing. Handlers are restored on exit; a
    process forked meanwhile starts with the default action for these signals (``os.register_at_fork``)."""

    def __init__(self, urgent_line: str = "apo: stopped at once by a second {signal}"):
        self.signum: int | None = None
        self.urgent_line = urgent_line
        self._saved: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def code(self) -> int:
        return 128 + int(self.signum or 0)

    @property
    def name(self) -> str:
        return SIGNAL_NAMES.get(self.signum, str(self.signum))

    def _handle(self, signum, frame) -> None:
        main = ranks.is_main()  # a launcher signals every rank: rank 0 says it
        if self.signum is not None:
            # on a line of its own: the progress bar may have left the cursor mid-line (it redraws with \r)
            line = self.urgent_line.format(signal=SIGNAL_NAMES.get(signum, signum))
            if main:
                print("\n" + line, file=sys.stderr, flush=True)
            os._exit(128 + signum)
        self.signum = signum
        if main:
            logging.getLogger("apo").warning(
                "%s received: stopping at the next step boundary (send it again to stop at once)", self.name
            )

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNAL_NAMES:
                self._saved[sig] = signal.signal(sig, self._handle)
                _installed[sig] += 1
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)
            _installed[sig] -= 1  # an outer StopSignals (apo compare around its runs) still counts
        self._saved.clear()
