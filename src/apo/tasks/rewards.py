"""Reward functions with TRL's signature ``fn(completions, **columns) -> list[float]``, bounded in time, and
``load_reward``.

``completions`` are strings, or (conversational prompts) lists of messages ``[{"role": "assistant", "content": ...}]``;
both are accepted. Dataset columns arrive as keyword lists with one entry per completion (``answer=[...]``,
``solution=[...]``); TRL also passes ``prompts``, ``completion_ids``, ``trainer_state``, ``log_extra`` and
``log_metric``.

- ``arithmetic_reward``: 1.0 when the first number of the completion equals the integer ``answer`` (``122.9`` is not
  122), else 0.0, or with ``partial_credit = c > 0`` a wrong integer answer scores ``c`` times its fraction of digits
  right (:func:`digits_right`). Plain Python on the text, linear in its length: no time limit needed.
- ``math_reward``: 1.0 when the extracted answer (``answer_format``: ``boxed | final | auto``; :mod:`.grading`) is
  equivalent to the gold answer, else 0.0. A restated question, an unclosed ``<think>``, an empty gold answer and an
  answer too large to verify score 0.0.
- ``reasoning_gym_reward``: 1.0 when reasoning-gym's own checker gives the extracted answer full credit.

Time bound: ``math_reward`` and ``reasoning_gym_reward`` decide what they can in this process (size guards, exact
comparison of plain numbers) and run math-verify / reasoning-gym's checker in a grader process of their own
(:func:`apo.tasks.bounded.bounded_map`) that is killed after ``timeout_s`` seconds per completion (default
``DEFAULT_TIMEOUT_S`` = 5 s; ``load_reward(..., timeout_s=...)``), plus the start of that process (about a second) on
first use and after a completion that runs over. This holds when they are called directly, from a thread, from a
forked or spawned process and inside a trainer; no signals are used. A completion that runs over scores 0.0; each
call logs one warning that counts the completions scored 0.0 for a reason other than being wrong.

``safe_reward(fn, timeout_s)`` (:mod:`.bounded`) additionally runs any reward in a worker process that turns a raising
or hanging reward into 0.0 scores; the CLI wraps every reward in it.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import logging
import math
from collections.abc import Callable

from apo.tasks.bounded import SafeReward, bounded_map, safe_reward
from apo.tasks.grading import (
    ANSWER_FORMATS,
    check_answer_format,
    completion_text,
    extract_answer,
    extract_free_answer,
    first_integer,
    first_number,
    gold_answer,
    last_boxed,
    last_number,
    math_equal,
    parse_number,
    prompt_text,
    quick_equal,
    restates,
    too_large,
)
from apo.tasks.grading import after_thinking as _after_thinking

logger = logging.getLogger(__name__)

RewardFn = Callable[..., list]

DEFAULT_TIMEOUT_S = 5.0
"""Seconds math-verify or reasoning-gym's checker may take per completion before it scores 0.0."""

TRL_KWARGS = ("prompts", "completions", "completion_ids", "trainer_state", "log_extra", "log_metric")
"""Keyword arguments TRL passes to every reward function, besides the dataset columns."""

__all__ = [
    "ANSWER_FORMATS",
    "DEFAULT_TIMEOUT_S",
    "REWARDS",
    "SafeReward",
    "arithmetic_reward",
    "check_partial_credit",
    "check_reward_signature",
    "completion_text",
    "digits_right",
    "extract_answer",
    "extract_free_answer",
    "first_integer",
    "gold_answer",
    "last_boxed",
    "last_number",
    "load_reward",
    "math_equal",
    "math_reward",
    "reasoning_gym_reward",
    "safe_reward",
]


def _columns(name: str, columns: dict, n: int) -> list:
    values = columns.get(name)
    if values is None:
        raise ValueError(f"reward needs a '{name}' column; got columns {sorted(columns)}")
    if len(values) != n:
        raise ValueError(f"column '{name}' has {len(values)} entries for {n} completions")
    return list(values)


def _prompts(prompts, n: int) -> list[str]:
    if prompts is None or len(prompts) != n:
        return [""] * n
    return [prompt_text(p) for p in prompts]


def _warn(name: str, n: int, zeros: dict[str, list[int]]) -> None:
    """One warning per call for the completions scored 0.0 for a reason other than a wrong answer."""
    if zeros:
        detail = "; ".join(f"{r}: completions {idx[:10]}{'...' if len(idx) > 10 else ''}" for r, idx in zeros.items())
        logger.warning("%s: %d/%d completions scored 0.0 (%s)", name, sum(map(len, zeros.values())), n, detail)


def digits_right(pred: int, gold: int) -> float:
    """Fraction of digits right, aligned at the units digit: ``#{i : d_i(pred) = d_i(gold)} / max(len(pred),
    len(gold))`` over the decimal digits ``d_i`` counted from the right, of ``|pred|`` and ``|gold|``; 0.0 when the
    signs differ. In [0, 1], 1.0 exactly when ``pred == gold``. ``digits_right(85, 95) = 1/2`` (a dropped carry),
    ``digits_right(95, 195) = 2/3``, ``digits_right(5, 95) = 1/2``."""
    if (pred < 0) != (gold < 0):
        return 0.0
    a, b = str(abs(pred))[::-1], str(abs(gold))[::-1]
    return sum(x == y for x, y in zip(a, b, strict=False)) / max(len(a), len(b))


def check_partial_credit(partial_credit: float) -> float:
    """``partial_credit`` as a float, checked to be in [0, 1] (a wrong answer must not outscore a right one).

    Raises:
        ValueError: ``partial_credit=1.5: must be in [0, 1] ...``, naming the config key.
    """
    value = float(partial_credit)
    if not 0.0 <= value <= 1.0:
        raise ValueError(
            f"partial_credit={partial_credit!r}: must be in [0, 1] (the most a wrong answer scores; a right one "
            "scores 1); set config key partial_credit"
        )
    return value


def arithmetic_reward(
    completions: list,
    answer: list | None = None,
    *,
    answer_format: str | None = None,
    partial_credit: float = 0.0,
    **columns,
) -> list[float]:
    """1.0 where the answer of a completion equals the integer in the ``answer`` column, else 0.0; with
    ``partial_credit = c > 0``, a wrong answer that is an integer scores ``c * digits_right(pred, gold)`` (in
    ``[0, c]``; non-integers, missing and too-large answers score 0.0), so the reward of a group has many levels
    instead of two. A right answer still scores 1.0 and every wrong one at most ``c``.

    The answer is the first number of the completion (``answer_format=None``, the tiny model's format: it answers
    first; repeating ``37+58=`` reads 37), or ``extract_answer(text, answer_format)``. Numbers compare exactly:
    ``122.9`` and ``122.0`` are numbers, so 122.9 != 122 and 122.0 == 122. A number of more than ``MAX_DIGITS``
    digits scores 0.0 (one warning), never an error. Text inside an unclosed ``<think>`` scores 0.0.

    Args:
        completions: N strings or N conversational completions.
        answer: N answer strings (``"95"``); required.
        answer_format: None (first number) or one of ``ANSWER_FORMATS``.
        partial_credit: most credit for a wrong answer, in [0, 1]; 0.0 (default) gives the binary reward.

    Raises:
        ValueError: no ``answer`` column, a length mismatch, an answer that is not an integer, a bad
            ``answer_format``, ``partial_credit`` outside [0, 1].
    """
    check_answer_format(answer_format)
    partial_credit = check_partial_credit(partial_credit)
    answers = _columns("answer", {"answer": answer, **columns}, len(completions))
    out, zeros = [], {}
    for i, (completion, gold) in enumerate(zip(completions, answers, strict=True)):
        gold_int = first_integer(str(gold).strip())
        if gold_int is None:
            raise ValueError(f"arithmetic_reward: answer {gold!r} is not an integer")
        text = _after_thinking(completion_text(completion))
        if text is None:
            out.append(0.0)
            continue
        pred = first_number(text) if answer_format is None else extract_answer(text, answer_format)
        if pred is not None and too_large(pred):
            zeros.setdefault(f"too large to verify ({too_large(pred)})", []).append(i)
            out.append(0.0)
            continue
        value = None if pred is None else parse_number(pred)
        if value is not None and value == gold_int:
            out.append(1.0)
        elif partial_credit > 0.0 and value is not None and value.denominator == 1:
            out.append(partial_credit * digits_right(int(value), gold_int))
        else:
            out.append(0.0)
    _warn("arithmetic_reward", len(completions), zeros)
    return out


def math_reward(
    completions: list,
    solution: list | None = None,
    answer: list | None = None,
    *,
    prompts: list | None = None,
    answer_format: str | None = None,
    timeout_s: float | None = None,
    **columns,
) -> list[float]:
    """1.0 where the extracted answer of a completion is equivalent to the gold answer, else 0.0.

    The completion's answer is ``extract_answer(text, answer_format, gold=gold)`` (default ``"auto"``; the gold
    chooses between the last box and the run of boxes, and whether a final math span comes before the last number);
    the gold answer is the ``answer`` column if present (text after ``####``), else the last ``\\boxed{}`` (or the
    run of boxes that ends it) of the ``solution`` column.
    Scores 0.0: no answer; a ``<think>`` never closed; an empty or missing (None, NaN) gold answer (never credited:
    reject such rows when loading data); an answer or gold ``too_large`` to verify; an answer that restates the
    prompt's expression (``prompts``, passed by TRL). Against a gold answer that is a plain number
    (``grading.parse_number``) the answer must state that number (``grading.stated_value``, exact, in this process:
    ``x = 5``, ``5 \\text{ cm}``, ``\\frac{1}{2}`` for 0.5), so an expression of it scores 0.0 (``grading.unworked``:
    ``6 \\times 8`` for 48, ``\\dbinom{8}{4}`` for 70, ``\\frac{6}{8}``, ``3 \\pm 1``).
    Equivalence: ``grading.quick_equal`` in this process (which applies that rule), else math-verify in the grader
    process, at most ``timeout_s`` seconds (default ``DEFAULT_TIMEOUT_S``) per completion.

    Args:
        completions: N strings or N conversational completions.
        solution: N MATH-style solutions, or
        answer: N answers.
        prompts: N prompts (strings or messages), for the restated-question rule; optional.
        answer_format: None (``"auto"``) or one of ``ANSWER_FORMATS``.
        timeout_s: seconds per completion for math-verify (None: ``DEFAULT_TIMEOUT_S``).

    Raises:
        ValueError: neither column, a length mismatch, a bad ``answer_format`` or ``timeout_s``.
        RuntimeError: the grader process cannot start (``safe_reward`` turns this into 0.0 scores).
    """
    check_answer_format(answer_format)
    fmt = answer_format or "auto"
    n = len(completions)
    if answer is not None:
        golds = [_gold(answer=a) for a in _columns("answer", {"answer": answer}, n)]
    elif solution is not None:
        golds = [_gold(solution=s) for s in _columns("solution", {"solution": solution}, n)]
    else:
        raise ValueError(f"math_reward needs a 'solution' or an 'answer' column; got columns {sorted(columns)}")
    prompt_texts = _prompts(prompts, n)
    out = [0.0] * n
    zeros: dict[str, list[int]] = {}
    pending: dict[tuple[str, str], list[int]] = {}
    for i, (completion, gold) in enumerate(zip(completions, golds, strict=True)):
        pred = extract_answer(completion_text(completion), fmt, gold=gold or None)
        if pred is None:
            continue
        pred = pred.strip()
        if not gold:
            zeros.setdefault("empty or missing gold answer", []).append(i)
            continue
        reason = too_large(pred) or too_large(gold)
        if reason:
            zeros.setdefault(f"too large to verify ({reason})", []).append(i)
            continue
        if restates(pred, prompt_texts[i], gold):
            continue
        quick = quick_equal(gold, pred)  # decides every plain-number gold (the number stated) in process
        if quick is not None:
            out[i] = float(quick)
        else:
            pending.setdefault((gold, pred), []).append(i)
    if pending:
        pairs = list(pending)
        results = bounded_map(
            "apo.tasks.grading:verify_latex",
            pairs,
            _timeout(timeout_s),
            preload=("math_verify", "apo.tasks.grading:warm_up"),
        )
        for pair, (ok, value) in zip(pairs, results, strict=True):
            for i in pending[pair]:
                if ok:
                    out[i] = float(bool(value))
                else:
                    zeros.setdefault(str(value), []).append(i)
    _warn("math_reward", n, zeros)
    return out


def _gold(**column) -> str:
    """``gold_answer`` of one row's ``answer`` or ``solution``; "" (no credit) for a missing one (None or NaN)."""
    (value,) = column.values()
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return gold_answer(**column)


def _timeout(timeout_s: float | None) -> float:
    t = DEFAULT_TIMEOUT_S if timeout_s is None else timeout_s
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not t > 0:
        raise ValueError(f"timeout_s={timeout_s!r}: must be a number of seconds > 0")
    return float(t)


def reasoning_gym_reward(
    completions: list,
    rg_entry: list | None = None,
    *,
    answer_format: str | None = None,
    timeout_s: float | None = None,
    **columns,
) -> list[float]:
    """1.0 where reasoning-gym's own checker gives the extracted answer full credit, else 0.0.

    reasoning-gym's ``score_answer`` gives partial credit (``"170"`` for 17 scores 0.67, an answer with spaces 0.5),
    so the reward is ``score == 1.0`` on the stripped answer. The answer is ``extract_free_answer`` of the text after
    thinking (``answer_format`` None, ``"final"`` or ``"auto"``), or the last box only (``"boxed"``); an unclosed
    ``<think>`` scores 0.0. The checker runs in the grader process, at most ``timeout_s`` seconds per completion.

    Args:
        completions: N strings or N conversational completions.
        rg_entry: N items as JSON strings (the ``rg_entry`` column of ``load_task("reasoning-gym:...")``).
        answer_format: None or one of ``ANSWER_FORMATS``.
        timeout_s: seconds per completion for the checker (None: ``DEFAULT_TIMEOUT_S``).

    Raises:
        ValueError: no ``rg_entry`` column, a length mismatch, a bad ``answer_format`` or ``timeout_s``.
    """
    check_answer_format(answer_format)
    entries = _columns("rg_entry", {"rg_entry": rg_entry, **columns}, len(completions))
    items, index = [], []
    out = [0.0] * len(completions)
    for i, (completion, raw) in enumerate(zip(completions, entries, strict=True)):
        text = _after_thinking(completion_text(completion))
        if text is None:
            continue
        pred = last_boxed(text) if answer_format == "boxed" else extract_free_answer(text)
        if pred is None:
            continue
        entry = json.loads(raw) if isinstance(raw, str) else raw
        items.append((entry["metadata"]["source_dataset"], pred.strip(), entry))
        index.append(i)
    zeros: dict[str, list[int]] = {}
    results = bounded_map("apo.tasks.grading:rg_score", items, _timeout(timeout_s), preload=("reasoning_gym",))
    for i, (ok, value) in zip(index, results, strict=True):
        if ok:
            out[i] = 1.0 if value == 1.0 else 0.0
        else:
            zeros.setdefault(str(value), []).append(i)
    _warn("reasoning_gym_reward", len(completions), zeros)
    return out


REWARDS: dict[str, RewardFn] = {
    "arithmetic": arithmetic_reward,
    "math": math_reward,
    "reasoning-gym": reasoning_gym_reward,
}


def check_reward_signature(fn: RewardFn, name: str, columns: list[str] | None = None) -> None:
    """Raise a one-line ``ValueError`` naming the reward when TRL cannot call ``fn``.

    TRL calls ``fn(prompts=..., completions=..., completion_ids=..., trainer_state=..., log_extra=..., log_metric=...,
    **dataset_columns)``, all by keyword: ``fn`` needs ``**kwargs`` (or a parameter for each of those), must take
    ``completions`` by keyword, and (when ``columns`` is given) must not require an argument that is neither a TRL
    keyword nor a column."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return  # builtins and C callables: cannot be checked
    params = sig.parameters
    has_var_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())
    by_keyword = {k for k, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    if "completions" not in by_keyword and not has_var_kw:
        raise ValueError(
            f"reward={name!r}: signature {sig} has no 'completions' parameter; TRL calls it with completions=..."
        )
    if not has_var_kw:
        missing = [k for k in TRL_KWARGS if k not in by_keyword]
        if missing:
            raise ValueError(
                f"reward={name!r}: signature {sig} cannot take TRL's keyword arguments {missing} and the dataset "
                "columns; add **kwargs"
            )
    required = [
        k
        for k, p in params.items()
        if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY, p.POSITIONAL_ONLY)
    ]
    positional_only = [k for k, p in params.items() if p.kind is p.POSITIONAL_ONLY and p.default is p.empty]
    if positional_only:
        raise ValueError(
            f"reward={name!r}: signature {sig} has positional-only {positional_only}; TRL passes keywords"
        )
    if columns is not None:
        absent = [k for k in required if k not in TRL_KWARGS and k not in columns]
        if absent:
            raise ValueError(
                f"reward={name!r}: needs the columns {absent}, which the data do not have (columns: {sorted(columns)})"
            )


def load_reward(
    spec: str | RewardFn,
    *,
    answer_format: str | None = None,
    timeout_s: float | None = None,
    columns: list[str] | None = None,
    partial_credit: float | None = None,
) -> RewardFn:
    """A reward function from a registered name (``"arithmetic"``, ``"math"``, ``"reasoning-gym"``), an import path
    ``"package.module:function"``, or a callable, checked against TRL's calling convention
    (``check_reward_signature``).

    ``answer_format``, ``timeout_s`` and ``partial_credit``, when given, are bound into the reward (a
    ``functools.partial`` that keeps the reward's ``__name__``); the reward must take them as keywords (the shipped
    ``math`` and ``reasoning-gym`` take the first two, ``arithmetic`` takes ``answer_format`` and
    ``partial_credit``). Without them a registered reward is returned as is.

    Raises:
        ValueError (one line, naming the reward or the setting): an unknown name (the message lists the valid names),
            an import path that does not resolve to a callable, a signature TRL cannot call, a bad ``answer_format``,
            or an option the reward does not take.
    """
    check_answer_format(answer_format)
    if callable(spec):
        fn, name = spec, getattr(spec, "__name__", type(spec).__name__)
    elif not isinstance(spec, str):
        raise ValueError(f"reward={spec!r}: expected a name {sorted(REWARDS)} or 'package.module:function'")
    elif spec in REWARDS:
        fn, name = REWARDS[spec], spec
    elif ":" in spec:
        module_name, _, attr = spec.partition(":")
        try:
            obj = importlib.import_module(module_name)
            for part in attr.split("."):
                obj = getattr(obj, part)
        except Exception as e:  # noqa: BLE001 - any import failure is a bad setting
            raise ValueError(f"reward={spec!r}: cannot import it ({type(e).__name__}: {e})") from e
        if not callable(obj):
            raise ValueError(f"reward={spec!r}: {attr} is not callable")
        fn, name = obj, spec
    else:
        raise ValueError(
            f"reward={spec!r}: unknown name; valid names are {sorted(REWARDS)} or 'package.module:function'"
        )
    check_reward_signature(fn, name, columns)
    given = (("answer_format", answer_format), ("timeout_s", timeout_s), ("partial_credit", partial_credit))
    options = {k: v for k, v in given if v is not None}
    if not options:
        return fn
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}
    for key in options:
        if key not in params:
            raise ValueError(
                f"reward={name!r} takes no {key}; remove {key}={options[key]!r} or use a reward that does"
            )
    if "timeout_s" in options:
        _timeout(options["timeout_s"])
    if "partial_credit" in options:
        check_partial_credit(options["partial_credit"])
    return functools.update_wrapper(functools.partial(fn, **options), fn)
