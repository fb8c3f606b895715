"""Reward functions with TRL's signature ``fn(completions, **columns) -> list[float]``, and a wrapper that keeps a
failing reward from stopping training.

``completions`` are strings, or (conversational prompts) lists of messages ``[{"role": "assistant", "content": ...}]``;
both are accepted. Dataset columns arrive as keyword lists with one entry per completion (``answer=[...]``,
``solution=[...]``); TRL also passes ``prompts``, ``completion_ids``, ``trainer_state``, ``log_extra`` and
``log_metric``.

- ``arithmetic_reward``: 1.0 when the first integer of the completion equals the ``answer`` column, else 0.0.
- ``math_reward``: ``math-verify`` equivalence between the gold answer and the LAST ``\\boxed{...}`` of the completion,
  or, when there is none, the LAST number of the completion. Extracting first matters: math-verify on the raw text
  parses a bare ``"59 + 63"`` as an expression equal to 122, which rewards a model that repeats the question.
- ``safe_reward(fn, timeout_s)``: runs ``fn`` in a persistent worker process, one completion at a time, and scores 0.0
  (with a logged warning) each completion whose scoring raises, exceeds ``timeout_s``, or returns None/NaN/inf.
"""

from __future__ import annotations

import functools
import importlib
import logging
import math
import multiprocessing as mp
import pickle
import re
from collections.abc import Callable

logger = logging.getLogger(__name__)

RewardFn = Callable[..., list]

_INT_RE = re.compile(r"-?\d{1,3}(?:,\d{3})+(?!\d)|-?\d+")
_NUMBER_RE = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?(?![\d,])|-?\d+(?:\.\d+)?(?:/\d+)?")


def completion_text(completion) -> str:
    """The text of one completion: the string itself, or the concatenated ``content`` of the messages of a
    conversational completion (a list of ``{"role", "content"}`` dicts; only ``assistant`` messages if any)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        completion = [completion]
    if isinstance(completion, (list, tuple)):
        msgs = [m for m in completion if isinstance(m, dict)]
        assistant = [m for m in msgs if m.get("role") == "assistant"] or msgs
        return "".join(_content_text(m.get("content", "")) for m in assistant)
    raise TypeError(f"completion of type {type(completion).__name__}: expected a string or a list of messages")


def _content_text(content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content blocks: [{"type": "text", "text": ...}, ...]
        return "".join(b.get("text", "") for b in content if isinstance(b, dict))
    return "" if content is None else str(content)


def _columns(name: str, columns: dict, n: int) -> list:
    values = columns.get(name)
    if values is None:
        raise ValueError(f"reward needs a '{name}' column; got columns {sorted(columns)}")
    if len(values) != n:
        raise ValueError(f"column '{name}' has {len(values)} entries for {n} completions")
    return list(values)


def first_integer(text: str) -> int | None:
    """The first integer in ``text`` (``"1,234"`` counts as 1234), or None."""
    m = _INT_RE.search(text)
    return int(m.group().replace(",", "")) if m else None


def arithmetic_reward(completions: list, answer: list | None = None, **columns) -> list[float]:
    """1.0 where the first integer of a completion equals the integer in the ``answer`` column, else 0.0.

    Args:
        completions: N strings or N conversational completions.
        answer: N answer strings (``"95"``); required.

    Raises:
        ValueError: no ``answer`` column, a length mismatch, or an answer that is not an integer.
    """
    answers = _columns("answer", {"answer": answer, **columns}, len(completions))
    out = []
    for completion, gold in zip(completions, answers, strict=True):
        gold_int = first_integer(str(gold).strip())
        if gold_int is None:
            raise ValueError(f"arithmetic_reward: answer {gold!r} is not an integer")
        pred = first_integer(completion_text(completion))
        out.append(1.0 if pred is not None and pred == gold_int else 0.0)
    return out


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) in ``text``, braces matched, or None."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    while start >= 0:
        i = text.find("{", start)
        if i >= 0 and text[start:i].strip() in ("\\boxed", "\\fbox"):
            depth = 0
            for j in range(i, len(text)):
                if text[j] == "{":
                    depth += 1
                elif text[j] == "}":
                    depth -= 1
                    if depth == 0:
                        return text[i + 1 : j]
        # Unclosed or malformed: try the previous occurrence.
        start = max(text.rfind("\\boxed", 0, start), text.rfind("\\fbox", 0, start))
    return None


def last_number(text: str) -> str | None:
    """The last number in ``text`` (integer, decimal or ``a/b``; thousands commas removed), or None."""
    matches = _NUMBER_RE.findall(text)
    return matches[-1].replace(",", "") if matches else None


def extract_answer(text: str) -> str | None:
    """What ``math_reward`` compares: the last ``\\boxed{}`` content, else the last number, else None."""
    boxed = last_boxed(text)
    return boxed if boxed is not None else last_number(text)


def gold_answer(solution: str | None = None, answer: str | None = None) -> str:
    """The reference answer: ``answer`` if given (text after ``####`` for GSM8K style), else the last
    ``\\boxed{}`` of a MATH-style ``solution`` (else the whole solution)."""
    if answer is not None:
        answer = str(answer)
        return answer.split("####")[-1].strip()
    if solution is None:
        raise ValueError("math_reward needs a 'solution' or an 'answer' column")
    boxed = last_boxed(solution)
    return (boxed if boxed is not None else solution).strip()


@functools.lru_cache(maxsize=4096)
def _parse_gold(gold: str):
    from math_verify import parse

    return parse(f"\\boxed{{{gold}}}", parsing_timeout=None)


def math_equal(gold: str, pred: str) -> bool:
    """math-verify equivalence of two extracted answers (``"\\frac{1}{2}"`` vs ``"0.5"``).

    Called with ``parsing_timeout=None`` / ``timeout_seconds=None``: math-verify's own timeouts use ``signal.alarm``,
    which fails off the main thread; wrap the reward in ``safe_reward`` to bound its time.
    """
    from math_verify import parse, verify

    gold_parsed = _parse_gold(gold)
    pred_parsed = parse(f"\\boxed{{{pred}}}", parsing_timeout=None)
    if not gold_parsed or not pred_parsed:
        return gold.strip() == pred.strip()
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=None))


def math_reward(completions: list, solution: list | None = None, answer: list | None = None, **columns) -> list[float]:
    """1.0 where the extracted answer of a completion is equivalent (math-verify) to the gold answer, else 0.0.

    The completion's answer is its last ``\\boxed{}`` content, else its last number; a completion with neither
    scores 0.0. The gold answer is the ``answer`` column if present, else the last ``\\boxed{}`` of the
    ``solution`` column.

    Args:
        completions: N strings or N conversational completions.
        solution: N MATH-style solutions, or
        answer: N answers.

    Raises:
        ValueError: neither column, or a length mismatch.
    """
    n = len(completions)
    if answer is not None:
        golds = [gold_answer(answer=a) for a in _columns("answer", {"answer": answer}, n)]
    elif solution is not None:
        golds = [gold_answer(solution=s) for s in _columns("solution", {"solution": solution}, n)]
    else:
        raise ValueError(f"math_reward needs a 'solution' or an 'answer' column; got columns {sorted(columns)}")
    out = []
    for completion, gold in zip(completions, golds, strict=True):
        pred = extract_answer(completion_text(completion))
        out.append(1.0 if pred is not None and math_equal(gold, pred) else 0.0)
    return out


_ANSWER_RE = re.compile(r"answer\s*(?:is)?\s*[:=]?\s*(.+)", re.IGNORECASE)


def extract_free_answer(text: str) -> str:
    """The answer of a free-form completion: the last ``\\boxed{}`` content, else what follows the last
    ``Answer:`` on its line, else the last non-empty line; stripped."""
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed.strip()
    matches = list(_ANSWER_RE.finditer(text))
    if matches:
        return matches[-1].group(1).splitlines()[0].strip().rstrip(".")
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def reasoning_gym_reward(completions: list, rg_entry: list | None = None, **columns) -> list[float]:
    """1.0 where reasoning-gym's own checker gives the extracted answer full credit, else 0.0.

    reasoning-gym's ``score_answer`` gives partial credit (``"170"`` for 17 scores 0.67, an answer with spaces 0.5),
    so the reward is ``score == 1.0`` on the stripped answer of ``extract_free_answer``.

    Args:
        completions: N strings or N conversational completions.
        rg_entry: N items as JSON strings (the ``rg_entry`` column of ``load_task("reasoning-gym:...")``).

    Raises:
        ValueError: no ``rg_entry`` column or a length mismatch.
    """
    import json

    entries = _columns("rg_entry", {"rg_entry": rg_entry, **columns}, len(completions))
    out = []
    for completion, raw in zip(completions, entries, strict=True):
        entry = json.loads(raw) if isinstance(raw, str) else raw
        score_fn = _rg_score_fn(entry["metadata"]["source_dataset"])
        score = score_fn(extract_free_answer(completion_text(completion)), entry)
        out.append(1.0 if score == 1.0 else 0.0)
    return out


@functools.lru_cache(maxsize=64)
def _rg_score_fn(name: str):
    import reasoning_gym

    return reasoning_gym.get_score_answer_fn(name)


# ---------------------------------------------------------------------------------------------------------------------
# safe_reward


def _worker_main(conn, fn):
    """Worker loop: receive ``(completions, columns, per_completion)``, send ``("ok"|"err", index, payload)`` per
    chunk (one chunk per completion, or one for the batch). ``fn`` is the function itself under ``fork`` and its
    pickle under ``spawn``. No logging here: a lock copied by ``fork`` could be held."""
    if isinstance(fn, bytes):
        fn = pickle.loads(fn)
    conn.send(("ready", -1, None))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, KeyboardInterrupt):
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
        start_timeout_s: float = 120.0,
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
        self._fn_bytes = None
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

    # -- worker management -------------------------------------------------------------------------------------------
    def _start(self):
        ctx = mp.get_context(self.mp_context)
        parent, child = ctx.Pipe()
        proc = ctx.Process(
            target=_worker_main,
            args=(child, self.fn if self.mp_context == "fork" else self._fn_bytes),
            daemon=True,
            name=f"safe_reward:{self.__name__}",
        )
        proc.start()
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
        self._proc, self._conn = proc, parent

    def close(self):
        """Stop the worker process (a later call starts a new one)."""
        if self._proc is not None:
            try:
                self._conn.send(None)
            except Exception:
                pass
            self._proc.join(1)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join(1)
            self._conn.close()
        self._proc = self._conn = None

    def _kill(self):
        if self._proc is not None:
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

    With ``timeout_s`` set, ``fn`` runs in one persistent worker process, started on the first call. ``mp_context``
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


REWARDS: dict[str, RewardFn] = {
    "arithmetic": arithmetic_reward,
    "math": math_reward,
    "reasoning-gym": reasoning_gym_reward,
}


def load_reward(spec: str | RewardFn) -> RewardFn:
    """A reward function from a registered name (``"arithmetic"``, ``"math"``), an import path
    ``"package.module:function"``, or a callable (returned as is).

    Raises:
        ValueError: an unknown name (the message lists the valid names), or an import path that does not resolve to
            a callable.
    """
    if callable(spec):
        return spec
    if not isinstance(spec, str):
        raise ValueError(f"reward={spec!r}: expected a name {sorted(REWARDS)} or 'package.module:function'")
    if spec in REWARDS:
        return REWARDS[spec]
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
        try:
            obj = importlib.import_module(module_name)
            for part in attr.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"reward={spec!r}: cannot import it ({type(e).__name__}: {e})") from e
        if not callable(obj):
            raise ValueError(f"reward={spec!r}: {attr} is not callable")
        return obj
    raise ValueError(f"reward={spec!r}: unknown name; valid names are {sorted(REWARDS)} or 'package.module:function'")
