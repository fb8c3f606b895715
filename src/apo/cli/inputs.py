"""The inputs of a run or an evaluation, loaded from its config and checked before the model's weights: the reward,
the tokenizer, the training and evaluation prompts, then the policy. A loader's ``ValueError`` names the setting
(``model=``, ``task=``, ``reward=``) and becomes a one-line :class:`~apo.cli.config.ConfigError`; any other failure
to load is turned into one by :func:`loading_inputs`.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from apo.cli import config as cfglib

logger = logging.getLogger("apo")


def load_tokenizer(cfg):
    """``(path, tokenizer)`` for ``cfg.model`` (its files prepared offline when it is ``tiny-arith`` or
    ``smollm2``): the tokenizer alone decides how prompts are rendered, so data can be checked before the weights
    load."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    from apo.tasks.models import resolve_model

    hf_logging.disable_progress_bar()  # the run has its own progress bar

    from apo.cli.lora import adapter_base

    # An adapter folder (a LoRA run's final/) holds its tokenizer; its weights load on its base (load_policy).
    path = (
        cfg.model
        if adapter_base(cfg.model) is not None
        else resolve_model(cfg.model, os.path.expanduser(cfg.cache_dir))
    )
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return path, tokenizer


def load_policy(cfg):
    """``(model, tokenizer)`` for ``cfg.model`` (prepared offline when it is ``tiny-arith`` or ``smollm2``; a LoRA
    adapter folder loads on its base model, :func:`apo.cli.lora.load_adapter_model`). The weights are float32
    (master weights; ``bf16``/``fp16`` autocast the compute), or bf16/fp16 with ``master_weights=false``
    (:mod:`apo.integrations.trl.precision`)."""
    from transformers import AutoModelForCausalLM

    from apo.cli.lora import adapter_base, load_adapter_model
    from apo.integrations.trl.precision import check_precision_settings, weight_dtype

    check_precision_settings(
        cfg.bf16,
        cfg.fp16,
        cfg.master_weights,
        cfg.use_cpu,
        learning_rate=cfg.learning_rate,
        weight_decay=cfg.weight_decay,
    )
    path, tokenizer = load_tokenizer(cfg)
    dtype = weight_dtype(cfg.bf16, cfg.fp16, cfg.master_weights)
    if adapter_base(path) is not None:
        return load_adapter_model(path, dtype), tokenizer
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    return model, tokenizer


def load_data(cfg, tokenizer, split: str, n: int | None, seed: int):
    """The prompts of ``split``: ``train`` from ``cfg.task``; ``eval`` from ``cfg.eval_task`` used whole when it is
    set, else the held-out part of ``cfg.task`` (a single file is split into disjoint parts; with ``eval_task`` set,
    a single training file is used whole). ``math_level`` filters whichever of them is MATH-style data. The
    evaluation source and size are logged."""
    from apo.tasks.datasets import load_task, task_kind

    name, kw = cfg.task, dict(cfg.task_options)
    if split == "eval" and cfg.eval_task is not None:
        name, kw = cfg.eval_task, dict(cfg.eval_task_options)
    if cfg.math_level is not None and (name == cfg.task or task_kind(name) == "math"):
        kw["level"] = cfg.math_level
    if cfg.eval_task is not None:
        same = Path(os.path.expanduser(cfg.task)).resolve() == Path(os.path.expanduser(cfg.eval_task)).resolve()
        if same and Path(os.path.expanduser(cfg.task)).is_file():
            raise ValueError(
                f"eval_task={cfg.eval_task!r} is the training file task={cfg.task!r}: unset eval_task to hold out a "
                "part of it (task_options.eval_fraction), or name another file"
            )
        kw["whole_file"] = True
    ds = load_task(name, split, n, seed, tokenizer, **kw)
    if split == "eval":
        source = "eval_task, used whole" if cfg.eval_task is not None else "held-out part of task"
        logger.info("evaluation data: %d prompts from %s (%s)", len(ds), name, source)
    return ds


def load_reward_fn(cfg):
    """The config's reward function wrapped so that raising, hanging or NaN rewards score 0 and are logged."""
    from apo.tasks.datasets import default_reward
    from apo.tasks.rewards import load_reward, safe_reward

    fn = load_reward(
        cfg.reward or default_reward(cfg.task),
        answer_format=cfg.answer_format,
        partial_credit=cfg.partial_credit or None,  # 0: the reward's binary default, any reward
    )
    # The whole batch in one call (TRL's contract: a reward may depend on its batch), bounded per call.
    return safe_reward(fn, timeout_s=cfg.reward_timeout, per_completion=False)


def load_inputs(cfg, split: str):
    """``(reward_fn, model, tokenizer, dataset)`` of a config for ``split`` (``train``: ``train_size`` prompts drawn
    with ``seed``; ``eval``: ``eval_size`` held-out prompts drawn with ``eval_seed``). The loaders' ``ValueError``s
    name the setting (``model=``, ``task=``, ``reward=``) and are raised as ``ConfigError``s, before anything runs;
    the data are loaded and checked before the model's weights."""
    return _load_inputs(cfg, (split,))


def load_run_inputs(cfg):
    """``(reward_fn, model, tokenizer, train_dataset, eval_dataset)`` of ``apo train``: :func:`load_inputs` for the
    training prompts, plus the evaluation prompts (``None`` without ``eval_before_after``), both checked before the
    model's weights load."""
    return _load_inputs(cfg, ("train", "eval") if cfg.eval_before_after else ("train",), with_none=True)


def _load_inputs(cfg, splits: tuple[str, ...], with_none: bool = False):
    from apo.cli.lora import check_model

    sizes = {"train": (cfg.train_size, cfg.seed), "eval": (cfg.eval_size, cfg.eval_seed)}
    try:
        reward_fn = load_reward_fn(cfg)
        path, tokenizer = load_tokenizer(cfg)
        data = [load_data(cfg, tokenizer, split, *sizes[split]) for split in splits]
        if with_none:
            data += [None] * (2 - len(data))
            check_model(cfg, path)  # training: the LoRA target modules exist
        model, tokenizer = load_policy(cfg)
        return reward_fn, model, tokenizer, *data
    except ValueError as e:
        raise cfglib.ConfigError(str(e)) from None


@contextlib.contextmanager
def loading_inputs(cfg):
    """Turn any failure to load the model, data or reward (other than a :class:`ConfigError`) into a one-line
    ``ConfigError`` naming the settings involved and the chain of causes: a library's own exception (e.g. a
    ``DatasetGenerationError`` for a task file that is not JSON) says what went wrong but not which setting to
    change. Meanwhile ``datasets``' own ERROR log lines are held back: the error raised says the same in one line."""

    def drop_dataset_errors(record: logging.LogRecord) -> bool:
        return not (record.name.startswith("datasets") and record.levelno >= logging.ERROR)

    try:
        from datasets.utils.logging import disable_progress_bar

        disable_progress_bar()  # "Generating train split" bars: the run has its own progress bar
    except ImportError:
        pass
    handlers = logging.getLogger().handlers
    for h in handlers:
        h.addFilter(drop_dataset_errors)
    try:
        yield
    except cfglib.ConfigError:
        raise
    except Exception as e:
        causes, x = [], e
        while x is not None and len(causes) < 5:
            text = " ".join(str(x).split())
            causes.append(f"{type(x).__name__}: {text}" if text else type(x).__name__)
            x = x.__cause__ or (None if x.__suppress_context__ else x.__context__)
        raise cfglib.ConfigError(
            f"could not load the inputs (model={cfg.model!r}, task={cfg.task!r}, reward={cfg.reward!r}): "
            + "; caused by ".join(causes)
        ) from None
    finally:
        for h in handlers:
            h.removeFilter(drop_dataset_errors)
