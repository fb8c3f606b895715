"""LoRA adapters (PEFT) in a run: TRL's config keys, their checks, the ``peft_config`` for the trainer, and adapter
folders (load, merge).

The keys are those of TRL's ``ModelConfig`` (``use_peft``, ``lora_r``, ``lora_alpha``, ``lora_dropout``,
``lora_target_modules``, ``lora_modules_to_save``, ``use_rslora``, ``use_dora``), with TRL's defaults, and turn
into a ``peft.LoraConfig`` through TRL's own ``trl.get_peft_config`` (``task_type="CAUSAL_LM"``, ``bias="none"``),
which :class:`apo.APOTrainer` receives as ``peft_config``, as ``GRPOTrainer`` does. Two departures from TRL:

- ``lora_target_modules`` unset means ``"all-linear"`` (every linear layer but the output head: for Llama-family
  models the attention projections q/k/v/o and the MLP projections gate/up/down), not PEFT's per-architecture default
  (q and v only for Llama);
- ``lora_dropout`` defaults to 0, not 0.05. Dropout on the adapter's input makes the policy random in training
  mode: TRL computes pi_old's log-probs (off-policy) and the loss's log-probs with different dropout masks, so the
  anchored ``u`` and the peers' ratios move with no change of the weights; and PEFT keeps a dropped-out copy of the
  input of each of the 7 adapted projections per layer for the backward (on SmolLM2-135M with 32 x 88 tokens, peak
  RSS 12.7 GB at 0.05 against 9.6 GB for full fine-tuning, docs/smollm2.md).

What the trainer then does is TRL's: the policy is the base model with the adapter on; ``pi_old`` (the anchor of
``apo``/``adpo``, the denominator of the ratios of ``grpo``/``gspo``) is the adapter-on policy at the rollout; the
reference model of ``beta > 0`` is the base model with the adapter disabled (no second copy of the weights).

Run folders: ``checkpoint-N/`` holds the adapter (``adapter_model.safetensors``, ``adapter_config.json``) with the
optimizer, scheduler, RNG and schedule state; ``final/`` holds the adapter, the tokenizer and, in
``adapter_config.json``, ``base_model_name_or_path`` (the base model's folder): ``apo eval --policy RUN/final``
loads the base and the adapter on it, and ``apo merge RUN/final OUT`` writes the merged full model.

Checks, each one line naming the key, before any weights load: a ``lora_*`` key (or ``use_rslora``/``use_dora``)
without ``use_peft=true``; ``use_peft`` without ``peft`` installed (:func:`check_values`); target modules or modules
to save that the model does not have (:func:`check_model`, on the model built on the ``meta`` device from its
``config.json``); resuming a LoRA run as a full one or the reverse (``apo.cli.run_folder``).
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from typing import Any

ADAPTER_CONFIG = "adapter_config.json"
ALL_LINEAR = "all-linear"

DEFAULTS: dict[str, Any] = {
    "lora_r": 16,
    "lora_alpha": 32,
    "lora_dropout": 0.0,
    "lora_target_modules": None,
    "lora_modules_to_save": None,
    "use_rslora": False,
    "use_dora": False,
}
"""TRL ``ModelConfig``'s defaults of the keys that need ``use_peft``, except ``lora_dropout`` (TRL: 0.05; see the
module docstring)."""


class LoraError(ValueError):
    """A LoRA setting that cannot work; the message names the key."""


def check_values(values: dict[str, Any]) -> None:
    """Check the LoRA keys of a config mapping and, with ``use_peft``, fill in the unset ones (TRL's defaults;
    ``lora_target_modules`` -> ``"all-linear"``), so that the run's ``config.yaml`` records every adapter setting.
    Without ``use_peft``, a LoRA key at its default passes (``apo config --all`` prints every key, and its output
    loads again); any other value is an error.

    Raises:
        LoraError: ``config key 'lora_r' needs use_peft=true ...``, or ``use_peft`` without ``peft`` installed.
    """
    if not values.get("use_peft"):
        for key in DEFAULTS:
            if key in values and values[key] != DEFAULTS[key]:
                raise LoraError(
                    f"config key {key!r} applies to LoRA adapters only: set use_peft=true, or remove {key}"
                )
        return
    if importlib.util.find_spec("peft") is None:
        raise LoraError(
            "config key 'use_peft': the peft package is not installed; pip install 'apo[peft]' (or set use_peft=false)"
        )
    for key, default in DEFAULTS.items():
        values.setdefault(key, default)
    if values["lora_target_modules"] is None:
        values["lora_target_modules"] = ALL_LINEAR


def adapter_base(path: str | Path) -> str | None:
    """The base model of the adapter folder ``path`` (``base_model_name_or_path`` of its ``adapter_config.json``), or
    ``None`` when ``path`` is not an adapter folder."""
    cfg = Path(path).expanduser() / ADAPTER_CONFIG
    if not cfg.is_file():
        return None
    return json.loads(cfg.read_text()).get("base_model_name_or_path")


def _matches(name: str, target: str | list[str]) -> bool:
    """PEFT's rule: a string target is a regex that must match the whole module name; a list entry matches a module
    name that is equal to it or ends with ``.<entry>``."""
    if isinstance(target, str):
        return re.fullmatch(target, name) is not None
    return any(name == t or name.endswith("." + t) for t in target)


def check_model(values_or_cfg: Any, model_path: str) -> None:
    """Check that the model at ``model_path`` has the modules named by ``lora_target_modules`` and
    ``lora_modules_to_save`` (no-op without ``use_peft``). The model is built on the ``meta`` device from its
    ``config.json``: no weights are read.

    Raises:
        LoraError: ``config key 'lora_target_modules': ['q_prj'] matches no module of the model (its linear
        layers: ...)``; or a ``model`` that is itself an adapter folder.
    """
    get = values_or_cfg.get if isinstance(values_or_cfg, dict) else lambda k, d=None: getattr(values_or_cfg, k, d)
    if not get("use_peft"):
        return
    if adapter_base(model_path) is not None:
        raise LoraError(
            f"config key 'model': {model_path!r} is a LoRA adapter; merge it first (apo merge {model_path} OUT) and "
            "train model=OUT"
        )
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_path))
    names = [n for n, _ in model.named_modules() if n]
    linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
    targets = get("lora_target_modules")
    if targets not in (None, ALL_LINEAR):
        entries = [targets] if isinstance(targets, str) else list(targets)
        missing = [t for t in entries if not any(_matches(n, t if isinstance(targets, str) else [t]) for n in names)]
        if missing:
            raise LoraError(
                f"config key 'lora_target_modules': {missing} matches no module of the model (its linear layers: "
                f"{linear}; or all-linear)"
            )
    for t in get("lora_modules_to_save") or []:
        if not any(_matches(n, [t]) for n in names):
            tops = sorted({n.split(".")[0] for n in names} | {n.rsplit(".", 1)[-1] for n in names if "." in n})
            raise LoraError(f"config key 'lora_modules_to_save': {t!r} is no module of the model (e.g. {tops[:12]})")


def peft_config(cfg):
    """The ``peft.LoraConfig`` of a run config (``None`` without ``use_peft``), made by TRL's ``get_peft_config``
    from a ``trl.ModelConfig`` with the same keys."""
    if not cfg.use_peft:
        return None
    from trl import ModelConfig, get_peft_config

    targets = cfg.lora_target_modules
    return get_peft_config(
        ModelConfig(
            use_peft=True,
            lora_r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            lora_target_modules=ALL_LINEAR if targets is None else targets,
            lora_modules_to_save=cfg.lora_modules_to_save,
            use_rslora=cfg.use_rslora,
            use_dora=cfg.use_dora,
        )
    )


def load_adapter_model(folder: str | Path, dtype, base: str | None = None):
    """The base model with the adapter of ``folder`` on it (a ``peft.PeftModel``, inference mode). ``base``: the base
    model's folder (default: ``base_model_name_or_path`` of ``folder/adapter_config.json``).

    Raises:
        LoraError: ``peft`` not installed, or the base model's folder is missing.
    """
    if importlib.util.find_spec("peft") is None:
        raise LoraError(
            f"config key 'model': {str(folder)!r} is a LoRA adapter and needs peft: pip install 'apo[peft]'"
        )
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = base or adapter_base(folder)
    if not base or not (Path(base).expanduser() / "config.json").is_file():
        raise LoraError(
            f"config key 'model': the base model of the adapter {str(folder)!r} ({base!r}, from its "
            f"{ADAPTER_CONFIG}) is not a model folder here; set base_model_name_or_path there"
        )
    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
    return PeftModel.from_pretrained(model, str(folder))


def merge(folder: str | Path, out: str | Path) -> Path:
    """Write the full model of the adapter ``folder`` merged into its base (``merge_and_unload``: ``W + (alpha/r) B A``
    in every adapted layer, in the base's own dtype), with the tokenizer saved next to the adapter, to ``out``
    (safetensors): a normal model folder, e.g. for ``apo eval --policy OUT`` or ``model=OUT``."""
    from transformers import AutoTokenizer

    if adapter_base(folder) is None:
        raise LoraError(f"apo merge: {str(folder)!r} holds no {ADAPTER_CONFIG} (not a LoRA adapter folder)")
    model = load_adapter_model(folder, "auto").merge_and_unload()
    out = Path(out)
    model.save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(folder)).save_pretrained(str(out))
    return out
