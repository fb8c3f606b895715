"""Run configuration: one flat dataclass (the trainer's ``APOConfig`` plus the run's own settings), loaded from YAML.

A config file is a flat YAML mapping whose keys are fields of :class:`RunConfig`: every ``APOConfig`` /
``GRPOConfig`` / ``TrainingArguments`` field, plus the run settings below (model, task, reward, evaluation). Resolution
order: dataclass defaults < the YAML file (or the embedded default, ``apo/configs/default.yaml``, when no file is
given) < ``key=value`` overrides on the command line (values parsed as YAML: ``alpha=0.5``, ``bf16=true``).
Unknown keys, values of the wrong type and values out of their range (:data:`RANGES`) are errors that name the key,
the value and what is allowed, raised when the config is resolved, before any model or data is loaded.

YAML is read with :class:`YamlLoader`: YAML 1.1 (PyYAML's ``SafeLoader``) reads ``1e-5`` as a string, since its float
rule needs a dot; here every spelling of a float (``1e-5``, ``1E-5``, ``.5``, ``-1e-3``, ``+1e5``) is a float, in
config files and in ``key=value`` overrides alike.
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
    """``yaml.SafeLoader`` that also reads ``1e-5``, ``1E-5``, ``+1e5``, ``-.5`` as floats (YAML 1.2's float rule)."""


# A copy of SafeLoader's resolver table (add_implicit_resolver would append to lists shared with SafeLoader).
YamlLoader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)(?:[eE][-+]?[0-9]+)?$"),
    list("-+0123456789."),
)


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
        ("model", str, f("tiny-arith", "Policy to train: tiny-arith | smollm2 | a local folder | a hub id.")),
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
            "reward_timeout",
            float | None,
            f(10.0, "Seconds a reward may take per completion (None: no limit)."),
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
        ("eval_seed", int, f(1234, "Seed of the evaluation draw and sampling (the same before and after training).")),
        ("eval_batch_size", int, f(64, "Prompts per generation batch in evaluation.")),
        ("eval_before_after", bool, f(True, "Evaluate the policy before and after training and record both.")),
        ("cache_dir", str, f("~/.cache/apo", "Where prepared models (tiny-arith, converted SmolLM2) are cached.")),
        ("torch_threads", int | None, f(None, "torch.set_num_threads for the run (None: torch's default).")),
        (
            "master_weights",
            bool,
            f(
                True,
                "With bf16/fp16: fp32 weights and optimizer states, low-precision autocast compute (TRL's default); "
                "false: low-precision weights trained by torch-optimi's Kahan-summed AdamW (docs/numerics.md).",
            ),
        ),
    ]


_RUN_FIELD_NAMES = tuple(name for name, _, _ in _run_fields())

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
    "train_size": ">= 1",  # None: the task's default
    "eval_size": ">= 1",  # eval_before_after=false turns the evaluation off
    "eval_samples": ">= 1",
    "eval_seed": SEED_RANGE,
    "eval_batch_size": ">= 1",
    "torch_threads": ">= 1",
}
"""Allowed range of every numeric config key (see the syntax above); checked by :func:`check_ranges`."""

UNCONSTRAINED: dict[str, str] = {
    "reward_weights": "a list of real weights, one per reward function; TRL checks its length",
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
    type check).

    Raises:
        ConfigError: ``config key 'temperature': 0.0 is out of range (allowed: > 0)``.
    """
    for key, value in values.items():
        spec = RANGES.get(key)
        if spec is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        test = _RANGE_TESTS.get(spec) or _RANGE_TESTS.setdefault(spec, _range_test(spec))
        if not test(float(value)):
            raise ConfigError(f"config key {key!r}: {value!r} is out of range (allowed: {spec})")


def check_paths(values: dict[str, Any]) -> None:
    """``output_dir`` must be a folder or not exist yet (nor any of its parents be a file).

    Raises:
        ConfigError: ``config key 'output_dir': 'x' is a file, not a folder``.
    """
    out = values.get("output_dir")
    if not isinstance(out, str) or not out:
        return
    for p in (Path(out), *Path(out).parents):
        if p.exists():
            if not p.is_dir():
                what = "is a file" if p == Path(out) else f"is inside {str(p)!r}, which is a file"
                raise ConfigError(f"config key 'output_dir': {out!r} {what}; set output_dir=<a folder>")
            break


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


def resolve_values(path: str | Path | None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The validated input mapping for a config file (``None``: the embedded default) plus overrides.

    Raises:
        ConfigError: an unknown key (with the closest valid name), a value of the wrong type, or one out of its
            range (:data:`RANGES`), or an ``output_dir`` that is a file.
    """
    cls = run_config_class()
    values = read_yaml(DEFAULT_CONFIG if path is None else path)
    values.update(overrides or {})
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    for key, value in values.items():
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            raise ConfigError(f"unknown config key {key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        tp = hints.get(key, fields[key].type)
        if isinstance(value, bool) and not _type_ok(value, tp) and _type_ok("no", tp):
            # YAML 1.1 reads `no`/`yes` as booleans; `save_strategy: no` means the string here.
            value = values[key] = "yes" if value else "no"
        if not _type_ok(value, tp):
            raise ConfigError(f"config key {key!r}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    values.setdefault("output_dir", default_output_dir(values, None if path is None else Path(path).stem))
    check_ranges(values)
    check_paths(values)
    return values


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


def to_dict(cfg, *, only_changed: bool = False) -> dict[str, Any]:
    """The config as a plain mapping (YAML-safe values). ``only_changed`` keeps the run and APO settings and the
    fields that differ from their dataclass defaults."""
    from apo.integrations.trl.config import APOConfig

    own = set(_RUN_FIELD_NAMES) | {
        f.name for f in dataclasses.fields(APOConfig) if f.name in APOConfig.__annotations__
    }
    out = {}
    for f in dataclasses.fields(cfg):
        if not f.init:
            continue
        value = getattr(cfg, f.name)
        if isinstance(value, enum.Enum):
            value = value.value
        if not isinstance(value, (str, int, float, bool, list, dict, type(None))):
            if only_changed:  # objects derived by TrainingArguments (accelerator_config, ...): not settings
                continue
            value = str(value)
        if only_changed and f.name not in own:
            default = (
                f.default
                if f.default is not dataclasses.MISSING
                else (f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
            )
            if isinstance(default, enum.Enum):
                default = default.value
            if value == default:
                continue
        out[f.name] = value
    return out


def strip_markup(text: str) -> str:
    """``text`` without reStructuredText markup (``:func:`x```, double backticks) and on one line."""
    text = re.sub(r":[a-z]+:`~?([^`]+)`", r"\1", text)
    text = text.replace("``", "'").replace("`", "'").replace("%%", "%")
    return " ".join(text.split())


def describe(cfg) -> str:
    """Every init field of ``cfg`` as commented YAML, one line per key: ``key: value  # type, default D. help`` (the
    output of ``apo config --all``; still a loadable config file)."""
    hints = typing.get_type_hints(type(cfg))
    values = to_dict(cfg)
    lines = []
    for f in sorted((f for f in dataclasses.fields(cfg) if f.init), key=lambda f: f.name):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        if isinstance(default, enum.Enum):
            default = default.value
        value = yaml.safe_dump({f.name: values[f.name]}, default_flow_style=True, width=10**6).strip()[1:-1]
        help_ = strip_markup(str(f.metadata.get("help", "")))
        rng = f", range {RANGES[f.name]}" if f.name in RANGES else ""
        lines.append(f"{value}  # {_type_name(hints.get(f.name, f.type))}, default {default!r}{rng}. {help_}".rstrip())
    return "\n".join(lines) + "\n"


def dump(cfg, path: Path | None = None, *, only_changed: bool = True) -> str:
    """YAML text of the config (written to ``path`` when given)."""
    text = yaml.safe_dump(to_dict(cfg, only_changed=only_changed), sort_keys=True)
    if path is not None:
        path.write_text(text)
    return text


def __getattr__(name: str):
    # ``RunConfig`` is built lazily (it subclasses a TRL class); resolving it here lets pickle find it by name.
    if name == "RunConfig":
        return run_config_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
