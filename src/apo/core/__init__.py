"""The framework-free library: groups, sequence scores, targets, objectives, alpha schedules and diagnostics."""

from .diagnostics import apo_metrics, entropy_confidence, normalized_entropy, sequence_confidence, token_confidence
from .divergence import (
    alpha_divergence,
    alpha_divergence_from_logs,
    anchored_log_policy,
    effective_sample_size,
    kl_divergence,
    solve_ess_alpha,
)
from .groups import GroupIndex, make_groups
from .objectives import (
    OBJECTIVES,
    adpo_loss,
    aggregate,
    apo_loss,
    get_objective,
    grpo_loss,
    gspo_loss,
    on_policy_advantages,
    register_objective,
)
from .schedules import SCHEDULES, ESSAlpha, FixedAlpha, GuardedAlpha, make_alpha_schedule
from .scores import sequence_logprob
from .targets import boltzmann_log_target, boltzmann_target, group_advantages, zero_variance_groups

__all__ = [
    "OBJECTIVES",
    "SCHEDULES",
    "ESSAlpha",
    "FixedAlpha",
    "GroupIndex",
    "GuardedAlpha",
    "adpo_loss",
    "aggregate",
    "alpha_divergence",
    "alpha_divergence_from_logs",
    "anchored_log_policy",
    "apo_loss",
    "apo_metrics",
    "boltzmann_log_target",
    "boltzmann_target",
    "effective_sample_size",
    "entropy_confidence",
    "get_objective",
    "group_advantages",
    "grpo_loss",
    "gspo_loss",
    "kl_divergence",
    "make_alpha_schedule",
    "make_groups",
    "normalized_entropy",
    "on_policy_advantages",
    "register_objective",
    "sequence_confidence",
    "sequence_logprob",
    "solve_ess_alpha",
    "token_confidence",
    "zero_variance_groups",
]
