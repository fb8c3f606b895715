"""Keeping a grader bounded: work in a process that can be killed, and that dies with its parent.

Two tools, both independent of what they run:

- ``bounded_map(target, items, timeout_s)``: calls the module-level function ``target`` (``"package.module:name"``) on
  each item in a persistent grader process of this process (one per target, started on first use, a fresh one after
  a fork), at most ``timeout_s`` seconds per item; an item that runs over, or crashes the process, costs only itself:
  the process is killed and the remaining items go to a new one. Safe from any thread, a forked or spawned process,
  a daemon process (it uses ``subprocess``, not ``multiprocessing``) and inside a trainer: no signals.
- ``safe_reward(fn, timeout_s)`` / ``SafeReward``: runs a whole reward function in a worker process and scores 0.0
  (with one logged warning per call) each completion whose scoring raises, runs over or returns None/NaN/inf.

Every child exits when its parent dies, however it dies (SIGKILL included): it is started from a long-lived thread
of the parent and asks the kernel for ``SIGKILL`` when that thread's process goes (Linux ``PR_SET_PDEATHSIG``; the
starting thread lives as long as the process), closes its copy of the parent's end of the pipe so that it reads EOF,
and a watcher thread exits when the parent pid changes (other systems).
"""

from __future__ import annotations

import atexit
import importlib
import logging
import math
import multiprocessing as mp
import os
import pickle
import queue
import signal
import socket
import subprocess
import sys
import threading
import weakref
from collections.abc import Callable
from multiprocessing.connection import Connection

logger = logging.getLogger(__name__)

RewardFn = Callable[..., list]

DEFAULT_START_TIMEOUT_S = 120.0
"""Seconds a grader or reward worker process may take to start (imports included)."""

CLOSE_TIMEOUT_S = 2.0
"""Seconds a grader or reward worker may take to exit when closed, before it is killed."""

CHILD_DEFAULT_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)
"""Signals a child process handles with the system's default action, whatever its parent installed."""

# ---------------------------------------------------------------------------------------------------------------------
# children that die with their parent


def become_child_of(parent_pid: int) -> None:
    """Make this process a grader or reward worker of ``parent_pid``: it exits as soon as ``parent_pid`` is no longer
    the parent (Linux: the kernel sends SIGKILL; elsewhere a watcher thread polls the parent pid every 0.2 s), with the
    default action for ``SIGINT``, ``SIGTERM`` and ``SIGHUP`` (a child forked from the ``apo`` command inherits its
    graceful stop handler, which would ignore the ``SIGTERM`` that ``close`` and ``multiprocessing``'s exit hook
    send, and the parent's join would wait for ever), in a process group of its own: a terminal's Ctrl-C or hang-up
    reaches the parent, which stops at a step boundary and still needs this child's scores, and the parent alone
    ends its children.

    More than :func:`apo.cli.process.die_with_parent`, which only asks for the parent-death signal (the ``apo``
    command's own run processes keep their signal handlers and process group)."""
    for sig in CHILD_DEFAULT_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    try:
        os.setpgid(0, 0)
    except OSError:  # already a group leader (started with process_group=0) or not allowed: keep the parent's group
        pass
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
        except Exception:  # noqa: BLE001 - the watcher thread below still works
            pass
    if os.getppid() != parent_pid:  # the parent died before prctl
        os._exit(0)

    def watch():
        import time

        while True:
            time.sleep(0.2)
            if os.getppid() != parent_pid:
                os._exit(0)

    threading.Thread(target=watch, daemon=True, name="apo-parent-watch").start()


class _Starter:
    """A daemon thread that lives as long as the process and starts every child: Linux sends the parent-death signal
    when the *thread* that started a child ends, so children are never started from short-lived threads."""

    def __init__(self):
        self.requests: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._loop, daemon=True, name="apo-process-starter")
        self.thread.start()

    def _loop(self):
        while True:
            fn, box, done = self.requests.get()
            try:
                box.append((True, fn()))
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
                box.append((False, e))
            done.set()

    def run(self, fn):
        if threading.current_thread() is self.thread:
            return fn()
        box, done = [], threading.Event()
        self.requests.put((fn, box, done))
        done.wait()
        ok, value = box[0]
        if not ok:
            raise value
        return value


_STARTER: _Starter | None = None
_STARTER_LOCK = threading.Lock()


def start_child(fn):
    """``fn()`` (which starts a child process) run on the process's starter thread; its result."""
    global _STARTER
    with _STARTER_LOCK:
        if _STARTER is None or not _STARTER.thread.is_alive():
            _STARTER = _Starter()
        starter = _STARTER
    return starter.run(fn)


# ---------------------------------------------------------------------------------------------------------------------
# bounded_map: a persistent grader process per target


def _serve(fd: int, parent_pid: int, target: str, preload: str) -> None:
    """The grader process: import ``target``, say ready, then answer ``("ok"|"err", index, value)`` per item of each
    batch ``list[tuple]`` received; exit on EOF or ``None``."""
    become_child_of(parent_pid)
    conn = Connection(fd)
    for name in filter(None, preload.split(",")):
        if ":" in name:
            _resolve(name)()  # a warm-up function
        else:
            importlib.import_module(name)
    fn = _resolve(target)
    conn.send(("ready", -1, None))
    while True:
        try:
            batch = conn.recv()
        except (EOFError, OSError, KeyboardInterrupt):
            return
        if batch is None:
            return
        for k, args in enumerate(batch):
            try:
                conn.send(("ok", k, fn(*args)))
            except BaseException as e:  # noqa: BLE001 - reported per item
                conn.send(("err", k, f"raised {type(e).__name__}: {str(e)[:200]}"))


def _resolve(target: str):
    module_name, _, attr = target.partition(":")
    obj = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


class _Grader:
    """One grader process (``subprocess``) for one target, with a socket to it."""

    def __init__(self, target: str, preload: tuple[str, ...], start_timeout_s: float):
        parent_sock, child_sock = socket.socketpair()
        src_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src_root, env.get("PYTHONPATH")) if p)
        code = (
            "import sys; from apo.tasks.bounded import _serve; _serve(*[int(a) for a in sys.argv[1:3]], *sys.argv[3:])"
        )
        args = [sys.executable, "-c", code, str(child_sock.fileno()), str(os.getpid()), target, ",".join(preload)]
        try:
            self.proc = start_child(
                lambda: subprocess.Popen(
                    args,
                    pass_fds=(child_sock.fileno(),),
                    env=env,
                    stdin=subprocess.DEVNULL,
                    # Python 3.11+; before, the child's become_child_of() calls setpgid itself
                    **({"process_group": 0} if sys.version_info >= (3, 11) else {}),
                )
            )
        finally:
            child_sock.close()
        self.conn = Connection(parent_sock.detach())
        if not self.conn.poll(start_timeout_s):
            self.kill()
            raise RuntimeError(f"grader process for {target} did not start within {start_timeout_s} s")
        try:
            tag = self.conn.recv()[0]
        except (EOFError, OSError):
            tag = None
        if tag != "ready":
            self.kill()
            raise RuntimeError(f"grader process for {target} failed to start (exit code {self.proc.poll()})")

    def kill(self):
        try:
            self.proc.kill()
            self.proc.wait(5)
        except Exception:  # noqa: BLE001
            pass
        try:
            self.conn.close()
        except Exception:  # noqa: BLE001
            pass


class _Pool:
    """The grader processes of this process, by target; replaced after a fork."""

    def __init__(self):
        self.pid = os.getpid()
        self.graders: dict[str, _Grader] = {}
        self.lock = threading.Lock()


_POOL: _Pool | None = None


def _pool() -> _Pool:
    global _POOL
    if _POOL is None or _POOL.pid != os.getpid():
        _POOL = _Pool()
    return _POOL


def _reset_after_fork():
    global _POOL, _STARTER, _STARTER_LOCK
    _POOL, _STARTER, _STARTER_LOCK = None, None, threading.Lock()


os.register_at_fork(after_in_child=_reset_after_fork)


def bounded_map(
    target: str,
    items: list[tuple],
    timeout_s: float,
    *,
    preload: tuple[str, ...] = (),
    start_timeout_s: float = DEFAULT_START_TIMEOUT_S,
) -> list[tuple[bool, object]]:
    """``target(*item)`` for each item, in this process's grader process for ``target``; per item ``(True, value)``,
    or ``(False, reason)`` when it raised, took more than ``timeout_s`` seconds or crashed the process.

    Bound: each item at most ``timeout_s`` seconds, plus the start of a grader process (``start_timeout_s``, about a
    second) on first use and after each item that runs over. ``preload`` names modules to import, and
    ``"module:function"`` warm-up functions to call, before the grader reports ready, so that their time is not
    charged to the first item.

    Raises:
        ValueError: ``timeout_s`` not > 0.
        RuntimeError: the grader process cannot start.
    """
    if not (isinstance(timeout_s, (int, float)) and timeout_s > 0):
        raise ValueError(f"timeout_s={timeout_s!r}: must be a number of seconds > 0")
    out: list[tuple[bool, object]] = [(False, "not scored")] * len(items)
    if not items:
        return out
    pool = _pool()
    with pool.lock:
        pending = 0
        while pending < len(items):
            grader = pool.graders.get(target)
            if grader is None or grader.proc.poll() is not None:
                grader = pool.graders[target] = _Grader(target, preload, start_timeout_s)
            offset = pending
            try:
                grader.conn.send(items[offset:])
            except (BrokenPipeError, OSError):
                grader.kill()
                pool.graders.pop(target, None)
                continue
            while pending < len(items):
                reason = None
                if not grader.conn.poll(timeout_s):
                    reason = f"timed out after {timeout_s} s"
                else:
                    try:
                        tag, k, value = grader.conn.recv()
                    except (EOFError, OSError):
                        reason = "grader process died"
                if reason is not None:
                    out[pending] = (False, reason)
                    grader.kill()
                    pool.graders.pop(target, None)
                    pending += 1
                    break
                assert k + offset == pending, (k, offset, pending)
                out[pending] = (tag == "ok", value)
                pending += 1
    return out


def close_graders() -> None:
    """Stop this process's grader processes (the next ``bounded_map`` starts new ones)."""
    pool = _pool()
    with pool.lock:
        for grader in pool.graders.values():
            try:
                grader.conn.send(None)
                grader.proc.wait(CLOSE_TIMEOUT_S)
            except Exception:  # noqa: BLE001
                pass
            grader.kill()
        pool.graders.clear()


def grader_pids() -> dict[str, int]:
    """``{target: pid}`` of this process's live grader processes."""
    return {t: g.proc.pid for t, g in _pool().graders.items() if g.proc.poll() is None}


# ---------------------------------------------------------------------------------------------------------------------
# safe_reward: a whole reward function in a worker process


def _worker_main(conn, fn, parent_pid, parent_end=None):
    """Worker loop: receive ``(completions, columns, per_completion)``, send ``("ok"|"err", index, payload)`` per
    chunk (one chunk per completion, or one for the batch). ``fn`` is the function itself under ``fork`` and its
    pickle under ``spawn``. ``parent_end`` (``fork`` only) is the parent's end of the pipe, closed here so that the
    parent's death reads as EOF. No logging here: a lock copied by ``fork`` could be held."""
    if parent_end is not None:
        parent_end.close()
    become_child_of(parent_pid)
    if isinstance(fn, bytes):
        fn = pickle.loads(fn)
    conn.send(("ready", -1, None))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError, KeyboardInterrupt):
            return
        if msg is None:
            return
        completions, columns, per_completion = msg
        n = len(completions)
        chunks = [(i, i + 1) for i in range(n)] if per_completion else [(0, n)]
        for k, (a, b) in enumerate(chunks):
            try:
                result = fn(completions[a:b], **{key: v[a:b] for key, v in columns.items()})
                payload = list(result) if result is not None else None
                conn.send(("ok", k, payload))
            except BaseException as e:  # noqa: BLE001 - everything the reward raises is reported, not fatal
                try:
                    conn.send(("err", k, f"raised {type(e).__name__}: {str(e)[:200]}"))
                except Exception:
                    return


class SafeReward:
    """A reward function that never stops training; see ``safe_reward``."""

    def __init__(
        self,
        fn: RewardFn,
        timeout_s: float | None = 10.0,
        per_completion: bool = True,
        start_timeout_s: float = DEFAULT_START_TIMEOUT_S,
        mp_context: str | None = None,
    ):
        self.fn = fn
        self.timeout_s = timeout_s
        self.per_completion = per_completion
        self.start_timeout_s = start_timeout_s
        self.mp_context = mp_context or ("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        self.__name__ = getattr(fn, "__name__", type(fn).__name__)
        self.__doc__ = getattr(fn, "__doc__", None)
        self.n_failed = 0
        self.n_scored = 0
        self._proc = None
        self._conn = None
        self._owner: int | None = None
        self._fn_bytes = None
        self.last_failure: str | None = None  # the reason of the last completion scored 0.0 for a failure
        _LIVE_REWARDS.add(self)
        if timeout_s is not None and timeout_s <= 0:
            raise ValueError(f"safe_reward timeout_s={timeout_s}: must be > 0 (or None for no worker)")
        if timeout_s is not None and self.mp_context != "fork":
            try:
                self._fn_bytes = pickle.dumps(fn)
            except Exception as e:
                raise ValueError(
                    f"safe_reward({self.__name__}): under mp_context={self.mp_context!r} the reward must be picklable "
                    f"(a module-level function or a functools.partial of one): {e}"
                ) from e

    @property
    def pid(self) -> int | None:
        """The worker process's pid (None before the first call and after ``close``)."""
        return None if self._proc is None else self._proc.pid

    # -- worker management -------------------------------------------------------------------------------------------
    def _start(self):
        ctx = mp.get_context(self.mp_context)
        parent, child = ctx.Pipe()
        fork = self.mp_context == "fork"
        proc = ctx.Process(
            target=_worker_main,
            args=(child, self.fn if fork else self._fn_bytes, os.getpid(), parent if fork else None),
            daemon=True,
            name=f"safe_reward:{self.__name__}",
        )
        start_child(proc.start)
        child.close()
        if not parent.poll(self.start_timeout_s):
            proc.kill()
            raise RuntimeError(f"safe_reward({self.__name__}): worker did not start within {self.start_timeout_s} s")
        try:
            tag = parent.recv()[0]
        except EOFError:
            tag = None
        if tag != "ready":
            proc.join(1)
            raise RuntimeError(
                f"safe_reward({self.__name__}): worker failed to start (exit code {proc.exitcode}); is the reward "
                "importable by module path?"
            )
        self._proc, self._conn, self._owner = proc, parent, os.getpid()

    def close(self):
        """Stop the worker process, within ``CLOSE_TIMEOUT_S`` seconds and then by ``SIGKILL`` (a later call starts
        a new one). Only the process that started the worker closes it (a forked copy of this object does not)."""
        if self._proc is not None and self._owner == os.getpid():
            try:
                self._conn.send(None)
            except Exception:
                pass
            self._proc.join(CLOSE_TIMEOUT_S)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join(CLOSE_TIMEOUT_S)
            self._conn.close()
        self._proc = self._conn = None

    def _kill(self):
        if self._proc is not None and self._owner == os.getpid():
            self._proc.kill()
            self._proc.join(5)
            self._conn.close()
        self._proc = self._conn = None

    def __del__(self):
        try:
            self._kill()
        except Exception:
            pass

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_proc"] = state["_conn"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        _LIVE_REWARDS.add(self)

    # -- scoring ---------------------------------------------------------------------------------------------------
    def __call__(self, completions: list, **columns) -> list[float]:
        n = len(completions)
        log_metric = columns.get("log_metric")
        # Only per-completion lists travel to the worker: trainer_state, log_extra and log_metric stay here.
        cols = {k: list(v) for k, v in columns.items() if isinstance(v, (list, tuple)) and len(v) == n}
        if self.timeout_s is None:
            scores, reasons = self._call_inline(completions, cols)
        else:
            scores, reasons = self._call_worker(list(completions), cols)
        out, failures = [], {}
        for i, (s, r) in enumerate(zip(scores, reasons, strict=True)):
            if r is None:
                r = _invalid(s)
            if r is not None:
                failures.setdefault(r, []).append(i)
                out.append(0.0)
            else:
                out.append(float(s))
        n_failed = sum(len(v) for v in failures.values())
        self.n_failed += n_failed
        self.n_scored += n
        if failures:
            self.last_failure = next(iter(failures))
            detail = "; ".join(
                f"{reason}: completions {idx[:10]}{'...' if len(idx) > 10 else ''}" for reason, idx in failures.items()
            )
            logger.warning("reward %s: %d/%d completions scored 0.0 (%s)", self.__name__, n_failed, n, detail)
        if callable(log_metric):
            log_metric(f"rewards/{self.__name__}/failed_frac", n_failed / max(n, 1))
        return out

    def _call_inline(self, completions, cols):
        try:
            result = self.fn(completions, **cols)
        except Exception as e:
            return [None] * len(completions), [f"raised {type(e).__name__}: {str(e)[:200]}"] * len(completions)
        return _spread(result, len(completions), 0, len(completions))

    def _call_worker(self, completions, cols):
        n = len(completions)
        scores, reasons = [None] * n, [None] * n
        chunks = [(i, i + 1) for i in range(n)] if self.per_completion else [(0, n)]
        pending = 0  # index of the first chunk not yet scored
        while pending < len(chunks):
            if self._proc is None:
                self._start()
            first = chunks[pending][0]
            try:
                self._conn.send((completions[first:], {k: v[first:] for k, v in cols.items()}, self.per_completion))
            except (BrokenPipeError, OSError):
                self._kill()
                continue
            offset = pending
            while pending < len(chunks):
                a, b = chunks[pending]
                if not self._conn.poll(self.timeout_s):
                    reason = f"timed out after {self.timeout_s} s"
                    tag = None
                else:
                    try:
                        tag, k, payload = self._conn.recv()
                    except (EOFError, OSError):
                        tag, reason = None, "worker process died"
                if tag is None:  # timeout or crash: this chunk fails, the rest go to a fresh worker
                    reasons[a:b] = [reason] * (b - a)
                    self._kill()
                    pending += 1
                    break
                assert k + offset == pending, (k, offset, pending)
                if tag == "err":
                    reasons[a:b] = [payload] * (b - a)
                else:
                    s, r = _spread(payload, b - a, a, b)
                    scores[a:b], reasons[a:b] = s, r
                pending += 1
        return scores, reasons


_LIVE_REWARDS: weakref.WeakSet[SafeReward] = weakref.WeakSet()


def close_children() -> None:
    """Stop every grader process and reward worker this process started, each within ``CLOSE_TIMEOUT_S`` seconds
    (then ``SIGKILL``). Called by the ``apo`` command when a command ends, and at interpreter exit (before
    ``multiprocessing``'s own exit hook, which would wait on a daemonic worker without a time limit)."""
    for reward in list(_LIVE_REWARDS):
        try:
            reward.close()
        except Exception:  # noqa: BLE001 - the others are still closed
            pass
    close_graders()


atexit.register(close_children)  # registered after multiprocessing's hook (imported above), so it runs first


def _spread(result, n: int, a: int, b: int) -> tuple[list, list]:
    """Check a reward's output for a chunk of ``n`` completions: ``(scores, reasons)`` with a reason per bad entry."""
    if result is None or len(result) != n:
        got = "None" if result is None else f"{len(result)} values"
        return [None] * n, [f"returned {got} for {n} completions"] * n
    return list(result), [None] * n


def _invalid(score) -> str | None:
    if score is None:
        return "returned None"
    try:
        x = float(score)
    except (TypeError, ValueError):
        return f"returned a non-number ({type(score).__name__})"
    if not math.isfinite(x):
        return f"returned {x}"
    return None


def safe_reward(
    fn: RewardFn, timeout_s: float | None = 10.0, per_completion: bool = True, mp_context: str | None = None
) -> SafeReward:
    """Wrap a reward function so that its failures cost a 0.0 score and a log line, never the training run.

    Each completion is scored 0.0, and a ``logging`` warning names the function and the reason, when the reward
    raises, returns None, NaN, inf or a wrong number of values, or exceeds ``timeout_s`` seconds. When TRL passes
    ``log_metric``, ``rewards/<name>/failed_frac`` is logged each call; ``.n_failed`` / ``.n_scored`` count totals.

    With ``timeout_s`` set, ``fn`` runs in one persistent worker process, started on the first call; it exits when
    this process dies, however (module docstring). ``mp_context``
    defaults to ``"fork"`` where available: any callable works (lambdas, functions of the ``__main__`` script), and a
    script without an ``if __name__ == "__main__"`` guard is not re-run, which ``"spawn"`` would do. The forked
    worker must not use torch's thread pools (reward code rarely does; a deadlock would show as timeouts).
    ``"spawn"`` needs a picklable, importable ``fn``. A call sends the whole batch in one
    message; the worker scores it one completion at a time (``per_completion=True``) and streams the scores back, so
    a timeout or crash costs only the completion being scored: the worker is killed and the rest of the batch goes
    to a fresh one. ``timeout_s`` bounds each completion (each batch if ``per_completion=False``). Only the
    per-completion list columns travel to the worker; ``trainer_state``, ``log_extra`` and ``log_metric`` do not.
    With ``timeout_s=None`` the reward runs in this process (exceptions and bad values are still caught).

    Raises:
        ValueError: ``timeout_s <= 0``, or (``spawn`` only) ``fn`` cannot be pickled.
    """
    return SafeReward(fn, timeout_s=timeout_s, per_completion=per_completion, mp_context=mp_context)


__all__ = [
    "SafeReward",
    "become_child_of",
    "bounded_map",
    "close_children",
    "close_graders",
    "grader_pids",
    "safe_reward",
    "start_child",
]
