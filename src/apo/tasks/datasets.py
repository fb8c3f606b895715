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
  Reward: ``math``. Every row must have a gold answer (a non-empty ``answer``, else a ``solution`` with a non-empty
  ``\\boxed{}``) and a non-empty problem: a file with such rows is refused, naming them.

Held-out data: the ``train`` and ``eval`` splits never share a question.

- a single file is split into two disjoint parts: its distinct problems (after the ``level``/``type`` filters) are
  permuted with ``split_seed`` (default 0, independent of the draw ``seed``) and the first ``eval_fraction`` of them
  (default 0.1, at least one) are held out; the sizes are logged. ``whole_file=True`` uses every row instead, for a
  file named as evaluation data or a training file whose evaluation data come from elsewhere.
- a folder or hub id has its own splits (``eval`` reads ``eval``, else ``test``).
- ``arith``: a seeded partition of all problems (``eval_fraction``, ``split_seed``; :mod:`apo.tasks.arithmetic`).
- ``reasoning-gym``: each question belongs to one side by a keyed hash of its text (:func:`_side`).

Prompts: with a tokenizer that has a chat template, the prompt is conversational (``[{"role": "user", "content":
...}]``) and TRL applies the template (with ``chat_template_kwargs``, e.g. ``{"enable_thinking": False}`` for
Qwen3); otherwise it is a plain string (for ``arith``, the bare ``"37+58="`` that the tiny model was trained on).
:func:`render_prompts` renders them exactly as TRL does, for code that generates outside the trainer (``apo eval``).
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
SPLIT_OPTIONS = {"eval_fraction": 0.1, "split_seed": 0}
"""Options (and defaults) of the train / held-out split of a single MATH-style file."""
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


def render_prompts(tokenizer, prompts: list, chat_template_kwargs: dict | None = None) -> tuple[list[str], bool]:
    """``(texts, add_special_tokens)``: the prompts as the text TRL's ``GRPOTrainer`` feeds the model.

    Conversational prompts (message lists) go through ``tokenizer.apply_chat_template(add_generation_prompt=True,
    **chat_template_kwargs)``, as TRL does with ``GRPOConfig.chat_template_kwargs`` (for Qwen3,
    ``{"enable_thinking": False}`` appends an empty ``<think>\n\n</think>\n\n`` block to the generation prompt);
    the rendered text already holds the special tokens, so ``add_special_tokens`` is False. Plain string prompts are
    returned as they are, to be tokenized with the tokenizer's special tokens (True), as TRL does.
    """
    kwargs = dict(chat_template_kwargs or {})
    if prompts and isinstance(prompts[0], list):
        return tokenizer.apply_chat_template(prompts, add_generation_prompt=True, tokenize=False, **kwargs), False
    return list(prompts), True


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
    whole_file: bool = False,
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
        whole_file: a single MATH-style file: every row for ``split`` instead of its train or held-out part (see
            the module docstring). No effect on folders, hub ids and generated tasks, which have their own splits.
        **kwargs: arith: ``digits``, ``eval_fraction``, ``split_seed``; reasoning-gym: the generator's config; a
            single MATH-style file: ``eval_fraction`` (in (0, 1), default 0.1), ``split_seed`` (default 0).

    Returns:
        ``datasets.Dataset``.

    Raises:
        ValueError: an unknown split or task, unknown keyword arguments, missing columns, a filter on a column that
            does not exist, a filter that keeps no rows, rows without a problem or gold answer (named), or a
            single file too small to split.
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
    unknown = set(kwargs) - set(SPLIT_OPTIONS)
    if unknown:
        raise ValueError(
            f"task={name_or_path!r}: unexpected options {sorted(unknown)}; valid for MATH-style data: "
            f"{sorted(SPLIT_OPTIONS)}"
        )
    holdout = None if whole_file else {**SPLIT_OPTIONS, **kwargs}
    return _load_math(name_or_path, split, n, seed, chat, template, level, type, holdout)


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
    """``(dataset, single_file, source)``: the rows of ``split``, whether they come from one file holding every split,
    and where they were read (the file, or the hub split)."""
    import datasets

    path = Path(os.path.expanduser(name_or_path))
    if path.is_file():
        fmt = _FILE_SUFFIXES.get(path.suffix)
        if fmt is None:
            raise ValueError(f"task={name_or_path!r}: unsupported file type; use one of {sorted(_FILE_SUFFIXES)}")
        return datasets.load_dataset(fmt, data_files=str(path), split="train"), True, str(path)
    if path.is_dir():
        for name in (split, "test" if split == "eval" else split):
            for suffix, fmt in _FILE_SUFFIXES.items():
                f = path / f"{name}{suffix}"
                if f.is_file():
                    return datasets.load_dataset(fmt, data_files=str(f), split="train"), False, str(f)
        raise ValueError(f"task={name_or_path!r}: folder has no {split}.jsonl / {split}.parquet")
    if name_or_path.startswith((".", "/", "~")) or "/" not in name_or_path:
        raise ValueError(
            f"task={name_or_path!r}: not a known task (arith, arith:<ops>, reasoning-gym:<generator>), not an "
            "existing file or folder, and not a hub id (owner/name)"
        )
    try:  # hub id: needs network access
        return datasets.load_dataset(name_or_path, split=split), False, f"{name_or_path} [{split}]"
    except ValueError:
        if split != "eval":
            raise
        return datasets.load_dataset(name_or_path, split="test"), False, f"{name_or_path} [test]"


def _blank(value) -> bool:
    return value is None or not str(value).strip()


def _bad_rows(ds, key: str) -> list[int]:
    """Indices of rows without a problem or a gold answer: ``answer`` (text after ``####``) when the column exists,
    else the last ``\\boxed{}`` of ``solution`` (what ``apo.tasks.rewards.math_reward`` compares against)."""
    from apo.tasks.rewards import last_boxed

    problems = ds[key]
    if "answer" in ds.column_names:
        golds = [None if a is None else str(a).split("####")[-1] for a in ds["answer"]]
    else:
        golds = [None if s is None else last_boxed(str(s)) for s in ds["solution"]]
    return [i for i, (p, g) in enumerate(zip(problems, golds, strict=True)) if _blank(p) or _blank(g)]


def _holdout_split(name: str, problems: list, split: str, eval_fraction, split_seed) -> list[int]:
    """Row indices of ``split`` in a single file: distinct problem texts permuted with ``split_seed``, the first
    ``max(1, round(eval_fraction * n_distinct))`` held out, so no problem text is on both sides."""
    import random

    if isinstance(eval_fraction, bool) or not isinstance(eval_fraction, (int, float)) or not 0 < eval_fraction < 1:
        raise ValueError(f"task={name!r}: task_options.eval_fraction={eval_fraction!r} must be in (0, 1)")
    if isinstance(split_seed, bool) or not isinstance(split_seed, int):
        raise ValueError(f"task={name!r}: task_options.split_seed={split_seed!r} must be an integer")
    distinct = list(dict.fromkeys(problems))
    if len(distinct) < 2:
        raise ValueError(
            f"task={name!r}: {len(distinct)} distinct problem(s) cannot be split into train and held-out parts; "
            "name evaluation data with eval_task=<file>"
        )
    random.Random(split_seed).shuffle(distinct)
    n_eval = min(len(distinct) - 1, max(1, round(eval_fraction * len(distinct))))
    held_out = set(distinct[:n_eval])
    rows = [i for i, p in enumerate(problems) if (p in held_out) == (split == "eval")]
    logger.info(
        "task %s: %d distinct problems split into %d train / %d held out (eval_fraction=%g, split_seed=%d); "
        "%s: %d rows",
        name,
        len(distinct),
        len(distinct) - n_eval,
        n_eval,
        eval_fraction,
        split_seed,
        split,
        len(rows),
    )
    return rows


def _load_math(name, split, n, seed, chat, template, level, type_, holdout):
    ds, single_file, source = _read_math_source(name, split)
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
    rows = list(range(len(ds)))  # indices into the source, kept so that errors name the file's rows
    if level is not None:
        if "level" not in cols:
            raise ValueError(f"task={name!r}: level={level!r} given but the data has no 'level' column")
        want = level if isinstance(level, str) and level.startswith("Level") else f"Level {level}"
        levels = ds["level"]
        rows = [i for i in rows if str(levels[i]) == want]
    if type_ is not None:
        if "type" not in cols:
            raise ValueError(f"task={name!r}: type={type_!r} given but the data has no 'type' column")
        types_ = ds["type"]
        rows = [i for i in rows if types_[i] == type_]
    if not rows:
        raise ValueError(f"task={name!r}: no rows left after level={level!r}, type={type_!r}")
    ds = ds.select(rows)
    bad = _bad_rows(ds, key)
    if bad:
        shown = ", ".join(str(rows[i] + 1) for i in bad[:10]) + (", ..." if len(bad) > 10 else "")
        raise ValueError(
            f"task={name!r}: {source}: {len(bad)} of {len(ds)} rows have an empty or missing "
            f"{key} or gold answer ('answer', or a \\boxed{{}} in 'solution'): row {shown} (1-based, the line of a "
            ".jsonl file); fix or remove them"
        )
    if single_file and holdout is not None:
        ds = ds.select(_holdout_split(name, ds[key], split, holdout["eval_fraction"], holdout["split_seed"]))
    ds = ds.shuffle(seed=seed)
    if n is not None:
        if n > len(ds):
            logger.warning("task %s: n=%d asked for, only %d rows; using all", name, n, len(ds))
        ds = ds.select(range(min(n, len(ds))))
    kind_template = template or TEMPLATES["math"]["chat" if chat else "plain"]
    if key == "question" and template is None:
        kind_template = kind_template.replace("{problem}", "{question}")
    return ds.map(lambda r: {"prompt": _render("math", {**r}, chat, kind_template)})
