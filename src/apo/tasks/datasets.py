"""Task datasets for training and evaluation: a ``datasets.Dataset`` with a ``prompt`` column plus answer columns.

Tasks (``load_task(name_or_path, ...)``):

- ``arith`` / ``arith:<ops>`` (e.g. ``arith:+-*``): the generated arithmetic task of ``apo.tasks.arithmetic``; columns
  ``prompt``, ``answer``. Reward: ``arithmetic``.
- ``reasoning-gym:<generator>`` (e.g. ``reasoning-gym:basic_arithmetic``; keyword arguments go to the generator's
  config): columns ``prompt``, ``question``, ``answer``, ``rg_entry`` (the item as JSON, for scoring). Train and eval
  are disjoint: each question belongs to one side by a hash of its text. Reward: ``reasoning-gym`` (binary).
- a local ``.jsonl`` / ``.json`` / ``.parquet`` file, a folder holding ``<split>.jsonl`` or ``<split>.parquet``, or a
  Hugging Face hub id (online only): MATH style with ``problem`` and ``solution`` columns, optionally filtered by
  ``level`` (3 or ``"Level 3"``) and ``type`` (``"Algebra"``). GSM8K style ``question`` / ``answer`` also works.
  Reward: ``math``.

Prompts: with a tokenizer that has a chat template, the prompt is conversational (``[{"role": "user", "content":
...}]``) and TRL applies the template; otherwise it is a plain string (for ``arith``, the bare ``"37+58="`` that the
tiny model was trained on).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from apo.tasks.arithmetic import ArithmeticTask, generate

logger = logging.getLogger(__name__)

SPLITS = ("train", "eval")
TEMPLATES = {
    "arith": {"plain": "{prompt}", "chat": "What is {expression}? Answer with just the final number."},
    "reasoning-gym": {"plain": "Question: {question}\nAnswer:", "chat": "{question}\nGive only the final answer."},
    "math": {
        "plain": "Problem: {problem}\nPut the final answer in \\boxed{{}}.\nSolution:",
        "chat": "{problem}\nPlease reason step by step, and put your final answer within \\boxed{{}}.",
    },
}
"""Prompt templates per task kind: ``plain`` for tokenizers without a chat template, ``chat`` for the user message."""
DEFAULT_N = {"arith": {"train": 10_000, "eval": None}, "reasoning-gym": {"train": 2_000, "eval": 200}}
DEFAULT_REWARDS = {"arith": "arithmetic", "reasoning-gym": "reasoning-gym", "math": "math"}
_FILE_SUFFIXES = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def task_kind(name_or_path: str) -> str:
    """``"arith"``, ``"reasoning-gym"`` or ``"math"`` (a file, folder or hub id)."""
    if name_or_path == "arith" or name_or_path.startswith("arith:"):
        return "arith"
    if name_or_path.startswith("reasoning-gym:"):
        return "reasoning-gym"
    return "math"


def default_reward(name_or_path: str) -> str:
    """The registered reward name (``apo.tasks.rewards.load_reward``) that scores a task."""
    return DEFAULT_REWARDS[task_kind(name_or_path)]


def has_chat_template(tokenizer) -> bool:
    """Whether prompts for this tokenizer should be conversational."""
    return bool(getattr(tokenizer, "chat_template", None))


def _render(kind: str, fields: dict, chat: bool, template: str | None):
    text = (template or TEMPLATES[kind]["chat" if chat else "plain"]).format(**fields)
    return [{"role": "user", "content": text}] if chat else text


def load_task(
    name_or_path: str,
    split: str = "train",
    n: int | None = None,
    seed: int = 0,
    tokenizer=None,
    *,
    template: str | None = None,
    level: int | str | None = None,
    type: str | None = None,
    **kwargs,
):
    """A task's dataset with a ``prompt`` column (string, or a conversational message list) and answer columns.

    Args:
        name_or_path: ``arith``, ``arith:<ops>``, ``reasoning-gym:<generator>``, a local MATH-style file or folder,
            or a hub id (see the module docstring).
        split: ``train`` or ``eval`` (for files and hub ids, ``eval`` reads the ``test`` split when there is no
            ``eval`` one).
        n: number of rows; None gives a default (arith: 10,000 train, the whole held-out side for eval;
            reasoning-gym: 2,000 / 200; files: all rows). Files and hub data are shuffled with ``seed`` first.
        seed: seed of the draw.
        tokenizer: decides plain vs conversational prompts (``tokenizer.chat_template``); None means plain.
        template: a ``str.format`` template overriding ``TEMPLATES`` (fields: arith ``prompt``, ``expression``;
            reasoning-gym ``question``; MATH ``problem``).
        level, type: MATH filters (``level=3`` keeps ``"Level 3"`` rows).
        **kwargs: arith: ``digits``, ``eval_fraction``, ``split_seed``; reasoning-gym: the generator's config.

    Returns:
        ``datasets.Dataset``.

    Raises:
        ValueError: an unknown split or task, unknown keyword arguments, missing columns, a filter on a column that
            does not exist, or a filter that keeps no rows.
    """
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: must be one of {SPLITS}")
    if n is not None and n < 0:
        raise ValueError(f"n={n}: must be >= 0")
    kind = task_kind(name_or_path)
    chat = has_chat_template(tokenizer)
    if kind != "math" and (level is not None or type is not None):
        raise ValueError(f"level/type filters apply to MATH-style data, not to task={name_or_path!r}")
    if kind == "arith":
        return _load_arith(name_or_path, split, n, seed, chat, template, kwargs)
    if kind == "reasoning-gym":
        return _load_reasoning_gym(name_or_path, split, n, seed, chat, template, kwargs)
    if kwargs:
        raise ValueError(f"task={name_or_path!r}: unexpected options {sorted(kwargs)}")
    return _load_math(name_or_path, split, n, seed, chat, template, level, type)


def _load_arith(name, split, n, seed, chat, template, kwargs):
    from datasets import Dataset

    ops = tuple(name.split(":", 1)[1]) if ":" in name else ("+",)
    allowed = {"digits", "eval_fraction", "split_seed"}
    if set(kwargs) - allowed:
        raise ValueError(f"task={name!r}: unknown options {sorted(set(kwargs) - allowed)}; valid: {sorted(allowed)}")
    task = ArithmeticTask(ops=ops, **kwargs)
    if n is None:
        n = DEFAULT_N["arith"][split]
    if n is None:  # the whole held-out side, in a seeded order
        from apo.tasks.arithmetic import all_problems

        n = len(all_problems(task, split))
    rows = generate(task, split, n, seed=seed)
    prompts = [
        _render("arith", {"prompt": r["prompt"], "expression": r["prompt"].rstrip("=")}, chat, template) for r in rows
    ]
    return Dataset.from_dict({"prompt": prompts, "answer": [r["answer"] for r in rows]})


def _side(text: str, seed_key: str = "rg") -> str:
    h = hashlib.blake2b(text.encode(), digest_size=8, key=seed_key.encode()).digest()
    return "eval" if int.from_bytes(h, "big") % 2 else "train"


def _load_reasoning_gym(name, split, n, seed, chat, template, kwargs):
    import reasoning_gym
    from datasets import Dataset

    generator = name.split(":", 1)[1]
    if n is None:
        n = DEFAULT_N["reasoning-gym"][split]
    size = max(16, 4 * n)
    try:
        # The split decides the draw seed; the hash of the question decides the side, so sides never share a question.
        ds = reasoning_gym.create_dataset(generator, seed=seed * 2 + (split == "eval"), size=size, **kwargs)
    except (ValueError, TypeError, KeyError) as e:
        raise ValueError(f"task={name!r} with options {kwargs}: reasoning-gym refused it: {e}") from e
    rows = []
    for i in range(size):
        entry = ds[i]
        if _side(entry["question"]) == split:
            rows.append(entry)
            if len(rows) == n:
                break
    if len(rows) < n:
        raise ValueError(
            f"task={name!r}: only {len(rows)} distinct {split} questions in {size} draws for n={n}; ask for fewer"
        )
    return Dataset.from_dict(
        {
            "prompt": [_render("reasoning-gym", {"question": e["question"]}, chat, template) for e in rows],
            "question": [e["question"] for e in rows],
            "answer": [str(e["answer"]) for e in rows],
            "rg_entry": [json.dumps(e, default=str) for e in rows],
        }
    )


def _read_math_source(name_or_path: str, split: str):
    import datasets

    path = Path(os.path.expanduser(name_or_path))
    if path.is_file():
        fmt = _FILE_SUFFIXES.get(path.suffix)
        if fmt is None:
            raise ValueError(f"task={name_or_path!r}: unsupported file type; use one of {sorted(_FILE_SUFFIXES)}")
        return datasets.load_dataset(fmt, data_files=str(path), split="train")
    if path.is_dir():
        for name in (split, "test" if split == "eval" else split):
            for suffix, fmt in _FILE_SUFFIXES.items():
                f = path / f"{name}{suffix}"
                if f.is_file():
                    return datasets.load_dataset(fmt, data_files=str(f), split="train")
        raise ValueError(f"task={name_or_path!r}: folder has no {split}.jsonl / {split}.parquet")
    if name_or_path.startswith((".", "/", "~")) or "/" not in name_or_path:
        raise ValueError(
            f"task={name_or_path!r}: not a known task (arith, arith:<ops>, reasoning-gym:<generator>), not an "
            "existing file or folder, and not a hub id (owner/name)"
        )
    try:  # hub id: needs network access
        return datasets.load_dataset(name_or_path, split=split)
    except ValueError:
        if split != "eval":
            raise
        return datasets.load_dataset(name_or_path, split="test")


def _load_math(name, split, n, seed, chat, template, level, type_):
    ds = _read_math_source(name, split)
    cols = set(ds.column_names)
    if {"problem", "solution"} <= cols:
        key = "problem"
    elif {"question", "answer"} <= cols:  # GSM8K style
        key = "question"
    else:
        raise ValueError(
            f"task={name!r}: needs 'problem' and 'solution' columns (MATH) or 'question' and 'answer' (GSM8K); "
            f"has {sorted(cols)}"
        )
    if level is not None:
        if "level" not in cols:
            raise ValueError(f"task={name!r}: level={level!r} given but the data has no 'level' column")
        want = level if isinstance(level, str) and level.startswith("Level") else f"Level {level}"
        ds = ds.filter(lambda r: str(r["level"]) == want)
    if type_ is not None:
        if "type" not in cols:
            raise ValueError(f"task={name!r}: type={type_!r} given but the data has no 'type' column")
        ds = ds.filter(lambda r: r["type"] == type_)
    if len(ds) == 0:
        raise ValueError(f"task={name!r}: no rows left after level={level!r}, type={type_!r}")
    ds = ds.shuffle(seed=seed)
    if n is not None:
        if n > len(ds):
            logger.warning("task %s: n=%d asked for, only %d rows; using all", name, n, len(ds))
        ds = ds.select(range(min(n, len(ds))))
    kind_template = template or TEMPLATES["math"]["chat" if chat else "plain"]
    if key == "question" and template is None:
        kind_template = kind_template.replace("{problem}", "{question}")
    return ds.map(lambda r: {"prompt": _render("math", {**r}, chat, kind_template)})
