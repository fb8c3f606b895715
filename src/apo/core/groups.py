"""Group bookkeeping: from flat per-completion rows to ``[B, G]`` groups and back.

Every group objective in this package (APO, ADPO, the ESS solver, the guarded schedule) is a function of whole
groups: the P = G completions sampled for one prompt. Rows reach the loss in whatever order the trainer's batching
left them, so the grouping is *verified*, never assumed: :func:`make_groups` checks that every group id occurs
exactly ``G`` times and builds the gather index from the ids themselves. Nothing is reshaped on trust, truncated or
silently reordered (the published verl fork reshaped shuffled micro-batches with ``.view(-1, G)``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class GroupIndex:
    """Verified grouping of ``N = B * G`` flat rows into ``B`` groups of ``G``.

    Attributes:
        index_BG: ``[B, G]`` long tensor; ``index_BG[b, g]`` is the flat row of the ``g``-th member of group ``b``.
            Members keep their relative order in the flat batch, groups are sorted by id.
        group_ids_B: ``[B]`` the id of each group.
    """

    index_BG: Tensor
    group_ids_B: Tensor

    @property
    def num_groups(self) -> int:
        return self.index_BG.shape[0]

    @property
    def group_size(self) -> int:
        return self.index_BG.shape[1]

    def gather(self, values_N: Tensor) -> Tensor:
        """``values_N[N, ...]`` -> ``values_BG[B, G, ...]`` (differentiable)."""
        if values_N.shape[0] != self.index_BG.numel():
            raise ValueError(
                f"gather got {values_N.shape[0]} rows but the grouping holds {self.index_BG.numel()} "
                f"({self.num_groups} groups x {self.group_size})"
            )
        return values_N[self.index_BG]

    def scatter(self, values_BG: Tensor) -> Tensor:
        """Inverse of :meth:`gather`: ``values_BG[B, G, ...]`` -> ``values_N[N, ...]`` in the original row order."""
        if values_BG.shape[:2] != self.index_BG.shape:
            raise ValueError(
                f"scatter expects leading shape {tuple(self.index_BG.shape)}, got {tuple(values_BG.shape)}"
            )
        out = values_BG.new_empty((self.index_BG.numel(), *values_BG.shape[2:]))
        out[self.index_BG.reshape(-1)] = values_BG.reshape(-1, *values_BG.shape[2:])
        return out


def make_groups(group_ids_N: Tensor, group_size: int | None = None, *, hint: str = "") -> GroupIndex:
    """Verify that ``group_ids_N`` forms whole groups of ``group_size`` and return the :class:`GroupIndex`.

    Args:
        group_ids_N: ``[N]`` integer tensor, one group id (prompt id) per completion, in any order.
        group_size: expected ``G``; ``None`` takes the size of the groups found (they must still all be equal).
        hint: appended to error messages, to name the setting that keeps groups whole in the caller's framework.

    Raises:
        ValueError: ids not 1-D integers, ``G < 2``, or any group id present a number of times other than ``G``
            (the message names the first broken groups and their counts).
    """
    suffix = f" {hint}" if hint else ""
    if group_ids_N.dim() != 1 or group_ids_N.dtype.is_floating_point or group_ids_N.dtype == torch.bool:
        raise ValueError(
            f"group ids must be a 1-D integer tensor, got shape {tuple(group_ids_N.shape)} "
            f"dtype {group_ids_N.dtype}.{suffix}"
        )
    n = group_ids_N.numel()
    if n == 0:
        raise ValueError(f"empty batch: no completions to group.{suffix}")
    ids_B, inverse_N, counts_B = torch.unique(group_ids_N, return_inverse=True, return_counts=True)
    G = int(counts_B[0]) if group_size is None else int(group_size)
    if G < 2:
        raise ValueError(
            f"group size must be >= 2 (a group objective needs several completions per prompt), got {G}.{suffix}"
        )
    bad = counts_B != G
    if bool(bad.any()):
        bad_ids, bad_counts = ids_B[bad][:5].tolist(), counts_B[bad][:5].tolist()
        listing = ", ".join(f"group {i}: {c}" for i, c in zip(bad_ids, bad_counts, strict=True))
        raise ValueError(
            f"broken groups: every group id must occur exactly G={G} times in the batch, but "
            f"{int(bad.sum())} of {ids_B.numel()} groups do not ({listing}).{suffix}"
        )
    order_N = torch.argsort(inverse_N, stable=True)
    return GroupIndex(index_BG=order_N.view(ids_B.numel(), G), group_ids_B=ids_B)
