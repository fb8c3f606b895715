"""Group-preserving batching for TRL's generation batches (pure functions, no trainer).

TRL's ``GRPOTrainer`` generates one *generation batch* per process (``per_device_train_batch_size *
steps_per_generation`` rows), shuffles it row-wise (``shuffle_sequence_dict``) and cuts it into
``steps_per_generation`` micro-batches (``split_tensor_dict``). A row-wise shuffle scatters the completions of a
prompt over several micro-batches, which a group objective cannot tolerate. Here the shuffle permutes whole groups
(one ``torch.randperm`` over groups from the global generator, as TRL's row permutation is), so that with
``per_device_train_batch_size % G == 0`` every chunk of ``split_tensor_dict`` holds whole groups.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from apo.core.groups import make_groups


def local_group_ids(prompts: Sequence[Any], group_size: int, *, first_group: int, hint: str = "") -> Tensor:
    """``[N]`` group ids for a process's generation batch as TRL's ``RepeatSampler`` lays it out.

    The sampler emits each prompt ``G`` times in a row and every process receives a contiguous slice whose length is
    a multiple of ``G``, so rows ``[b G, (b + 1) G)`` are one group; its id is ``first_group + b``. This layout is
    *checked*, not trusted: the ``N`` rows must divide by ``G`` and the ``G`` prompts of each block must be equal.

    Args:
        prompts: the ``N`` prompts of the local generation batch, in dataloader order.
        group_size: ``G``.
        first_group: id of the first local group (``process_index * N / G`` plus an offset per generation makes ids
            unique across processes and over the run).
        hint: appended to error messages (the settings to change).
    Returns:
        ``[N]`` int64 ids ``first_group + arange(N) // G``.
    Raises:
        ValueError: ``N % G != 0`` or a block of ``G`` rows holding different prompts.
    """
    n, G = len(prompts), int(group_size)
    suffix = f" {hint}" if hint else ""
    if n % G != 0:
        raise ValueError(f"the local generation batch has {n} completions, not a multiple of G={G}.{suffix}")
    for b in range(n // G):
        block = prompts[b * G : (b + 1) * G]
        if any(p != block[0] for p in block[1:]):
            raise ValueError(
                f"rows {b * G}..{(b + 1) * G - 1} of the local generation batch are not {G} completions of one "
                f"prompt: the sampler did not lay out whole groups.{suffix}"
            )
    return first_group + torch.arange(n, dtype=torch.long) // G


def permute_batch(batch: dict[str, Any], perm_N: Tensor) -> dict[str, Any]:
    """Apply the row permutation ``perm_N`` to every per-row entry of ``batch`` (as TRL's ``shuffle_sequence_dict``):
    tensors with ``ndim >= 1`` and lists are permuted along the first dimension; ``None`` and 0-d tensors are kept."""

    def permute(v):
        if v is None or (isinstance(v, Tensor) and v.ndim == 0):
            return v
        if isinstance(v, Tensor):
            return v[perm_N.to(v.device)]
        return [v[i] for i in perm_N.tolist()]

    return {key: permute(val) for key, val in batch.items()}


def shuffle_whole_groups(
    batch: dict[str, Any], group_size: int, *, key: str = "group_ids", hint: str = ""
) -> dict[str, Any]:
    """Shuffle a generation batch by whole groups: groups in random order, each group's rows contiguous.

    ``perm_N = index_BG[randperm(B)].flatten()`` with ``index_BG`` from :func:`apo.make_groups` on
    ``batch[key]`` (so the groups are verified, and need not be contiguous on input). Members keep their relative
    order. The permutation draws from torch's global generator, like TRL's row-wise shuffle, so a seeded run is
    reproducible. Cutting the result into chunks of a multiple of ``G`` rows gives whole groups in every chunk.
    """
    groups = make_groups(batch[key].cpu(), group_size, hint=hint)
    perm_N = groups.index_BG[torch.randperm(groups.num_groups)].reshape(-1)
    return permute_batch(batch, perm_N)


def fill_unscorable(rewards_BG: Tensor) -> Tensor:
    """Replace NaN rewards (completions no reward function could score) by the mean of their group's scored rewards.

    TRL marks such rows NaN, leaves them out of the group baseline and sets their advantage to 0; the analogue for a
    listwise target is a reward at the group mean (z-score 0). A group with no scored member gets all zeros (equal
    rewards: a uniform target, no signal). ``[B, G] -> [B, G]``.
    """
    nan_BG = torch.isnan(rewards_BG)
    if not bool(nan_BG.any()):
        return rewards_BG
    mean_B1 = torch.nanmean(rewards_BG, dim=-1, keepdim=True).nan_to_num(0.0)
    return torch.where(nan_BG, mean_B1.expand_as(rewards_BG), rewards_BG)
