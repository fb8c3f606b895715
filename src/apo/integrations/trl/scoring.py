"""Score only the completion tokens on CPU: TRL's fused LM head in its compact mode.

TRL 1.16 computes per-token log-probs through a fused LM head (``trl.trainer.utils.add_fused_lm_head``): the
backbone runs on the whole ``[B, prompt + completion]`` sequence, then ``ChunkedLogProbFunction`` projects hidden
states through the LM head in vocabulary tiles and returns ``log_softmax(h W^T / T)[label]`` (and the entropy) per
position, recomputing each tile in the backward instead of keeping ``[N, V]`` logits. Which positions it projects
depends on the device:

- on CUDA/XPU with Triton (``compact``): only the ``N = Σ completion lengths`` positions whose label is not ``-100``,
  ``hidden_states[mask]``, scattered back into ``[B, T - 1]`` with zeros elsewhere;
- everywhere else, CPU included: all ``B (T - 1)`` positions, prompts and padding too, then masked to zero — so that
  an XLA device (Neuron) sees one tile shape per sequence length and does not recompile on every batch.

On CPU that second choice only costs time: with SmolLM2-135M (vocabulary 49,152) on ``smollm2-chain-sum`` a batch is
``[32, 88]`` with ~400 completion tokens, and the LM head's forward + backward over all 2,784 positions took 9.6 s of
a 26 s step (``torch.profiler``, 2 threads). :func:`score_completions_only` runs TRL's own compact branch on CPU for
the duration of one ``_get_per_token_logps_and_entropies`` call, by letting TRL's ``compact`` test (the module
global ``trl.trainer.utils._use_triton``, read at call time) answer ``True`` for CPU tensors. The kernel itself is
untouched: ``ChunkedLogProbFunction`` reads its own module's ``_use_triton`` and keeps its torch path on CPU.

Equivalence: the same function on a subset of its rows; log-probs and entropies at completion positions equal the
all-positions ones up to float rounding of the matmul blocking (row count differs), and every other position is 0 in
both (``masked_scatter`` vs ``masked_fill``). Tested in ``tests/test_trainer.py`` against TRL's stock path, values
and gradients. If a TRL version has no ``_use_triton`` there, nothing is swapped and TRL's path runs as it is.
Other devices without Triton (``mps``, CUDA without Triton) keep TRL's choice: the compact branch would likely pay
there too, but it has not been run on them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import trl.trainer.utils as trl_utils

COMPACT_DEVICE_TYPES = ("cpu",)  # where scoring fewer positions has no recompilation cost


@contextlib.contextmanager
def score_completions_only(device: torch.device) -> Iterator[bool]:
    """Within the block, TRL's fused LM head scores only non-``-100`` label positions on ``device`` (CPU).

    Yields whether the compact branch was switched on (``False``: another device type, or a TRL without the hook —
    then TRL's own choice stands). Restores TRL's function on exit, also on error. The swap is module-global: two
    threads of one process scoring at once could leave it in place (CPU tensors would then keep the compact branch).
    """
    stock = getattr(trl_utils, "_use_triton", None)
    if device.type not in COMPACT_DEVICE_TYPES or stock is None:
        yield False
        return

    def compact_here(dev: torch.device) -> bool:
        return dev.type in COMPACT_DEVICE_TYPES or stock(dev)

    trl_utils._use_triton = compact_here
    try:
        yield True
    finally:
        trl_utils._use_triton = stock
