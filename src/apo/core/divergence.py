"""Anchored policy, Csiszar alpha-divergence, its weights, and the effective sample size (paper Sec. 3-5).

Notation (one group = one prompt's candidate set of P = G completions):
    u_i = (l_i - l_ref_i) / tau                 anchored logits (Eq. 2)
    p   = softmax(u)                            anchored policy over the candidate set (Eq. 3)
    q   = softmax(A / beta_r)                   Boltzmann target (Eq. 5, see ``targets.py``)
    D_a(q || p) = (1 - sum_i q_i^a p_i^(1-a)) / (a (1 - a))                                        (Eq. 7)
    r_i = q_i / p_i,  gradient  dD_a = -(1/a) E_p[r^a d log p]                            (Theorem 4.1)

Numerics. Eq. 7 read literally, ``(1 - exp(logsumexp(a log q + (1-a) log p))) / (a (1-a))``, divides a float
rounding error of ~1e-7 by ``a (1-a)``: at ``a = 1e-6`` the value is off by ~0.1. We use two exact rewrites,
each well conditioned on its half of [0, 1]. With ``d_i = log q_i - log p_i`` and ``sum p = sum q = 1``:

    a <= 1/2:  D_a = -1/(1-a) * sum_i p_i expm1(a d_i) / a          -> KL(p || q) at a = 0 (exact)
    a >  1/2:  D_a = -1/a     * sum_i q_i expm1(-(1-a) d_i) / (1-a)  -> KL(q || p) at a = 1 (exact)

Each term ``x_i expm1(g y_i) / g`` is taken as written while ``|g y_i| <= 1`` and as
``(x_i^(1-g) y'_i^g - x_i) / g`` (a difference of two numbers that differ by a factor >= e, so no cancellation,
computed from ``(1-g) log x + g log y <= 0``, so no overflow) beyond. Both branches are exact identities: there is no
jump at the switch points, and ``|u|`` up to 1e4 stays finite. Departure from the issue's literal recipe
(``-expm1(logsumexp(...))``): same value, better conditioned near the limits.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .targets import check_finite, check_positive


def check_alpha(alpha: float) -> float:
    """Return ``alpha`` as a float, or raise ``ValueError`` when it is not in [0, 1] (setting ``alpha``)."""
    a = float(alpha)
    if not (0.0 <= a <= 1.0):
        raise ValueError(f"alpha must be in [0, 1] (alpha=1: forward KL, alpha=0: reverse KL), got {alpha!r}")
    return a


def anchored_log_policy(seq_logp_BG: Tensor, ref_seq_logp_BG: Tensor, tau: float) -> Tensor:
    """Log of the anchored policy over each candidate set (Eq. 2-3), in log space.

    ``u = (l - l_ref) / tau``, ``log p = log_softmax(u)`` over the group dimension.

    Args:
        seq_logp_BG: ``[B, G]`` sequence log-probs ``l_i = log pi_theta(y_i | x)`` (differentiable).
        ref_seq_logp_BG: ``[B, G]`` anchor log-probs ``log pi_ref(y_i | x)``; with ``pi_ref = pi_old`` (Eq. 1) these
            are the rollout policy's, and ``u = 0``, ``p`` uniform, until the policy moves.
        tau: anchor temperature ``tau_anc > 0``.
    Returns:
        ``[B, G]`` ``log p``; rows logsumexp to 0.
    Raises:
        ValueError: ``tau <= 0``, shape mismatch, ``G < 2``, non-finite inputs.
    """
    check_positive("tau_anchor", tau)
    if seq_logp_BG.shape != ref_seq_logp_BG.shape or seq_logp_BG.dim() != 2 or seq_logp_BG.shape[1] < 2:
        raise ValueError(
            f"sequence log-probs must be [B, G] with G >= 2 and match the anchor's: got {tuple(seq_logp_BG.shape)} "
            f"and {tuple(ref_seq_logp_BG.shape)}"
        )
    check_finite("policy sequence log-probs", seq_logp_BG.detach())
    check_finite("anchor sequence log-probs", ref_seq_logp_BG)
    return torch.log_softmax((seq_logp_BG - ref_seq_logp_BG) / tau, dim=-1)


def _scaled_expm1_sum(log_x: Tensor, log_y: Tensor, g: float) -> Tensor:
    """``sum_i x_i expm1(g (log y_i - log x_i)) / g`` over the last dim, exact and stable; ``g = 0`` is the limit
    ``sum_i x_i (log y_i - log x_i)``. Both inputs are log-probabilities (<= 0)."""
    x = log_x.exp()
    d = log_y - log_x
    if g == 0.0:
        return (x * d).sum(-1)
    z = g * d
    small = z.abs() <= 1.0
    zero = torch.zeros((), dtype=z.dtype, device=z.device)
    near = x * torch.expm1(torch.where(small, z, zero))
    # (1-g) log x + g log y <= 0 cannot overflow; select it only where |z| > 1 so no inf reaches the other branch.
    far = torch.exp(torch.where(small, log_x, (1.0 - g) * log_x + g * log_y)) - x
    return torch.where(small, near, far).sum(-1) / g


def alpha_divergence_from_logs(log_q_BG: Tensor, log_p_BG: Tensor, alpha: float) -> Tensor:
    """``D_alpha(q || p)`` per group from log-probabilities (see the module docstring for the formula used).

    Args:
        log_q_BG: ``[B, G]`` log target.
        log_p_BG: ``[B, G]`` log anchored policy (differentiable).
        alpha: in [0, 1]; 0 and 1 give the exact KL limits.
    Returns:
        ``[B]`` divergences, >= 0 (rounding below 0 is clamped in the value, not the gradient), exactly 0 where
        ``p = q``.
    """
    a = check_alpha(alpha)
    if a <= 0.5:
        d_B = -_scaled_expm1_sum(log_p_BG, log_q_BG, a) / (1.0 - a)
    else:
        d_B = -_scaled_expm1_sum(log_q_BG, log_p_BG, 1.0 - a) / a
    # D >= 0 holds exactly; rounding near p = q can leave ~1e-8 below 0 in float32. Clamp the value only, keeping
    # the exact gradient (straight-through), so the reported divergence is never negative.
    return d_B + (d_B.detach().clamp(min=0.0) - d_B.detach())


def alpha_divergence(q_BG: Tensor, log_p_BG: Tensor, alpha: float) -> Tensor:
    """Csiszar alpha-divergence ``D_alpha(q || p_theta)`` of Eq. 7 for each group.

    ``D_a = (1 - sum_i q_i^a p_i^(1-a)) / (a (1 - a))``; ``a -> 1``: ``KL(q || p)`` (forward, mode covering, Eq. 8);
    ``a -> 0``: ``KL(p || q)`` (reverse, mode seeking, Eq. 9). Both limits are returned exactly at ``a = 1`` and
    ``a = 0`` and approached without a jump. Its gradient in ``log_p`` is Theorem 4.1's
    ``-(1/a) sum_i p_i r_i^a d log p_i`` with ``r = q / p``.

    Args:
        q_BG: ``[B, G]`` target probabilities (> 0, rows sum to 1), e.g. :func:`apo.boltzmann_target`.
        log_p_BG: ``[B, G]`` log anchored policy, e.g. :func:`apo.anchored_log_policy` (differentiable).
        alpha: in [0, 1].
    Returns:
        ``[B]`` divergences.
    Raises:
        ValueError: ``alpha`` outside [0, 1], shape mismatch, non-finite ``log_p``.
    """
    if q_BG.shape != log_p_BG.shape:
        raise ValueError(f"q {tuple(q_BG.shape)} and log p {tuple(log_p_BG.shape)} differ in shape")
    check_finite("log p", log_p_BG.detach())
    return alpha_divergence_from_logs(q_BG.log(), log_p_BG, alpha)


def kl_divergence(log_a_BG: Tensor, log_b_BG: Tensor) -> Tensor:
    """``KL(a || b) = sum_i a_i (log a_i - log b_i)`` per group, ``[B]``."""
    return (log_a_BG.exp() * (log_a_BG - log_b_BG)).sum(-1)


def _log_ess(s_XG: Tensor) -> Tensor:
    """log ESS of weights ``w = exp(s)`` along the last dim: ``2 logsumexp(s) - logsumexp(2 s)``."""
    return 2.0 * torch.logsumexp(s_XG, -1) - torch.logsumexp(2.0 * s_XG, -1)


def _check_log_target(log_q: Tensor) -> None:
    """log q <= 0 always; a positive entry means q itself was passed (the ESS functions take log q)."""
    if log_q.numel() and float(log_q.max()) > 1e-6:
        raise ValueError(
            f"log_q_BG has positive entries (max {float(log_q.max()):.4g}): pass log q "
            "(apo.boltzmann_log_target), not q"
        )


def effective_sample_size(log_q_BG: Tensor, log_p_BG: Tensor, alpha: float) -> Tensor:
    """Effective sample size of the APO weights in each group (Eq. 21).

    ``ESS(a) = (sum_i w_i)^2 / sum_i w_i^2 = 1 / sum_i wbar_i^2`` with ``w_i = q_i^a p_i^(1-a) = p_i r_i^a``: the
    weight candidate ``i`` carries in Theorem 4.1's gradient. This is the definition of the paper's experiments
    (Sec. 7.1); Eq. 21's text writes ``w ~ r^a``, which coincides on-policy (``p`` uniform) and differs once the
    policy moves; we use the gradient weights. Computed in log space from ``log q`` (a ``q_i`` that underflows to 0
    with a small ``beta_r`` keeps a finite log). Range ``[1, G]``.

    Args:
        log_q_BG: ``[B, G]`` log target; log_p_BG: ``[B, G]`` log anchored policy; alpha in [0, 1].
    Returns:
        ``[B]`` ESS values (not differentiable: computed under ``no_grad``).
    Raises:
        ValueError: ``log_q_BG`` has a positive entry (``q`` was passed instead of ``log q``).
    """
    a = check_alpha(alpha)
    with torch.no_grad():
        _check_log_target(log_q_BG)
        s_BG = a * log_q_BG + (1.0 - a) * log_p_BG
        return _log_ess(s_BG).exp()


def _mean_ess_fraction(log_q_SG: Tensor, log_p_SG: Tensor, alphas_K: Tensor) -> Tensor:
    """``[K]``: mean over the S groups of ESS(alpha_k) / G, for every alpha in ``alphas_K``."""
    a_K11 = alphas_K.view(-1, 1, 1)
    s_KSG = a_K11 * log_q_SG + (1.0 - a_K11) * log_p_SG
    return _log_ess(s_KSG).exp().mean(-1) / log_q_SG.shape[-1]


def solve_ess_alpha(
    log_q_BG: Tensor,
    log_p_BG: Tensor,
    target_fraction: float = 0.5,
    alpha_min: float = 0.35,
    alpha_max: float = 0.9,
    *,
    signal_B: Tensor | None = None,
    grid_points: int = 17,
    iterations: int = 40,
    tol: float = 1e-9,
) -> float:
    """The alpha in ``[alpha_min, alpha_max]`` at which the mean ESS fraction hits ``target_fraction`` (Eq. 21).

    Solves ``f(a) = mean_b ESS_b(a) / G - gamma = 0`` over the groups that carry signal (``signal_B``; groups with
    equal rewards have a uniform target and are excluded by the caller). ESS need not be monotone in ``a`` off-policy,
    so the root is *bracketed* first: ``f`` is evaluated on a uniform grid of ``grid_points`` alphas in one
    vectorised pass, the sign change nearest ``alpha_max`` (the most mode-covering alpha that meets the target) is
    taken, and refined by the Illinois variant of regula falsi (superlinear, never leaves the bracket). A grid point
    where ``f = 0`` exactly is returned as is. When no sign change exists, the endpoint whose ESS is closest to the
    target is returned (ties go to ``alpha_max``). Deterministic; float64 internally; no gradient.

    Args:
        log_q_BG: ``[B, G]`` log target (:func:`apo.boltzmann_log_target`; taking the log of ``q`` would turn an
            underflowed ``q_i = 0`` into ``-inf``); log_p_BG: ``[B, G]`` log anchored policy.
        target_fraction: ``gamma`` in (0, 1]; ESS target is ``gamma * G``.
        alpha_min, alpha_max: the search interval, ``0 <= alpha_min <= alpha_max <= 1``.
        signal_B: optional ``[B]`` bool, the groups to average over (default: all).
    Returns:
        alpha as a Python float.
    Raises:
        ValueError: bad interval or target, no group selected by ``signal_B``, a positive entry in ``log_q_BG``
            (``q`` passed instead of ``log q``).
    """
    lo, hi = check_alpha(alpha_min), check_alpha(alpha_max)
    if lo > hi:
        raise ValueError(f"alpha_min ({lo}) must be <= alpha_max ({hi})")
    if not (0.0 < target_fraction <= 1.0):
        raise ValueError(f"ess target fraction must be in (0, 1], got {target_fraction}")
    with torch.no_grad():
        log_q = log_q_BG.detach().double()
        _check_log_target(log_q)
        log_p = log_p_BG.detach().double()
        if signal_B is not None:
            log_q, log_p = log_q[signal_B], log_p[signal_B]
        if log_q.shape[0] == 0:
            raise ValueError("no group carries signal (all rewards equal within every group): nothing to solve")
        alphas_K = torch.linspace(lo, hi, grid_points, dtype=torch.float64, device=log_q.device)
        f_K = (_mean_ess_fraction(log_q, log_p, alphas_K) - target_fraction).cpu()
        alphas_K = alphas_K.cpu()
        exact = (f_K == 0).nonzero().flatten()
        crossing = ((f_K[:-1] * f_K[1:]) < 0).nonzero().flatten()
        if exact.numel() and (not crossing.numel() or exact[-1] > crossing[-1]):
            return float(alphas_K[exact[-1]])
        if not crossing.numel():
            return lo if abs(float(f_K[0])) < abs(float(f_K[-1])) else hi
        k = int(crossing[-1])
        a0, a1, f0, f1 = float(alphas_K[k]), float(alphas_K[k + 1]), float(f_K[k]), float(f_K[k + 1])
        side, a = 0, a0
        for _ in range(iterations):
            a = (a0 * f1 - a1 * f0) / (f1 - f0)
            fa = (
                float(_mean_ess_fraction(log_q, log_p, torch.tensor([a], dtype=torch.float64, device=log_q.device))[0])
                - target_fraction
            )
            if abs(fa) <= tol:
                break
            if fa * f1 > 0:  # a replaces the a1 end; halve the stale end's value when it is kept twice (Illinois)
                a1, f1 = a, fa
                if side == -1:
                    f0 *= 0.5
                side = -1
            else:
                a0, f0 = a, fa
                if side == 1:
                    f1 *= 0.5
                side = 1
            if abs(a1 - a0) <= tol:
                break
        return a
