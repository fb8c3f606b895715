"""Run configuration: one flat dataclass (the trainer's ``APOConfig`` plus the run's own settings), loaded from YAML.

A config file is a flat YAML mapping whose keys are fields of :class:`RunConfig`: every ``APOConfig`` /
``GRPOConfig`` / ``TrainingArguments`` field, plus the run settings below (model, task, reward, evaluation). Resolution
order: dataclass defaults < the YAML file (or the embedded default, ``apo/configs/default.yaml``, when no file is
given) < ``key=value`` overrides on the command line (values parsed as YAML: ``alpha=0.5``, ``bf16=true``).
Unknown keys and values of the wrong type are errors that name the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
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
    ]


_RUN_FIELD_NAMES = tuple(name for name, _, _ in _run_fields())
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
        out[key.strip()] = yaml.safe_load(raw) if raw != "" else ""
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A config file as a flat mapping (or a bundled config by name: ``smollm2-arith``)."""
    p = Path(path)
    if not p.exists() and (CONFIG_DIR / f"{path}.yaml").exists():
        p = CONFIG_DIR / f"{path}.yaml"
    if not p.is_file():
        names = sorted(x.stem for x in CONFIG_DIR.glob("*.yaml"))
        raise ConfigError(f"config file {str(path)!r} not found (bundled configs: {names})")
    data = yaml.safe_load(p.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of key: value")
    return data


def resolve_values(path: str | Path | None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The validated input mapping for a config file (``None``: the embedded default) plus overrides.

    Raises:
        ConfigError: an unknown key (with the closest valid name) or a value of the wrong type.
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
