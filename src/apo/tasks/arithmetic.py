"""A generated arithmetic task: ``"37+58="`` -> ``"95"``.

Problems are ``a <op> b`` with operands of exactly ``digits`` digits (``0..9`` when ``digits == 1``). For ``-`` the
operands are ordered so that the result is never negative, so every answer is a plain digit string.

Train / held-out split: every problem string is assigned to one side by a keyed hash (``blake2b`` of the problem and
``split_seed``), independently of how many rows are drawn. The two sides therefore never share a problem, whatever
``n`` and ``seed`` are, and the held-out side is the same for every caller that uses the same ``split_seed``
(the tiny-model SFT, the RL run and its evaluation all agree on it).

Rows follow TRL's format: ``{"prompt": "37+58=", "answer": "95"}``.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import asdict, dataclass

OPS = ("+", "-", "*")
SPLITS = ("train", "eval")


@dataclass(frozen=True)
class ArithmeticTask:
    """Which problems the task generates and how they are split."""

    ops: tuple[str, ...] = ("+",)
    """Operators drawn uniformly per problem; each of ``+``, ``-``, ``*``."""
    digits: int = 2
    """Number of digits of each operand (1 means 0..9, d >= 2 means 10**(d-1) .. 10**d - 1)."""
    eval_fraction: float = 0.1
    """Fraction of all problems that belong to the held-out ``eval`` side."""
    split_seed: int = 0
    """Key of the hash that assigns a problem to a side; change it only to get a different split."""

    def __post_init__(self):
        if not self.ops or any(op not in OPS for op in self.ops):
            raise ValueError(f"ArithmeticTask.ops={self.ops!r}: each op must be one of {OPS}")
        if not 1 <= self.digits <= 9:
            raise ValueError(f"ArithmeticTask.digits={self.digits}: must be in 1..9")
        if not 0.0 < self.eval_fraction < 1.0:
            raise ValueError(f"ArithmeticTask.eval_fraction={self.eval_fraction}: must be in (0, 1)")

    def to_dict(self) -> dict:
        """The settings as a JSON-able dict (used in checkpoint metadata)."""
        d = asdict(self)
        d["ops"] = list(self.ops)
        return d

    @property
    def operand_range(self) -> tuple[int, int]:
        """Inclusive ``(low, high)`` range of an operand."""
        low = 0 if self.digits == 1 else 10 ** (self.digits - 1)
        return low, 10**self.digits - 1

    @property
    def n_problems(self) -> int:
        """Number of distinct problems (both sides together)."""
        low, high = self.operand_range
        n = high - low + 1
        # "-" orders its operands, so a-b and b-a are one problem.
        return sum(n * (n + 1) // 2 if op == "-" else n * n for op in self.ops)


def format_problem(a: int, op: str, b: int) -> dict:
    """One row: ``{"prompt": "a<op>b=", "answer": str(result)}``."""
    if op == "+":
        result = a + b
    elif op == "-":
        a, b = max(a, b), min(a, b)
        result = a - b
    elif op == "*":
        result = a * b
    else:
        raise ValueError(f"op={op!r}: must be one of {OPS}")
    return {"prompt": f"{a}{op}{b}=", "answer": str(result)}


def split_of(prompt: str, task: ArithmeticTask) -> str:
    """The side (``"train"`` or ``"eval"``) a problem belongs to; a pure function of the prompt and ``split_seed``."""
    h = hashlib.blake2b(prompt.encode(), digest_size=8, key=str(task.split_seed).encode()).digest()
    return "eval" if int.from_bytes(h, "big") / 2**64 < task.eval_fraction else "train"


def all_problems(task: ArithmeticTask, split: str) -> list[dict]:
    """Every problem of one side, in a fixed order. Only for small spaces (at most 10**6 problems)."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: must be one of {SPLITS}")
    if task.n_problems > 10**6:
        raise ValueError(f"ArithmeticTask(digits={task.digits}) has {task.n_problems} problems: too many to list")
    low, high = task.operand_range
    rows = []
    for op in task.ops:
        for a in range(low, high + 1):
            for b in range(low, high + 1):
                if op == "-" and a < b:
                    continue
                row = format_problem(a, op, b)
                if split_of(row["prompt"], task) == split:
                    rows.append(row)
    return rows


def generate(task: ArithmeticTask, split: str, n: int, seed: int = 0, unique: bool | None = None) -> list[dict]:
    """``n`` rows of one side of the split, deterministic given ``(task, split, n, seed)``.

    Args:
        task: the problem space and split.
        split: ``"train"`` or ``"eval"``.
        n: number of rows.
        seed: seed of the draw (not of the split: the split depends only on ``task.split_seed``).
        unique: draw without replacement. Defaults to True for ``eval`` (distinct held-out prompts) and False for
            ``train`` (an endless stream for SFT/RL).

    Returns:
        A list of ``{"prompt": str, "answer": str}``.

    Raises:
        ValueError: unknown split, ``n < 0``, or more unique rows asked for than the side holds.
    """
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: must be one of {SPLITS}")
    if n < 0:
        raise ValueError(f"n={n}: must be >= 0")
    unique = (split == "eval") if unique is None else unique
    rng = random.Random(f"{seed}/{split}")
    if task.n_problems <= 200_000:
        pool = all_problems(task, split)
        if unique:
            if n > len(pool):
                raise ValueError(
                    f"n={n} unique {split} problems asked for, but ArithmeticTask(ops={task.ops}, "
                    f"digits={task.digits}, eval_fraction={task.eval_fraction}) has only {len(pool)} on that side"
                )
            return rng.sample(pool, n)
        return [rng.choice(pool) for _ in range(n)]
    # Large space: rejection-sample problems until n fall on the requested side.
    low, high = task.operand_range
    rows, seen = [], set()
    while len(rows) < n:
        row = format_problem(rng.randint(low, high), rng.choice(task.ops), rng.randint(low, high))
        if split_of(row["prompt"], task) != split or (unique and row["prompt"] in seen):
            continue
        seen.add(row["prompt"])
        rows.append(row)
    return rows
