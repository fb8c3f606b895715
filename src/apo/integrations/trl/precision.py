"""Mixed precision that keeps every update: weight dtype, the low-precision optimizer, and the lost-update check.

With ``bf16`` / ``fp16`` set, a run keeps **fp32 master weights and optimizer states** and the Trainer (accelerate)
autocasts the forward passes, generation included, to the low-precision dtype: TRL's own default when
``GRPOTrainer`` loads a model by name (``model_init_kwargs`` without ``dtype`` loads float32). Loading the weights
themselves in bf16 without a master copy (what :func:`apo.cli.inputs.load_policy` did before) loses every AdamW step
smaller than half a unit in the last place (ulp) of a weight: with lr 1.5e-5 only 13% of the tiny model's weights
ever moved (docs/numerics.md).

``master_weights=False`` keeps the weights in the low-precision dtype (half the weight memory, no fp32 copy) and
trains them with torch-optimi's AdamW with Kahan summation (``pip install 'apo[lowprec]'``), whose compensation
buffer carries the part of each step the dtype cannot hold.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch
from torch import nn

from apo.algorithms import GROUP, get_algorithm

logger = logging.getLogger("apo")

LOW_PRECISION = (torch.bfloat16, torch.float16)


def weight_dtype(bf16: bool, fp16: bool, master_weights: bool) -> torch.dtype:
    """The dtype the policy's weights are stored (and trained) in: float32 unless ``master_weights`` is off and
    ``bf16`` / ``fp16`` is set (then that dtype)."""
    if master_weights or not (bf16 or fp16):
        return torch.float32
    return torch.bfloat16 if bf16 else torch.float16


MANTISSA_BITS = {torch.bfloat16: 7, torch.float16: 10, torch.float32: 23, torch.float64: 52}


def weight_decay_error(learning_rate: float, weight_decay: float, dtype: torch.dtype) -> str | None:
    """One line when decoupled weight decay on ``dtype`` weights without compensation rounds away.

    torch-optimi applies AdamW's decay as ``w <- w (1 - lr wd)`` directly on the low-precision weight, outside its
    Kahan sum. A relative change ``delta = lr wd`` survives rounding to nearest only where it reaches half the
    relative spacing of ``w``, which lies in ``[2^-(m+2), 2^-(m+1))`` (``m`` mantissa bits: 7 for bf16): below
    ``2^-(m+1)`` some weights never decay, below ``2^-(m+2)`` none does. None when nothing is lost."""
    delta = learning_rate * weight_decay
    m = MANTISSA_BITS[dtype]
    if weight_decay == 0 or delta >= 2.0 ** -(m + 1):
        return None
    part = "no weight would ever decay" if delta < 2.0 ** -(m + 2) else "some weights would never decay"
    name = str(dtype).removeprefix("torch.")
    return (
        f"weight_decay={weight_decay:g} with master_weights=false: torch-optimi decays {name} weights outside its "
        f"Kahan sum, and learning_rate x weight_decay = {delta:.2g} is below half a {name} ulp (2^-{m + 1}), so "
        f"{part}; set weight_decay=0 or master_weights=true"
    )


def check_precision_settings(
    bf16: bool,
    fp16: bool,
    master_weights: bool,
    use_cpu: bool,
    *,
    learning_rate: float = 0.0,
    weight_decay: float = 0.0,
) -> None:
    """Reject contradictory precision settings in one line naming the keys.

    Raises:
        ValueError: ``bf16`` and ``fp16`` together; ``fp16`` on a machine without fp16 autocast (a CPU: accelerate
            would silently train in fp32); ``master_weights=false`` without ``bf16``/``fp16``, or without
            torch-optimi installed, or with a ``weight_decay`` the low-precision weights would round away
            (:func:`weight_decay_error`).
    """
    if bf16 and fp16:
        raise ValueError("bf16=true and fp16=true together: set one of them to false")
    if fp16 and (use_cpu or not torch.cuda.is_available()):
        raise ValueError(
            "fp16=true: this machine has no fp16 mixed precision (CPU; accelerate would train in fp32 and say "
            "nothing): set fp16=false (bf16=true for low-precision compute on a CPU)"
        )
    if not master_weights:
        if not (bf16 or fp16):
            raise ValueError("master_weights=false only applies with bf16=true or fp16=true: set one, or drop it")
        try:
            import optimi  # noqa: F401
        except ImportError:
            raise ValueError(
                "master_weights=false trains low-precision weights with torch-optimi's Kahan-summed AdamW, which is "
                "not installed: pip install 'apo[lowprec]', or set master_weights=true"
            ) from None
        error = weight_decay_error(learning_rate, weight_decay, weight_dtype(bf16, fp16, master_weights))
        if error:
            raise ValueError(error)


def kahan_adamw(model: nn.Module, *, lr: float, betas: tuple[float, float], eps: float, weight_decay: float):
    """torch-optimi's ``AdamW`` with Kahan summation over the trainable parameters of ``model``: the update is
    ``torch.optim.AdamW``'s (weight decay scaled by lr, as in PyTorch), and for bf16/fp16 parameters a compensation
    buffer of the same dtype keeps the rounding error of every step and adds it back at the next.

    Two parameter groups, as the Trainer builds its own optimizer: ``weight_decay`` on the parameters that
    ``Trainer.get_decay_parameter_names`` names (not biases, not norm weights), 0 on the others.

    Raises:
        ValueError: a ``weight_decay`` that low-precision weights would round away (:func:`weight_decay_error`)."""
    from optimi import AdamW
    from transformers import Trainer

    dtypes = {p.dtype for p in model.parameters() if p.requires_grad and p.dtype in LOW_PRECISION}
    for dtype in sorted(dtypes, key=str):
        error = weight_decay_error(lr, weight_decay, dtype)
        if error:
            raise ValueError(error)

    # get_decay_parameter_names reads nothing from the Trainer instance: the same rule as the Trainer's optimizer
    decay = set(Trainer.get_decay_parameter_names(None, model))
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in named if n in decay], "weight_decay": weight_decay},
        {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    return AdamW(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, kahan_sum=True)


def half_ulp(w: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Half a unit in the last place of each ``|w|`` in ``dtype``: the smallest change that survives rounding to
    nearest, ``2^(floor(log2 |w|) - m - 1)`` with ``m`` the mantissa bits (7 for bf16, 10 for fp16, 23 for fp32);
    same shape as ``w``; 0 where ``w = 0``."""
    m = MANTISSA_BITS[dtype]
    a = w.detach().abs().double()
    exponent = torch.floor(torch.log2(a.clamp(min=torch.finfo(torch.float64).tiny)))
    return torch.where(a > 0, torch.exp2(exponent - m - 1), torch.zeros_like(a))


def median_abs_weight(model: nn.Module, max_per_tensor: int = 100_000) -> float:
    """Median ``|w|`` over the trainable floating-point weights of ``model`` (each tensor subsampled to at most
    ``max_per_tensor`` evenly spaced entries)."""
    parts = []
    for p in model.parameters():
        if p.requires_grad and p.is_floating_point() and p.numel():
            flat = p.detach().reshape(-1)
            step = max(1, flat.numel() // max_per_tensor)
            parts.append(flat[::step].abs().float())
    return float(torch.cat(parts).median()) if parts else 0.0


def lost_update_warning(model: nn.Module, lr: float, optimizer=None) -> str | None:
    """One line when ``model``'s trainable weights are bf16/fp16, no compensating optimizer is given (torch-optimi
    with ``kahan_sum``), and an update of size ``lr`` (an Adam step moves a weight by about lr) is below half an ulp of
    the median weight, i.e. most updates round away; ``None`` otherwise."""
    dtypes = {p.dtype for p in model.parameters() if p.requires_grad and p.is_floating_point()}
    low = [d for d in dtypes if d in LOW_PRECISION]
    if not low or _compensated(optimizer):
        return None
    dtype = low[0]
    median = median_abs_weight(model)
    if median == 0.0:
        return None
    floor = float(half_ulp(torch.tensor(median), dtype))
    if lr >= floor:
        return None
    name = str(dtype).removeprefix("torch.")
    return (
        f"weights are {name} without fp32 master weights: learning_rate={lr:g} is below half a {name} ulp of the "
        f"median weight ({floor:.2g} at |w|={median:.2g}), so most optimizer steps round away; load the model in "
        "float32 and set bf16=true (autocast), or set master_weights=false (Kahan-summed AdamW)"
    )


def _compensated(optimizer) -> bool:
    if optimizer is None:
        return False
    if type(optimizer).__module__.split(".")[0] != "optimi":
        return False
    return all(group.get("kahan_sum", False) for group in optimizer.param_groups)


def warn_if_updates_lost(model: nn.Module, lr: float, optimizer=None) -> None:
    """Log :func:`lost_update_warning` (once, at the start of training) when it applies."""
    message = lost_update_warning(model, lr, optimizer)
    if message is not None:
        logger.warning(message)


def checkpoint_weight_note(checkpoint, master_weights: bool) -> str | None:
    """One line when a run with fp32 master weights resumes from a checkpoint whose weights are bf16/fp16 (written
    before runs kept master weights): it resumes, the weights and AdamW states are upcast on load, and the steps
    before it lost every update below half an ulp. ``None`` otherwise."""
    from pathlib import Path

    from safetensors import safe_open

    if not master_weights:
        return None
    low = set()
    for path in sorted(Path(checkpoint).glob("*.safetensors")):
        with safe_open(str(path), "pt") as f:
            low |= {f.get_slice(k).get_dtype() for k in f.keys()} & {"BF16", "F16"}
    if not low:
        return None
    dtype = "bf16" if "BF16" in low else "fp16"
    return (
        f"{Path(checkpoint).name} holds {dtype} weights without fp32 master weights (written before master weights "
        "were kept): resuming with fp32 master weights from them; the steps before it lost the updates below half "
        f"a {dtype} ulp (docs/numerics.md)"
    )


def offpolicy_anchor_warning(
    algorithm: str, low_precision: bool, steps_per_rollout: int, fp32_passes: bool = False
) -> str | None:
    """One line when a group objective (``apo``, ``adpo``, ...) computes in bf16/fp16, takes more than one optimizer
    step per rollout, and its log-prob passes are not fp32 (``fp32_anchor_passes=false``): from the second step on,
    u = (l - l_old) / tau is a difference of two log-prob sums computed with the bf16-rounded weights of two
    policies, and that rounding is most of u (SmolLM2-135M, 256-token completions, one step at lr 1.5e-5: error
    74-80% of |u|, docs/numerics.md). ``None`` otherwise (on-policy, u = 0 exactly in any dtype)."""
    if get_algorithm(algorithm).kind != GROUP or not low_precision or steps_per_rollout <= 1 or fp32_passes:
        return None
    return (
        f"algorithm={algorithm!r} with bf16/fp16 compute, {steps_per_rollout} optimizer steps per rollout and "
        "fp32_anchor_passes=false: off-policy, the anchor u is mostly bf16 rounding (docs/numerics.md); unset "
        "fp32_anchor_passes (fp32 log-prob passes, the default here), or set bf16=false"
    )


def warn_offpolicy_anchor(algorithm: str, low_precision: bool, steps_per_rollout: int, fp32_passes: bool) -> None:
    """Log :func:`offpolicy_anchor_warning` (once, at the start of training) when it applies."""
    message = offpolicy_anchor_warning(algorithm, low_precision, steps_per_rollout, fp32_passes)
    if message is not None:
        logger.warning(message)


def fp32_anchor_passes_default(kind: str, low_precision: bool, steps_per_rollout: int) -> bool:
    """``fp32_anchor_passes``'s default: on for a group objective under bf16/fp16 whenever the policy moves between
    a rollout and the steps it feeds (more than one optimizer step per rollout); off otherwise (on-policy, u = 0
    exactly in any dtype; fp32 compute; the TRL-run losses, which have no anchor)."""
    return kind == GROUP and low_precision and steps_per_rollout > 1


def resolve_fp32_anchor_passes(
    requested: bool | None, kind: str, weights_dtypes: set[torch.dtype], low_precision: bool, steps_per_rollout: int
) -> tuple[bool, str | None]:
    """Whether a trainer runs its log-prob passes in fp32 (:func:`fp32_forward`), and a note to log: ``(on, note)``.

    ``requested``: ``APOConfig.fp32_anchor_passes`` (``None``: :func:`fp32_anchor_passes_default`). The passes run
    on the weights as stored, so they are fp32 only with fp32 (master) weights: with bf16/fp16 trainable weights
    (``master_weights=false``, or a model loaded in bf16) the default stays off with a note, and an explicit
    ``True`` raises. An explicit ``False`` where the default is off anyway is a note that it changes nothing.

    Raises:
        ValueError: ``fp32_anchor_passes=True`` with bf16/fp16 trainable weights."""
    default = fp32_anchor_passes_default(kind, low_precision, steps_per_rollout)
    low_weights = sorted(str(d).removeprefix("torch.") for d in weights_dtypes & set(LOW_PRECISION))
    if requested is None:
        if default and low_weights:
            return False, (
                f"the policy's trainable weights are {low_weights[0]} (no fp32 master copy): the anchor's log-prob "
                "passes cannot be fp32 and u is mostly rounding off-policy (docs/numerics.md); load the model in "
                "float32 (master_weights=true) for fp32 passes"
            )
        return default, None
    if requested and low_weights:
        raise ValueError(
            f"fp32_anchor_passes=true needs fp32 weights, but the policy's trainable weights are {low_weights[0]} "
            "(no fp32 master copy): load the model in float32 (master_weights=true), or unset fp32_anchor_passes"
        )
    if not requested and not default:
        why = (
            "the algorithm has no anchor"
            if kind != GROUP
            else "compute is fp32"
            if not low_precision
            else "one optimizer step per rollout, where u = 0 exactly"
        )
        return False, f"fp32_anchor_passes=false changes nothing here ({why})"
    return requested, None


@contextlib.contextmanager
def fp32_forward(model: nn.Module, accelerator=None) -> Iterator[None]:
    """Run the forwards of ``model`` inside the block in fp32: autocast off for the device of its weights, with
    both of accelerate's ways back to autocast closed for the block. ``Accelerator.prepare_model`` under
    ``mixed_precision`` wraps the forward in its own ``torch.autocast`` (kept as ``_original_forward``): the unwrapped
    forward is used on ``model`` and every submodule (a DDP wrapper's module, a PEFT model). ``accelerator.autocast()``
    (TRL's log-prob pass enters it) reads ``accelerator.autocast_handler``: set to ``enabled=False`` for the block.
    With fp32 weights every matmul is then fp32; activation checkpointing recomputes under the autocast state of the
    forward (off). Everything is restored on exit, also on an error."""
    wrapped = [m for m in model.modules() if "_original_forward" in vars(m) and "forward" in vars(m)]
    saved = [vars(m)["forward"] for m in wrapped]
    handler = getattr(accelerator, "autocast_handler", None)
    param = next(model.parameters(), None)
    device_type = param.device.type if param is not None else "cpu"
    try:
        for m in wrapped:
            m.forward = m._original_forward
        if accelerator is not None:
            from accelerate.utils import AutocastKwargs

            accelerator.autocast_handler = AutocastKwargs(enabled=False)
        with torch.autocast(device_type=device_type, enabled=False):
            yield
    finally:
        for m, forward in zip(wrapped, saved, strict=True):
            m.forward = forward
        if accelerator is not None:
            accelerator.autocast_handler = handler
