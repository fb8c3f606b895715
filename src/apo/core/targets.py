"""Group-relative advantages and the Boltzmann soft target (paper Eq. 4-5)."""

from __future__ import annotations

import torch
from torch import Tensor


def check_finite(name: str, x: Tensor) -> None:
    """Raise ``ValueError`` naming ``name`` when ``x`` holds NaN or inf."""
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or inf ({int((~torch.isfinite(x)).sum())} entries)")


def check_positive(name: str, value: float) -> None:
    """Raise ``ValueError`` naming the setting when ``value`` is not a finite number > 0."""
    if not (isinstance(value, (int, float)) and value > 0 and value < float("inf")):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def group_advantages(rewards_BG: Tensor, eps: float = 1e-6, *, unbiased: bool = False) -> Tensor:
    """Z-scored rewards within each group (Eq. 4).

    ``A_i = (R_i - mean_g R) / (std_g R + eps)`` with the *population* standard deviation (the paper's
    ``sigma_R = sqrt(1/P sum (R_j - mean)^2)``). ``unbiased=True`` uses the ``1/(P-1)`` estimator (what TRL's
    GRPOTrainer uses, with ``eps = 1e-4``). A group whose rewards are all equal gets ``A = 0``.

    Args:
        rewards_BG: ``[B, G]`` rewards.
    Returns:
        ``[B, G]`` advantages, same dtype.
    Raises:
        ValueError: non-finite rewards, ``G < 2``, ``eps <= 0``.
    """
    if rewards_BG.dim() != 2 or rewards_BG.shape[1] < 2:
        raise ValueError(f"rewards must be [B, G] with G >= 2, got shape {tuple(rewards_BG.shape)}")
    if not eps > 0:
        raise ValueError(f"eps (setting `reward_eps`) must be > 0: a group of equal rewards divides by it, got {eps}")
    check_finite("rewards", rewards_BG)
    mean_B1 = rewards_BG.mean(-1, keepdim=True)
    std_B1 = rewards_BG.std(-1, keepdim=True, correction=1 if unbiased else 0)
    return (rewards_BG - mean_B1) / (std_B1 + eps)


def boltzmann_log_target(rewards_BG: Tensor, beta: float, eps: float = 1e-6) -> Tensor:
    """``log q`` of the Boltzmann target, ``log_softmax(A / beta)`` over each group (Eq. 5), computed in log space."""
    check_positive("beta_reward", beta)
    return torch.log_softmax(group_advantages(rewards_BG, eps) / beta, dim=-1)


def boltzmann_target(rewards_BG: Tensor, beta: float, eps: float = 1e-6) -> Tensor:
    """Boltzmann soft target over each candidate set (Eq. 4-5).

    ``q_i = softmax(A / beta)_i`` with ``A`` the population z-score of the group's rewards (:func:`group_advantages`).
    A group whose rewards are all equal has ``A = 0`` and so a uniform ``q`` (it carries no preference signal; see
    :func:`zero_variance_groups`). Invariant to adding a constant to a group's rewards, and to scaling them by
    ``c > 0`` up to the ``eps`` in the denominator.

    Args:
        rewards_BG: ``[B, G]`` rewards, finite.
        beta: ``beta_r > 0``; smaller concentrates ``q`` on the best completions.
        eps: the ``epsilon`` of Eq. 4.
    Returns:
        ``[B, G]`` target probabilities, rows sum to 1.
    Raises:
        ValueError: ``beta <= 0``, non-finite rewards, ``G < 2``.
    """
    return boltzmann_log_target(rewards_BG, beta, eps).exp()


def zero_variance_groups(rewards_BG: Tensor) -> Tensor:
    """``[B]`` bool: groups whose rewards are all equal (uniform target, no learning signal)."""
    return (rewards_BG == rewards_BG[:, :1]).all(-1)
