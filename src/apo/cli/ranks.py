"""The processes of one ``apo`` command launched by ``torchrun`` or ``accelerate launch``: who speaks, who writes, and
how they agree.

A launcher starts one process per rank, each running the whole command. Every rank trains (TRL and accelerate share
the work); the run folder is rank 0's alone: it takes the run lock, writes ``config.yaml``, ``metrics.jsonl``, the
evaluations, ``final/`` and ``summary.json``, and prints. The other ranks follow the same path and print nothing of
their own (a failure that only they meet inside an :func:`agreed` block still prints its line; outside one, a failure
is taken to be met by every rank alike and said by rank 0).

- :func:`rank`, :func:`world_size`, :func:`is_main`: read from the launcher's ``RANK`` / ``WORLD_SIZE``, so they are
  right before the process group exists (a config that fails to parse is said once, by rank 0).
- :func:`broadcast`, :func:`gather`, :func:`sum_over_ranks`: collectives over accelerate's process group (the one
  ``TrainingArguments`` starts, gloo on a CPU); with one process they return their input.
- :func:`agreed`: a block that every rank runs, after which every rank knows whether any rank raised: a rank that
  did not raise raises :class:`PeerFailed` (exit status of the failing rank, nothing printed), so that no rank waits
  for ever in a collective that a failed rank will never reach.
- :func:`leave`: how a process that joined a process group ends, without the interpreter's teardown (see there).

Every exchange is one ``all_gather_object`` of ``(failure code or None, payload)``: a failed rank's exchange at the end
of an :func:`agreed` block may meet another rank's :func:`gather` or :func:`broadcast` inside the block (the failed
rank left the block early), and that rank then raises :class:`PeerFailed` at once instead of taking the code for
data. Collectives that are not this module's (TRL's barriers, DDP's wrapping) cannot be paired so: a rank that fails
while another waits in one of those ends when the process group times out (``ddp_timeout``), or when the launcher
ends the ranks.

This module imports neither TRL nor the other CLI modules.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any, NoReturn


def rank() -> int:
    """This process's global rank (``RANK``, set by ``torchrun`` and ``accelerate launch``; 0 without a launcher)."""
    return int(os.environ.get("RANK", "0") or 0)


def world_size() -> int:
    """The number of processes of the command (``WORLD_SIZE``; 1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def is_main() -> bool:
    """Whether this process speaks and writes the run folder (rank 0)."""
    return rank() == 0


def group_started() -> bool:
    """Whether this process has joined a ``torch.distributed`` process group (without importing torch)."""
    dist = sys.modules.get("torch.distributed")
    return bool(dist is not None and dist.is_available() and dist.is_initialized())


def leave(code: int) -> NoReturn:
    """End this process with exit status ``code``: run the ``atexit`` handlers (logging's flush, trackers'
    ``finish``, ``weakref.finalize`` callbacks), flush stdout and stderr, then ``os._exit(code)``, skipping the
    interpreter's teardown.

    Why: a gloo worker thread drops its reference to a finished collective after the caller has its result, and
    dropping the last reference to a tensor that Python created takes the GIL. When that happens while the
    interpreter is finalizing, the thread is ended inside C++ and the process aborts, "terminate called without an
    active exception" (SIGABRT, seen in about 1 exit in 8 of a 2-process CPU run under load). Calling
    ``torch.distributed.destroy_process_group()`` first does not help: DDP's reducer keeps the group alive, and its
    destructor then joins that worker while holding the GIL the worker waits for (a hang, 4 exits in 20). Without
    the teardown neither can happen; every file this package writes is closed before, and the handlers still run.
    """
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def _group() -> bool:
    if world_size() <= 1:
        return False
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(
            f"WORLD_SIZE={world_size()} but no process group: build the run's config (TrainingArguments starts "
            "accelerate's) before a collective"
        )
    return True


def _exchange(code: int | None, payload: Any) -> list[tuple[int | None, Any]]:
    import torch.distributed as dist

    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, (code, payload))
    return out


def gather(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank; :class:`PeerFailed` when another rank sent the failure
    of an :func:`agreed` block instead."""
    if not _group():
        return [obj]
    out = _exchange(None, obj)
    codes = [code for code, _ in out if code is not None]
    if codes:
        raise PeerFailed(codes[0])
    return [payload for _, payload in out]


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (any picklable object; an exchange like :func:`gather`'s)."""
    return gather(obj if is_main() else None)[0]


def sum_over_ranks(values: tuple[int, ...]) -> tuple[int, ...]:
    """The element-wise sum over ranks of a tuple of integers (each rank's counters, e.g. rewards scored)."""
    return tuple(sum(col) for col in zip(*gather(tuple(values)), strict=True))


class PeerFailed(Exception):
    """Another rank failed in a block every rank runs (:func:`agreed`); that rank said why. ``code``: the exit status
    to end with, silently."""

    def __init__(self, code: int):
        super().__init__(f"another process of this command failed (exit status {code})")
        self.code = code


@contextlib.contextmanager
def agreed(code_of=lambda e: 1) -> Iterator[None]:
    """Run the block on every rank, then exchange whether each raised: the rank that raised re-raises its exception;
    the others raise :class:`PeerFailed` with ``code_of(exception)`` of the lowest failing rank (``code_of`` maps an
    exception to the exit status it gives, evaluated on the failing rank). With one process: the block alone."""
    error: BaseException | None = None
    try:
        yield
    except BaseException as e:  # re-raised below, after the other ranks know
        error = e
    # a PeerFailed from inside the block already met the failed rank's exchange: no second one
    if world_size() > 1 and not isinstance(error, PeerFailed):
        codes = [code for code, _ in _exchange(None if error is None else int(code_of(error)), None)]
        failed = [r for r, c in enumerate(codes) if c is not None]
        if error is None and failed:
            raise PeerFailed(codes[failed[0]])
        if error is not None:
            with contextlib.suppress(AttributeError, TypeError):
                error.apo_speaks = failed[0] == rank()  # the lowest failing rank says it, once
    if error is not None:
        raise error


def speaks(error: BaseException) -> bool:
    """Whether this process prints the line of ``error``: the lowest rank that met it in an :func:`agreed` block, or
    else rank 0 (a failure every rank meets alike, such as a config that does not parse, is said once)."""
    return bool(getattr(error, "apo_speaks", is_main()))
