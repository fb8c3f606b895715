"""Fast generation without vLLM: a static KV cache and a compiled decode step, through transformers' own ``generate``.

On one H100, a TRL ``GRPOTrainer`` step on a Qwen3-1.7B-shaped model spends 8.5 of its 10.8 s in ``generate``'s decode
loop (dynamic cache, eager forward); the same decode with a static cache and ``torch.compile`` took 2.3 s. This module
gives :class:`apo.APOTrainer` that path when ``APOConfig.fast_generation`` is on.

How (the least invasive route, no copy of TRL's code). TRL 1.16 builds ``trainer.generation_config`` once, with
``disable_compile=True`` and ``cache_implementation=args.cache_implementation`` (``None``: a dynamic cache), and passes
it to ``unwrapped_model.generate`` in ``_generate_single_turn``. For the duration of one ``_generate_single_turn``
call, :func:`generate_single_turn` swaps in a copy of that config with::

    cache_implementation = "static"
    max_cache_len        = static_cache_length(prompt length, max_new_tokens, bucket)   # a multiple of `bucket`
    disable_compile      = False
    compile_config       = one CompileConfig kept for the run (None: transformers' default, inductor +
                           "reduce-overhead", i.e. CUDA graphs)

Everything else is TRL's code, unchanged: prompt padding, the ``unwrap_model_for_generation`` context (which turns
activation checkpointing off for generation and back on after), sampling, EOS masking. transformers then runs the
prefill eagerly and every decode step through ``model.get_compiled_call(compile_config)``.

Why it compiles once, not every step:

- **Shapes.** A decode step's inputs are ``input_ids [B, 1]``, ``position_ids [B, 1]``, ``cache_position [1]``, a
  4-D mask ``[B, 1, 1, L]`` and the cache ``[B, H_kv, L, D]`` per layer, with ``L`` the cache length: the shapes
  depend on ``(B, L)`` only. transformers sizes ``L`` as ``max(prompt + max_new_tokens - 1, max_cache_len,
  largest L of any earlier call)``; rounding ``max_cache_len`` up to a multiple of ``bucket`` (64) leaves a handful of
  values over a run, and the ratchet makes ``L`` non-decreasing, so a run recompiles at most once per bucket it
  climbs through (``generation_kwargs={"max_cache_len": N}`` pre-sizes it: no recompile at all). The prefill runs
  eagerly, so the prompt length itself needs no bucketing: prompts are padded exactly as TRL pads them, and the
  model sees the same inputs as on the stock path.
- **Weights.** The compiled forward takes the parameters as graph inputs (dynamo inlines ``nn.Module``\\ s), and
  the optimizer updates them in place, so every call reads the live weights; CUDA graphs record their addresses, which
  in-place updates keep.
- **Train/eval.** dynamo guards on ``module.training``: evaluation compiles a second graph once (within dynamo's
  recompile limit); the training graph stays cached.
- **Activation checkpointing.** TRL's context turns it off around ``generate``, so the compiled graph always sees it
  off; if the fast call fails, this module turns it back on (TRL's context has no ``finally``). Turning it on
  registers a ``make_inputs_require_grads`` hook on the input embeddings each time and turning it off removes none, so
  with TRL's toggle the hook count grows by one per step and dynamo, which guards on it, would recompile the decode
  step every step. The fast path removes those hooks before ``generate`` (no gradients flow there) and leaves exactly
  one afterwards when there was any.

When it does not apply (logged once, then TRL's path): ``use_vllm`` or ``use_transformers_continuous_batching``
(already their own fast paths), DeepSpeed or FSDP (sharded parameters), a model on a device without compiled
decoding (``cpu``, ``mps``: transformers would run the static cache eagerly, which is slower than the dynamic one).
``cache_implementation`` other than ``None``/``"static"`` contradicts ``fast_generation`` and raises.

Fallback: if the fast call raises a ``torch.compile`` error (dynamo or inductor) at any time, or anything at all on its
first call (e.g. a model whose cache cannot be static, no Triton), the error is logged in one line, the fast path is
switched off for the rest of the run, activation checkpointing is restored, and the same prompts go through TRL's
path. That retry draws fresh random numbers, so its completions are not those the failed call would have sampled.

Equivalence (tested in ``tests/test_generation.py``): with the same config and seed, the static-cache path consumes
the random stream exactly as the dynamic one (one draw per decode step over the same batch), so greedy decoding gives
the same tokens and sampling gives the same tokens up to ties broken by float rounding (attention over the padded
static cache sums in a different order).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import CompileConfig, GenerationConfig

logger = logging.getLogger(__name__)

CACHE_BUCKET = 64
COMPILE_DEVICES = ("cuda", "xpu")
STATE_ATTRIBUTE = "_fast_generation"


def round_up(n: int, multiple: int) -> int:
    """Smallest multiple of ``multiple`` (>= 1) that is >= ``n`` (>= 0). ``round_up(65, 64) == 128``."""
    if multiple < 1:
        raise ValueError(f"multiple must be >= 1, got {multiple}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return -(-n // multiple) * multiple


def padded_prompt_length(prompt_ids: list[list[int]], pad_to_multiple_of: int | None = None) -> int:
    """Width of TRL's left-padded prompt batch: the longest prompt, rounded up to ``pad_to_multiple_of`` if set.

    ``prompt_ids``: ``B`` token-id lists (ragged). Returns ``P`` of the ``[B, P]`` tensor ``generate`` receives."""
    if len(prompt_ids) == 0:
        raise ValueError("prompt_ids is empty: nothing to generate from")
    longest = max(len(ids) for ids in prompt_ids)
    return round_up(longest, pad_to_multiple_of) if pad_to_multiple_of else longest


def static_cache_length(prompt_length: int, max_new_tokens: int, bucket: int, floor: int | None = None) -> int:
    """Static-cache length ``L`` for a ``[B, prompt_length]`` prompt and ``max_new_tokens`` new tokens.

    ``L = round_up(prompt_length + max_new_tokens, bucket)``, at least ``floor`` (a user's ``max_cache_len``). It is
    >= the ``prompt_length + max_new_tokens - 1`` positions ``generate`` writes, and takes one value per ``bucket``
    of total length, so decode shapes ``[B, 1, 1, L]`` repeat across steps. Example: prompts of 40..80 tokens with
    256 new tokens give ``L`` in {320, 384}."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    length = round_up(prompt_length + max_new_tokens, bucket)
    return max(length, round_up(floor, bucket)) if floor else length


def fast_generation_config(
    base: GenerationConfig,
    prompt_length: int,
    *,
    bucket: int = CACHE_BUCKET,
    compile_config: CompileConfig | None = None,
    compile: bool = True,
) -> GenerationConfig:
    """A copy of TRL's ``base`` config with a static cache of bucketed length and compiled decoding.

    ``base`` is left untouched. ``compile=False`` keeps the static cache but no compilation (the shape logic alone;
    used by the CPU tests). Raises if ``base`` asks for another cache or has no ``max_new_tokens``."""
    if base.cache_implementation not in (None, "static"):
        raise ValueError(
            f"fast_generation uses a static KV cache, but cache_implementation={base.cache_implementation!r}: "
            "unset cache_implementation or set fast_generation=False"
        )
    if base.max_new_tokens is None:
        raise ValueError("fast_generation needs max_new_tokens in the generation config (TRL sets it)")
    config = copy.deepcopy(base)
    config.cache_implementation = "static"
    config.max_cache_len = static_cache_length(prompt_length, base.max_new_tokens, bucket, base.max_cache_len)
    config.disable_compile = not compile
    config.compile_config = compile_config if compile else None
    return config


def _checkpointing_on(model) -> bool:
    """Whether activation (gradient) checkpointing is on; transformers 5.24 renamed it, 5.17 has the old name."""
    flag = getattr(type(model), "is_activation_checkpointing", None)
    return bool(model.is_activation_checkpointing if flag is not None else model.is_gradient_checkpointing)


def _checkpointing_enable(model, kwargs: dict | None) -> None:
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _require_grads_hooks(model) -> list[tuple[dict, int]]:
    """``(hooks dict, key)`` of each ``make_inputs_require_grads`` forward hook on the input embeddings.

    ``activation_checkpointing_enable`` registers one such hook each time and ``..._disable`` removes none (outside
    PEFT), so TRL's toggle around every generation adds one per step; dynamo guards on the hook count and would
    recompile the decode step every step."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if embeddings is None:
        return []
    hooks = embeddings._forward_hooks
    return [(hooks, key) for key, fn in hooks.items() if getattr(fn, "__name__", "") == "make_inputs_require_grads"]


def _is_compile_error(err: BaseException) -> bool:
    from torch._dynamo.exc import TorchDynamoException
    from torch._inductor.exc import InductorError

    return isinstance(err, (TorchDynamoException, InductorError))


@dataclass
class FastGeneration:
    """Run state of the fast path on one trainer (``trainer._fast_generation``, made on first use).

    ``bucket``: cache-length multiple. ``compile``: compile the decode step (False: static cache only).
    ``compile_config``: one ``CompileConfig`` for the run (None: transformers' default); a ``CompileConfig`` with
    ``_compile_all_devices=True`` compiles on any device, CPU included. ``compile_devices``: device types on which
    compiled decoding is used; elsewhere TRL's path runs unless ``compile_config._compile_all_devices``.
    ``disabled``: why the fast path is off for the rest of the run (None while on)."""

    bucket: int = CACHE_BUCKET
    compile: bool = True
    compile_config: CompileConfig | None = None
    compile_devices: tuple[str, ...] = COMPILE_DEVICES
    disabled: str | None = None
    calls: int = 0
    fallbacks: int = 0
    cache_lengths: set[int] = field(default_factory=set)

    def off_because(self, trainer: Any) -> str | None:
        """Why the fast path does not apply to ``trainer`` (one line), or None when it does."""
        if self.disabled is not None:
            return self.disabled
        args = trainer.args
        if getattr(trainer, "use_vllm", False):
            return "use_vllm=True generates with vLLM"
        if getattr(trainer, "use_transformers_continuous_batching", False):
            return "use_transformers_continuous_batching=True generates with transformers' batching engine"
        if getattr(trainer, "is_deepspeed_enabled", False) or getattr(trainer, "is_fsdp_enabled", False):
            return "DeepSpeed/FSDP shard the parameters that a compiled decode step would capture"
        if args.cache_implementation not in (None, "static"):
            raise ValueError(
                "fast_generation=True uses a static KV cache, but "
                f"cache_implementation={args.cache_implementation!r}: unset cache_implementation or set "
                "fast_generation=False"
            )
        device = trainer.accelerator.device.type
        everywhere = self.compile_config is not None and bool(self.compile_config._compile_all_devices)
        if self.compile and device not in self.compile_devices and not everywhere:
            return f"compiled decoding needs a {' or '.join(self.compile_devices)} device, the model is on {device}"
        return None


def fast_generation_state(trainer: Any) -> FastGeneration | None:
    """The trainer's :class:`FastGeneration` when the fast path applies, else None (the reason logged once)."""
    if not getattr(trainer.args, "fast_generation", False):
        return None
    state = getattr(trainer, STATE_ATTRIBUTE, None)
    if state is None:
        state = FastGeneration()
        setattr(trainer, STATE_ATTRIBUTE, state)
    reason = state.off_because(trainer)
    if reason is not None:
        if state.disabled is None:
            state.disabled = reason
            logger.warning("fast_generation: %s; using TRL's generation.", reason)
        return None
    return state


def generate_single_turn(trainer: Any, stock, prompt_ids: list[list[int]], *args, **kwargs):
    """``trainer._generate_single_turn`` through the fast path when it applies, else ``stock`` (TRL's method).

    ``stock(prompt_ids, *args, **kwargs)`` is TRL's bound ``_generate_single_turn``; it is called with
    ``trainer.generation_config`` swapped for :func:`fast_generation_config`'s copy and restored afterwards.
    Returns TRL's ``(completion_ids, logprobs)``: ``B`` lists of token ids (EOS kept, padding dropped) and None."""
    state = fast_generation_state(trainer)
    if state is None:
        return stock(prompt_ids, *args, **kwargs)
    base = trainer.generation_config
    prompt_length = padded_prompt_length(prompt_ids, trainer.pad_to_multiple_of)
    config = fast_generation_config(
        base, prompt_length, bucket=state.bucket, compile_config=state.compile_config, compile=state.compile
    )
    model = trainer.accelerator.unwrap_model(trainer.model_wrapped)
    checkpointing = _checkpointing_on(model)
    input_grads_hooked = bool(_require_grads_hooks(model))
    for hooks, key in _require_grads_hooks(model):  # no grads in generation; a constant hook count keeps guards valid
        del hooks[key]
    trainer.generation_config = config
    try:
        out = stock(prompt_ids, *args, **kwargs)
    except Exception as err:
        if state.calls > 0 and not _is_compile_error(err):
            raise
        message = " ".join(str(err).split())[:300]  # one log line
        state.disabled = f"the fast path failed ({type(err).__name__}: {message})"
        state.fallbacks += 1
        logger.warning("fast_generation: %s; using TRL's generation for the rest of the run.", state.disabled)
    else:
        state.calls += 1
        state.cache_lengths.add(config.max_cache_len)
        return out
    finally:
        trainer.generation_config = base
        if input_grads_hooked and not _require_grads_hooks(model):  # TRL re-enables checkpointing, which adds one
            model.enable_input_require_grads()
    if checkpointing and not _checkpointing_on(model):  # TRL's unwrap context does not restore it on error
        _checkpointing_enable(model, trainer.args.gradient_checkpointing_kwargs)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return stock(prompt_ids, *args, **kwargs)
