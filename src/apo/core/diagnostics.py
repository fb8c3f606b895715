"""Diagnostics of the APO objective, returned as namespaced metrics (``apo/...``).

All functions run under ``no_grad`` and return 0-d tensors (no host sync; callers call ``.item()`` when logging).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .divergence import _log_ess, alpha_divergence_from_logs


def normalized_entropy(log_p_BG: Tensor) -> Tensor:
    """``[B]``: ``H(p_b) / log G`` in [0, 1] (Eq. 19's ``H-bar`` per group), in float64 after renormalising, so a
    uniform ``p`` gives exactly 1 even from float32 inputs."""
    G = log_p_BG.shape[-1]
    log_p = torch.log_softmax(log_p_BG.double(), -1)
    return -(log_p.exp() * log_p).sum(-1) / math.log(G)


def entropy_confidence(log_p_BG: Tensor) -> float:
    """Confidence ``c_t = 1 - mean_b H(p_b) / log G`` of Eq. 19, as a float in [0, 1].

    With the paper's anchored ``p`` and ``pi_ref = pi_old``, ``p`` is uniform at every on-policy evaluation, so this
    is exactly 0 there (see :mod:`apo.core.schedules`)."""
    with torch.no_grad():
        return float((1.0 - normalized_entropy(log_p_BG.detach()).mean()).clamp(0.0, 1.0))


def sequence_confidence(seq_logp_BG: Tensor, lengths_BG: Tensor) -> float:
    """Confidence from the policy's own length-normalised distribution over each candidate set.

    ``p^seq_b = softmax_i(l_i / |y_i|)``, ``c = 1 - mean_b H(p^seq_b) / log G``. Informative on-policy (it does not
    depend on the anchor): a policy that gives its candidates very different per-token likelihoods is confident.
    """
    with torch.no_grad():
        per_token_BG = seq_logp_BG.detach().double() / lengths_BG.double().clamp(min=1)
        return float((1.0 - normalized_entropy(torch.log_softmax(per_token_BG, -1)).mean()).clamp(0.0, 1.0))


def token_confidence(mean_token_entropy: float, vocab_size: int) -> float:
    """Confidence from the mean next-token entropy: ``c = 1 - H_tok / log V``, clamped to [0, 1]."""
    if vocab_size < 2:
        raise ValueError(f"vocab_size must be >= 2, got {vocab_size}")
    return min(1.0, max(0.0, 1.0 - float(mean_token_entropy) / math.log(vocab_size)))


def weight_variance(log_q_BG: Tensor, log_p_BG: Tensor, alpha: float) -> Tensor:
    """``[B]``: Prop. 4.3's variance proxy ``E_p[r^(2a)] - E_p[r^a]^2`` with ``r = q / p`` (float64)."""
    log_q, log_p = log_q_BG.double(), log_p_BG.double()
    d = log_q - log_p
    m1 = torch.logsumexp(log_p + alpha * d, -1).exp()
    m2 = torch.logsumexp(log_p + 2.0 * alpha * d, -1).exp()
    return m2 - m1 * m1


NAN_WHEN_UNDEFINED = frozenset({"apo/ess_signal"})
"""Metrics of :func:`apo_metrics` taken over a subset of groups: NaN where the subset is empty. Integrations leave
such a value out of their logs (it is undefined, not 0 or 1); every other metric is finite for finite inputs."""


def apo_metrics(
    log_q_BG: Tensor,
    log_p_BG: Tensor,
    u_BG: Tensor,
    alpha: float,
    zero_var_B: Tensor,
    weight_clip: tuple[float, float] | None = None,
    divergence_B: Tensor | None = None,
) -> dict[str, Tensor]:
    """The per-step diagnostics of the APO objective.

    Keys: ``apo/divergence`` (mean ``D_alpha``), ``apo/alpha``, ``apo/ess`` (mean ``ESS / G`` at ``alpha``, all
    groups), ``apo/ess_signal`` (same over groups with reward variance; NaN when there is none),
    ``apo/entropy`` (mean ``H(p) / log G``), ``apo/confidence`` (``1 -`` that, Eq. 19), ``apo/u_abs_max`` and
    ``apo/u_abs_mean`` (how far the policy moved from the anchor, in anchored logits), ``apo/weight_var``
    (Prop. 4.3), ``apo/zero_var_frac``, and with clipping ``apo/clip_frac`` (fraction of ``r^alpha`` outside
    ``[w_min, w_max]``).

    Shapes: ``[B, G]`` inputs, ``zero_var_B`` ``[B]`` bool. Returns 0-d tensors.
    """
    with torch.no_grad():
        log_q, log_p = log_q_BG.detach(), log_p_BG.detach()
        if divergence_B is None:
            divergence_B = alpha_divergence_from_logs(log_q, log_p, alpha)
        G = log_p.shape[-1]
        ess_frac_B = _log_ess(alpha * log_q + (1.0 - alpha) * log_p).exp() / G
        signal_B = ~zero_var_B
        ent_B = normalized_entropy(log_p)
        u = u_BG.detach().abs()
        out = {
            "apo/divergence": divergence_B.detach().mean(),
            "apo/alpha": torch.tensor(float(alpha), dtype=torch.float64),  # exact: the alpha the loss used
            "apo/ess": ess_frac_B.mean(),
            "apo/ess_signal": ess_frac_B[signal_B].mean(),  # NaN when no group carries signal
            "apo/entropy": ent_B.mean().to(log_p.dtype),
            "apo/confidence": (1.0 - ent_B.mean()).clamp(0.0, 1.0).to(log_p.dtype),
            "apo/u_abs_max": u.max(),
            "apo/u_abs_mean": u.mean(),
            "apo/weight_var": weight_variance(log_q, log_p, alpha).mean(),
            "apo/zero_var_frac": zero_var_B.float().mean(),
        }
        if weight_clip is not None:
            log_w = alpha * (log_q - log_p)
            lo, hi = math.log(weight_clip[0]) if weight_clip[0] > 0 else -math.inf, math.log(weight_clip[1])
            out["apo/clip_frac"] = ((log_w < lo) | (log_w > hi)).float().mean()
        return out
