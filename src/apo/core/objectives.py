"""Policy objectives: APO (Eq. 7), ADPO-Softmax, GRPO and GSPO, each returning ``(loss, metrics)``.

Two layers:

* group-level pure functions on ``[B, G]`` sequence scores (:func:`apo_loss`, :func:`adpo_loss`) and token-level ones
  on ``[N, T]`` log-probs (:func:`grpo_loss`, :func:`gspo_loss`);
* a registry of *batch objectives* sharing one signature, chosen by name (:func:`get_objective`)::

      fn(logp_NT, old_logp_NT, mask_NT, rewards_N, group_ids_N, **params) -> (loss, metrics)

  They verify the grouping (:func:`apo.core.groups.make_groups`) before anything is reshaped.

Losses are means over groups (APO, ADPO) or follow the chosen token aggregation (GRPO, GSPO); scaling for gradient
accumulation is the caller's business.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from .diagnostics import apo_metrics
from .divergence import alpha_divergence_from_logs, anchored_log_policy, check_alpha
from .groups import make_groups
from .scores import sequence_logprob
from .targets import boltzmann_log_target, check_finite, group_advantages, zero_variance_groups

AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum")


def check_weight_clip(weight_clip: tuple[float, float] | None) -> tuple[float, float] | None:
    """Validate ``(w_min, w_max)`` of Eq. 24: ``0 <= w_min <= 1 <= w_max``; ``None`` disables clipping."""
    if weight_clip is None:
        return None
    w_min, w_max = (float(w) for w in weight_clip)
    if not (0.0 <= w_min <= 1.0 <= w_max):
        raise ValueError(f"weight_clip must satisfy 0 <= w_min <= 1 <= w_max, got {weight_clip!r}")
    return w_min, w_max


def _clipped_surrogate(log_q_BG: Tensor, log_p_BG: Tensor, alpha: float, weight_clip: tuple[float, float]) -> Tensor:
    """``[B]`` surrogate whose gradient is ``-(1/a) sum_i p_i clip(r_i^a, w_min, w_max) d log p_i`` (Eq. 11 + 24).

    Because ``sum_i p_i d log p_i = 0`` for ``p = softmax(u)``, the weight may be shifted by 1 without changing the
    gradient; we use ``(clip(r^a) - 1) / a = clamp(expm1(a d), w_min - 1, w_max - 1) / a``, which stays finite as
    ``a -> 0`` (limit ``d = log q - log p``, where clipping at ``w = 1`` is inactive)."""
    with torch.no_grad():
        d = log_q_BG - log_p_BG
        p = log_p_BG.exp()
        if alpha == 0.0:
            coef = p * d
        else:
            # p * (clip(r^a) - 1) in log space: exp(log p + clamp(a d, log w_min, log w_max)) - p. A one-sided clip
            # (w_max = inf) with r^a overflowing and p underflowing would otherwise give inf * 0 = NaN.
            lo = math.log(weight_clip[0]) if weight_clip[0] > 0 else -math.inf
            log_w = (alpha * d).clamp(lo, math.log(weight_clip[1]))
            coef = torch.expm1(log_w) * p
            big = log_w.abs() > 1.0  # away from w = 1 there is no cancellation: take the product in log space
            coef = torch.where(big, torch.exp(log_p_BG + log_w) - p, coef) / alpha
    return -(coef * log_p_BG).sum(-1)


def apo_loss(
    seq_logp_BG: Tensor,
    ref_seq_logp_BG: Tensor,
    rewards_BG: Tensor,
    *,
    alpha: float,
    tau_anchor: float = 1.0,
    beta_reward: float = 1.0,
    eps: float = 1e-6,
    weight_clip: tuple[float, float] | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """APO loss ``L = 1/B sum_b D_alpha(q_b || p_theta,b)`` (Eq. 6-7, Algorithm 1 line 22).

    ``q = softmax(zscore(R) / beta_r)`` (Eq. 4-5), ``p_theta = softmax((l - l_ref) / tau_anc)`` (Eq. 2-3). Its
    gradient is Theorem 4.1's ``-(1/a) E_p[r^a d log p]``. With ``weight_clip = (w_min, w_max)`` (Eq. 24) the
    returned loss keeps the *value* of ``D_alpha`` and its gradient becomes ``-(1/a) E_p[clip(r^a) d log p]``
    (straight-through: ``D.detach() + S - S.detach()`` with the surrogate ``S`` of :func:`_clipped_surrogate`).

    On-policy (``l = l_ref``, so ``u = 0`` and ``p`` uniform) the gradient for completion ``i`` reduces to
    ``-(1 / (a tau)) (w_i - mean_j w_j) d l_i`` with ``w_i = q_i^a P^(a-1)``: a weighted policy gradient.

    Args:
        seq_logp_BG: ``[B, G]`` policy sequence log-probs (differentiable).
        ref_seq_logp_BG: ``[B, G]`` anchor (``pi_old``) sequence log-probs.
        rewards_BG: ``[B, G]`` rewards.
        alpha: in [0, 1]. tau_anchor: ``tau_anc > 0``. beta_reward: ``beta_r > 0``. eps: Eq. 4's epsilon.
        weight_clip: optional ``(w_min, w_max)`` with ``0 <= w_min <= 1 <= w_max``.
    Returns:
        ``(loss, metrics)``: a scalar, and the :func:`apo.core.diagnostics.apo_metrics` dict.
    """
    alpha = check_alpha(alpha)
    weight_clip = check_weight_clip(weight_clip)
    log_q_BG = boltzmann_log_target(rewards_BG, beta_reward, eps)
    log_p_BG = anchored_log_policy(seq_logp_BG, ref_seq_logp_BG, tau_anchor)
    divergence_B = alpha_divergence_from_logs(log_q_BG, log_p_BG, alpha)
    if weight_clip is None:
        loss = divergence_B.mean()
    else:
        surrogate_B = _clipped_surrogate(log_q_BG, log_p_BG, alpha, weight_clip)
        loss = (divergence_B.detach() + surrogate_B - surrogate_B.detach()).mean()
    u_BG = (seq_logp_BG.detach() - ref_seq_logp_BG) / tau_anchor
    metrics = apo_metrics(
        log_q_BG, log_p_BG, u_BG, alpha, zero_variance_groups(rewards_BG), weight_clip, divergence_B=divergence_B
    )
    return loss, metrics


def adpo_loss(
    seq_logp_BG: Tensor,
    ref_seq_logp_BG: Tensor,
    rewards_BG: Tensor,
    *,
    tau_anchor: float = 1.0,
    beta_reward: float = 1.0,
    eps: float = 1e-6,
) -> tuple[Tensor, dict[str, Tensor]]:
    """ADPO-Softmax loss ``L = -1/B sum_b sum_i q_bi log p_theta,bi`` (the anchored listwise cross-entropy).

    Same target and anchored policy as :func:`apo_loss`; equals ``KL(q || p) + H(q)``, so its gradient is APO's at
    ``alpha = 1``. Metrics are APO's diagnostics at ``alpha = 1`` plus ``adpo/cross_entropy``.
    """
    log_q_BG = boltzmann_log_target(rewards_BG, beta_reward, eps)
    log_p_BG = anchored_log_policy(seq_logp_BG, ref_seq_logp_BG, tau_anchor)
    loss = -(log_q_BG.exp() * log_p_BG).sum(-1).mean()
    u_BG = (seq_logp_BG.detach() - ref_seq_logp_BG) / tau_anchor
    metrics = apo_metrics(log_q_BG, log_p_BG, u_BG, 1.0, zero_variance_groups(rewards_BG))
    metrics["adpo/cross_entropy"] = loss.detach()
    return loss, metrics


def aggregate(per_token_loss_NT: Tensor, mask_NT: Tensor, agg: str) -> Tensor:
    """Reduce a ``[N, T]`` (or ``[N, 1]``, broadcast) per-token loss under the ``[N, T]`` mask.

    ``token-mean``: ``sum(m l) / sum(m)`` over the whole batch (TRL ``bnpo``/DAPO per micro-batch);
    ``seq-mean-token-mean``: ``mean_i sum_t(m l) / sum_t m`` (TRL ``grpo``);
    ``seq-mean-token-sum``: ``mean_i sum_t(m l)``.
    """
    m = mask_NT.to(per_token_loss_NT.dtype)
    masked = per_token_loss_NT * m
    if agg == "token-mean":
        return masked.sum() / m.sum().clamp(min=1.0)
    if agg == "seq-mean-token-mean":
        return (masked.sum(-1) / m.sum(-1).clamp(min=1.0)).mean()
    if agg == "seq-mean-token-sum":
        return masked.sum(-1).mean()
    raise ValueError(f"unknown loss aggregation {agg!r} (setting `loss_agg`); valid: {AGGREGATIONS}")


def _clipped_ratio_loss(
    log_ratio: Tensor,
    advantages_N: Tensor,
    logp_NT: Tensor,
    mask_NT: Tensor,
    eps_low: float,
    eps_high: float,
    agg: str,
    ref_logp_NT: Tensor | None,
    beta: float,
    prefix: str,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO-style clipped objective on a ``[N, T]`` or ``[N, 1]`` log-ratio, with optional k3 KL, aggregated."""
    if eps_low < 0 or eps_high < 0:
        raise ValueError(f"clip ranges must be >= 0, got epsilon_low={eps_low}, epsilon_high={eps_high}")
    adv = advantages_N.unsqueeze(-1)
    ratio = torch.exp(log_ratio)
    clipped = ratio.clamp(1.0 - eps_low, 1.0 + eps_high)
    per_token = -torch.min(ratio * adv, clipped * adv)
    metrics: dict[str, Tensor] = {}
    if beta != 0.0:
        if ref_logp_NT is None:
            raise ValueError("beta != 0 needs reference log-probs (ref_logp_NT)")
        delta = ref_logp_NT - logp_NT
        kl = torch.exp(delta) - delta - 1.0
        per_token = per_token + beta * kl
        metrics[f"{prefix}/kl"] = aggregate(kl.detach(), mask_NT, "token-mean")
    loss = aggregate(per_token, mask_NT, agg)
    with torch.no_grad():
        low = (ratio < 1.0 - eps_low) & (adv < 0)
        high = (ratio > 1.0 + eps_high) & (adv > 0)
        if log_ratio.shape[-1] == 1:
            metrics[f"{prefix}/clip_frac_low"] = low.float().mean()
            metrics[f"{prefix}/clip_frac_high"] = high.float().mean()
            metrics[f"{prefix}/ratio_mean"] = ratio.mean()
        else:
            metrics[f"{prefix}/clip_frac_low"] = aggregate(low.float(), mask_NT, "token-mean")
            metrics[f"{prefix}/clip_frac_high"] = aggregate(high.float(), mask_NT, "token-mean")
            metrics[f"{prefix}/ratio_mean"] = aggregate(ratio, mask_NT, "token-mean")
    return loss, metrics


def grpo_loss(
    logp_NT: Tensor,
    old_logp_NT: Tensor,
    advantages_N: Tensor,
    mask_NT: Tensor,
    *,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    agg: str = "seq-mean-token-mean",
    ref_logp_NT: Tensor | None = None,
    beta: float = 0.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """GRPO token-level clipped objective.

    ``rho_t = exp(logp_t - old_logp_t)``, ``l_t = -min(rho_t A, clip(rho_t, 1-eps_low, 1+eps_high) A)``, plus
    ``beta * k3`` with ``k3 = exp(ref - logp) - (ref - logp) - 1`` when ``beta != 0``; aggregated by ``agg``
    (:func:`aggregate`). Matches TRL's ``GRPOTrainer`` loss (``loss_type="grpo"`` is ``seq-mean-token-mean``).

    Args:
        logp_NT, old_logp_NT: ``[N, T]`` per-token log-probs (current, rollout). advantages_N: ``[N]``.
        mask_NT: ``[N, T]`` completion mask. ref_logp_NT: ``[N, T]`` reference log-probs (needed iff beta != 0).
    """
    return _clipped_ratio_loss(
        logp_NT - old_logp_NT, advantages_N, logp_NT, mask_NT, eps_low, eps_high, agg, ref_logp_NT, beta, "grpo"
    )


def gspo_loss(
    logp_NT: Tensor,
    old_logp_NT: Tensor,
    advantages_N: Tensor,
    mask_NT: Tensor,
    *,
    eps_low: float = 3e-4,
    eps_high: float = 4e-4,
    agg: str = "seq-mean-token-mean",
    ref_logp_NT: Tensor | None = None,
    beta: float = 0.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """GSPO: the clipped objective on the sequence-level ratio ``s_i = exp(mean_t (logp - old_logp))``.

    ``l_i = -min(s_i A_i, clip(s_i, 1-eps_low, 1+eps_high) A_i)`` broadcast over the sequence's tokens and then
    aggregated by ``agg`` (with ``seq-mean-token-mean`` that is ``mean_i l_i``), the GSPO paper's defaults
    ``eps = (3e-4, 4e-4)``. Matches TRL's ``importance_sampling_level="sequence"`` with ``loss_type="grpo"``.
    """
    m = mask_NT.to(logp_NT.dtype)
    log_s_N1 = (((logp_NT - old_logp_NT) * m).sum(-1) / m.sum(-1).clamp(min=1.0)).unsqueeze(-1)
    return _clipped_ratio_loss(
        log_s_N1, advantages_N, logp_NT, mask_NT, eps_low, eps_high, agg, ref_logp_NT, beta, "gspo"
    )


def on_policy_advantages(
    rewards_BG: Tensor,
    *,
    alpha: float,
    tau_anchor: float,
    beta_reward: float,
    eps: float = 1e-6,
    weight_clip: tuple[float, float] | None = None,
) -> Tensor:
    """Per-completion advantages whose policy gradient is APO's at the rollout policy (``u = 0``).

    At ``u = 0`` the anchored policy is uniform, ``p_i = 1/G``, the ratio is ``r_i = q_i / p_i = G q_i`` and
    Theorem 4.1 gives ``dL_b/dl_i = -(1/(alpha tau)) (w_i - mean_j w_j)`` with ``w_i = q_i^alpha G^(alpha-1) =
    r_i^alpha / G``. A per-sample loss ``-(1/(B G)) sum_i A_i l_i`` (verl ``seq-mean-token-sum`` over ``N = B G``
    rows, ratio 1) has the gradient of ``L = mean_b L_b`` when::

        A_i = G (w_i - mean_j w_j) / (alpha tau) = (e_i - mean_j e_j) / tau,   e_i = expm1(alpha log r_i) / alpha

    (shifting ``r^alpha`` by 1 leaves the centred value unchanged and keeps ``alpha -> 0`` finite: ``e_i -> log
    r_i``). With ``weight_clip = (w_min, w_max)`` (Eq. 24), ``r^alpha`` is clipped first, as in
    :func:`apo_loss`. Groups with equal rewards get ``A = 0``.

    Args:
        rewards_BG: ``[B, G]`` rewards.
    Returns:
        ``[B, G]`` advantages (float64).
    """
    weight_clip = check_weight_clip(weight_clip)
    log_q_BG = boltzmann_log_target(rewards_BG.double(), beta_reward, eps)
    log_r_BG = log_q_BG + math.log(rewards_BG.shape[1])
    if alpha == 0.0:
        e_BG = log_r_BG
    else:
        e_BG = torch.expm1(alpha * log_r_BG)
        if weight_clip is not None:
            e_BG = e_BG.clamp(weight_clip[0] - 1.0, weight_clip[1] - 1.0)
        e_BG = e_BG / alpha
    return (e_BG - e_BG.mean(-1, keepdim=True)) / tau_anchor


# ----------------------------------------------------------------------------------------------------------------
# Batch objectives: one signature, chosen by name.


def check_objective_kwargs(fn: Callable, kwargs: Mapping[str, Any], name: str = "") -> None:
    """Raise a one-line ``ValueError`` when ``fn`` does not accept the keyword settings ``kwargs`` (a misspelt one,
    with the accepted ones listed) or lacks a required one."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return
    if any(p.kind is p.VAR_KEYWORD for p in params):
        accepted = None
    else:
        accepted = [p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)][3:]
        accepted += [p.name for p in params if p.kind is p.KEYWORD_ONLY and p.name not in accepted]
    label = name or getattr(fn, "__name__", repr(fn))
    if accepted is not None:
        unknown = [k for k in kwargs if k not in accepted]
        if unknown:
            raise ValueError(
                f"algorithm {label!r} does not accept the setting {unknown[0]!r} (objective_kwargs); "
                f"it accepts: {accepted or 'none'}"
            )
    missing = [p.name for p in params if p.kind is p.KEYWORD_ONLY and p.default is p.empty and p.name not in kwargs]
    if missing:
        raise ValueError(f"algorithm {label!r} needs the setting {missing[0]!r}: add it to objective_kwargs")


def batch_objective(fn: Callable[..., tuple[Tensor, dict[str, Tensor]]], name: str = ""):
    """``fn`` (a group objective) on a flat batch::

        objective(logp_NT, old_logp_NT, mask_NT, rewards_N, group_ids_N, *, sequence_score="sum",
                  group_size=None, group_hint="", **settings) -> (loss, metrics)

    Verifies the grouping (:func:`apo.core.groups.make_groups`) before anything is reshaped, reduces token log-probs
    to sequence scores and calls ``fn(logp_BG, old_logp_BG, rewards_BG, **settings)``; the anchor is
    ``old_logp_NT``, or the detached current log-probs when ``None`` (exactly on-policy). A setting ``fn`` does not
    accept raises ``ValueError`` naming it."""

    def objective(
        logp_NT: Tensor,
        old_logp_NT: Tensor | None,
        mask_NT: Tensor,
        rewards_N: Tensor,
        group_ids_N: Tensor,
        *,
        sequence_score: str = "sum",
        group_size: int | None = None,
        group_hint: str = "",
        **settings: Any,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        check_objective_kwargs(fn, settings, name)
        check_finite("rewards", rewards_N)
        groups = make_groups(group_ids_N, group_size, hint=group_hint)
        old = logp_NT.detach() if old_logp_NT is None else old_logp_NT
        seq_N = sequence_logprob(logp_NT, mask_NT, sequence_score)
        ref_N = sequence_logprob(old, mask_NT, sequence_score)
        return fn(groups.gather(seq_N), groups.gather(ref_N), groups.gather(rewards_N), **settings)

    objective.__name__ = f"{getattr(fn, '__name__', 'group')}_on_batch"
    objective.__doc__ = f"{getattr(fn, '__name__', fn)} on a flat batch (see :func:`batch_objective`)."
    return objective


apo_objective = batch_objective(apo_loss, "apo")
adpo_objective = batch_objective(adpo_loss, "adpo")


def _token_objective(loss_fn, default_eps):
    def objective(
        logp_NT: Tensor,
        old_logp_NT: Tensor | None,
        mask_NT: Tensor,
        rewards_N: Tensor,
        group_ids_N: Tensor,
        *,
        advantages_N: Tensor | None = None,
        eps_low: float = default_eps[0],
        eps_high: float = default_eps[1],
        loss_agg: str = "seq-mean-token-mean",
        ref_logp_NT: Tensor | None = None,
        beta: float = 0.0,
        group_size: int | None = None,
        group_hint: str = "",
        **unused,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        if advantages_N is None:  # TRL's default: group z-score with the unbiased std and eps 1e-4
            check_finite("rewards", rewards_N)
            groups = make_groups(group_ids_N, group_size, hint=group_hint)
            advantages_N = groups.scatter(group_advantages(groups.gather(rewards_N), 1e-4, unbiased=True))
        old = logp_NT.detach() if old_logp_NT is None else old_logp_NT
        return loss_fn(
            logp_NT,
            old,
            advantages_N,
            mask_NT,
            eps_low=eps_low,
            eps_high=eps_high,
            agg=loss_agg,
            ref_logp_NT=ref_logp_NT,
            beta=beta,
        )

    objective.__name__ = loss_fn.__name__.replace("_loss", "_objective")
    objective.__doc__ = (
        f"{loss_fn.__name__} on a flat batch; advantages from the group z-score of ``rewards_N`` "
        "(unbiased std, eps 1e-4, as TRL) unless ``advantages_N`` is given."
    )
    return objective


grpo_objective = _token_objective(grpo_loss, (0.2, 0.2))
gspo_objective = _token_objective(gspo_loss, (3e-4, 4e-4))

OBJECTIVES: dict[str, Callable[..., tuple[Tensor, dict[str, Tensor]]]] = {
    "apo": apo_objective,
    "adpo": adpo_objective,
    "grpo": grpo_objective,
    "gspo": gspo_objective,
}


def get_objective(name: str) -> Callable[..., tuple[Tensor, dict[str, Tensor]]]:
    """The batch objective registered as ``name``; unknown names raise ``ValueError`` listing the valid ones."""
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise ValueError(f"unknown algorithm {name!r} (setting `algorithm`); valid: {sorted(OBJECTIVES)}") from None


def register_objective(name: str, fn: Callable[..., tuple[Tensor, dict[str, Tensor]]]) -> None:
    """Add a batch objective under ``name`` (same signature as the built-ins); an existing name raises."""
    if name in OBJECTIVES:
        raise ValueError(f"objective {name!r} is already registered")
    OBJECTIVES[name] = fn
