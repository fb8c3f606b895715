"""The group payload: how group ids, rewards and alpha travel from the advantage estimator to the policy loss.

verl 0.9.1 calls a registered policy loss with ``old_log_prob, log_prob, advantages, response_mask, loss_agg_mode,
config, rollout_is_weights`` of one micro-batch: no group id, no reward. The only per-row tensor the estimator writes
and the loss receives is ``advantages`` (``[N, T]``, ``T`` = ``rollout.response_length``). In the legacy trainer
(``trainer.use_v1=false``) it reaches the loss dense, all ``T`` columns intact, rows sliced by verl's own micro-batch
utilities. So the ``apo_group`` estimator stores, in the last :data:`WIDTH` columns of every row::

    [..., MAGIC, G, group, row, reward, alpha_hi, alpha_lo]

* ``MAGIC`` marks a payload row (a loss that finds none names the estimator setting to change);
* ``G`` the group size, ``group`` the group's ordinal in the rollout batch, ``row`` the row's position in it
  (integers, exact in float32 up to 2^24);
* ``reward`` the raw sequence reward ``R_i`` (float32, exactly what verl holds);
* ``alpha_hi + alpha_lo`` the alpha in force for this step (float32 pair, recovers a float64 alpha to ~1e-15).

Columns before the payload hold the on-policy APO advantage (masked by ``response_mask``), so verl's
``critic/advantages/*`` metrics stay meaningful except on responses that reach the last :data:`WIDTH` tokens.
Departure: the per-token meaning of ``advantages`` is given up in this mode; only the APO group losses may read it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

MAGIC = 1048576.5  # 2^20 + 1/2: exact in float32, not an integer, far from any advantage
WIDTH = 7
_COLS = ("magic", "group_size", "group", "row", "reward", "alpha_hi", "alpha_lo")

MISSING_PAYLOAD_HINT = (
    "The APO group losses read group ids and rewards from the advantages written by "
    "`algorithm.adv_estimator=apo_group`, and need the legacy trainer (`trainer.use_v1=false`): the v1 trainer "
    "re-packs advantages per token and drops them."
)


@dataclass(frozen=True)
class GroupPayload:
    """Decoded payload of ``N`` rows: ``group_size`` (int), ``group_ids_N``/``rows_N`` (long), ``rewards_N``
    (float), ``alpha`` (float)."""

    group_size: int
    group_ids_N: Tensor
    rows_N: Tensor
    rewards_N: Tensor
    alpha: float


def split_alpha(alpha: float) -> tuple[float, float]:
    """``alpha -> (hi, lo)``, two float32 values whose float64 sum is ``alpha`` to ~1e-15."""
    hi = float(torch.tensor(alpha, dtype=torch.float32))
    lo = float(torch.tensor(alpha - hi, dtype=torch.float32))
    return hi, lo


def encode(
    advantages_NT: Tensor, group_size: int, group_ids_N: Tensor, rows_N: Tensor, rewards_N: Tensor, alpha: float
) -> Tensor:
    """Write the payload into the last :data:`WIDTH` columns of a copy of ``advantages_NT`` (``[N, T]``, float32).

    Raises:
        ValueError: ``T <= WIDTH`` (the response length leaves no room), ids too large for float32.
    """
    N, T = advantages_NT.shape
    if T <= WIDTH:
        raise ValueError(
            f"the APO group payload needs responses wider than {WIDTH} tokens, got {T}: "
            "raise `actor_rollout_ref.rollout.response_length`"
        )
    if N >= 2**24:
        raise ValueError(f"{N} rows do not fit the float32 payload (max 2^24)")
    hi, lo = split_alpha(alpha)
    out = advantages_NT.to(torch.float32).clone()
    cols = [
        torch.full((N,), MAGIC),
        torch.full((N,), float(group_size)),
        group_ids_N.to(torch.float32),
        rows_N.to(torch.float32),
        rewards_N.to(torch.float32),
        torch.full((N,), hi),
        torch.full((N,), lo),
    ]
    out[:, T - WIDTH :] = torch.stack(cols, dim=-1).to(out.device)
    return out


def has_payload(advantages_NT: Tensor) -> bool:
    """Whether every row carries the payload marker."""
    return (
        advantages_NT.dim() == 2 and advantages_NT.shape[1] > WIDTH and bool((advantages_NT[:, -WIDTH] == MAGIC).all())
    )


def decode(advantages_NT: Tensor) -> GroupPayload:
    """Read the payload of a micro-batch (``[N, T]``).

    Raises:
        ValueError: a row without the marker (the message names the settings), or rows that disagree on ``G`` or
            alpha (a batch that mixes rollout steps).
    """
    if not has_payload(advantages_NT):
        raise ValueError(f"advantages carry no APO group payload. {MISSING_PAYLOAD_HINT}")
    p = advantages_NT[:, -WIDTH:].detach().to(torch.float64)
    sizes, alphas = p[:, 1], p[:, 5] + p[:, 6]
    if bool((sizes != sizes[0]).any()) or bool((alphas != alphas[0]).any()):
        raise ValueError("rows of one micro-batch carry different group sizes or alphas (mixed rollout steps)")
    return GroupPayload(
        group_size=int(sizes[0]),
        group_ids_N=p[:, 2].round().long(),
        rows_N=p[:, 3].round().long(),
        rewards_N=advantages_NT[:, -3].detach(),
        alpha=float(alphas[0]),
    )
