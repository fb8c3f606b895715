"""APO for verl 0.9.1: two advantage estimators and two group policy losses, thin over :mod:`apo.core`.

Two modes (see ``examples/verl/README.md``):

* **exact group loss**: ``algorithm.adv_estimator=apo_group`` + ``policy_loss.loss_mode=apo`` (or ``adpo``).
  The estimator verifies that every prompt's ``G`` completions sit in one contiguous block, steps the alpha
  schedule and writes group ids, rewards and alpha into the advantages (:mod:`.payload`). The loss, per
  micro-batch, checks rollout order and whole groups, then calls the library's batch objective
  (sequence scores -> :func:`apo.core.make_groups` -> :func:`apo.core.apo_loss`) with ``pi_ref = pi_old`` (verl's
  recomputed ``old_log_prob``). Exact at every mini-batch and epoch, wherever the policy has moved.
* **advantage-estimator mode**: ``algorithm.adv_estimator=apo`` + a per-sample loss (``loss_mode=vanilla``,
  ``loss_agg_mode=seq-mean-token-sum``). The estimator writes the on-policy APO advantage
  ``A_i = G (w_i - mean_j w_j) / (alpha tau)``, ``w_i = q_i^alpha G^(alpha-1)`` (:func:`on_policy_advantages`).
  Any batching works; the gradient is APO's exactly while the policy equals the rollout policy (ratio 1:
  the first mini-batch of each rollout), and PPO's clipped surrogate with APO weights after that.

The alpha schedule runs in the driver, once per rollout, inside the estimator (both modes), on that rollout's
groups at the rollout policy (``u = 0``, ``p`` uniform): Algorithm 1 lines 17-21 exactly when there is one optimizer
step per rollout. Departures: with several mini-batches per rollout alpha still moves once per rollout; the
anchored-entropy confidence of Eq. 19 is 0 at ``u = 0``, so ``guarded`` stays at ``alpha_max`` (``ess`` moves);
the schedule state is not checkpointed (a resumed run restarts it). At ``u = 0`` that changes no alpha except one:
``fixed`` has no state; ``guarded`` stays at ``alpha_max`` whatever its baselines; ``ess`` solves each rollout
afresh and keeps its previous alpha only on a rollout without any group with reward variance, which right after a
resume falls back to ``alpha_max`` instead.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from apo.core import boltzmann_log_target, make_groups
from apo.core.diagnostics import NAN_WHEN_UNDEFINED
from apo.core.objectives import on_policy_advantages
from apo.core.targets import check_finite

from . import payload
from .config import GROUP_LOSSES, APOPolicyLossConfig
from .settings import SETTING_NAMES

logger = logging.getLogger(__name__)

GROUP_HINT = (
    "The APO group loss needs every micro-batch to hold whole groups in rollout order: set trainer.use_v1=false, "
    "trainer.balance_batch=false, actor_rollout_ref.actor.shuffle=false, "
    "actor_rollout_ref.actor.use_dynamic_bsz=false and make actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu "
    "a multiple of actor_rollout_ref.rollout.n; or use "
    "algorithm.adv_estimator=apo with a per-sample loss (exact on-policy), which needs none of these."
)
SETTINGS_HINT = (
    "The APO estimators read the APO settings from the actor's policy_loss section: add "
    "+algorithm.apo='${actor_rollout_ref.actor}' and set "
    "actor_rollout_ref.actor.policy_loss._target_=apo.integrations.verl.config.APOPolicyLossConfig."
)
AGG_FOR_SCORE = {"sum": "seq-mean-token-sum", "mean": "seq-mean-token-mean"}


# ----------------------------------------------------------------------------------------------------------------
# On-policy APO weights (the math; pure function).


# ----------------------------------------------------------------------------------------------------------------
# Settings and the per-process alpha schedules.

_SCHEDULES: dict[tuple, Any] = {}


def estimator_settings(config: Any) -> tuple[APOPolicyLossConfig, Any]:
    """``(APO settings, actor config)`` from the ``config`` verl hands an estimator (``algorithm``, with ``apo``
    pointing at ``actor_rollout_ref.actor``)."""
    actor = config.get("apo", None) if config is not None else None
    if actor is None or "policy_loss" not in actor:
        raise ValueError(f"algorithm.apo is missing or does not point at the actor config. {SETTINGS_HINT}")
    policy_loss = actor["policy_loss"]
    if not isinstance(policy_loss, APOPolicyLossConfig):
        from verl.utils.config import omega_conf_to_dataclass

        target = policy_loss.get("_target_", None)
        policy_loss = omega_conf_to_dataclass(policy_loss) if target else None
        if not isinstance(policy_loss, APOPolicyLossConfig):
            raise ValueError(f"actor_rollout_ref.actor.policy_loss is not an APOPolicyLossConfig. {SETTINGS_HINT}")
    return policy_loss, actor


def loss_settings(config: Any) -> APOPolicyLossConfig:
    """The APO settings of the actor config verl hands a policy loss."""
    policy_loss = getattr(config, "policy_loss", None) if config is not None else None
    if not isinstance(policy_loss, APOPolicyLossConfig):
        raise ValueError(
            "the APO losses need their settings in actor_rollout_ref.actor.policy_loss: set "
            "actor_rollout_ref.actor.policy_loss._target_=apo.integrations.verl.config.APOPolicyLossConfig "
            f"(got {type(policy_loss).__name__})"
        )
    return policy_loss


def schedule_for(settings: APOPolicyLossConfig):
    """The alpha schedule of this process for ``settings`` (created on first use, then kept across steps)."""
    key = (settings.alpha_schedule, tuple(sorted(settings.schedule_params().items())))
    if key not in _SCHEDULES:
        _SCHEDULES[key] = settings.make_schedule()
    return _SCHEDULES[key]


def _advantages(settings, rewards_BG: Tensor, alpha: float) -> Tensor:
    """``[B, G]`` on-policy APO advantages (:func:`apo.on_policy_advantages`) with the configured settings."""
    return on_policy_advantages(
        rewards_BG,
        alpha=alpha,
        tau_anchor=settings.tau_anchor,
        beta_reward=settings.beta_reward,
        eps=settings.eps,
        weight_clip=settings.weight_clip_tuple(),
    )


def step_alpha(settings: APOPolicyLossConfig, rewards_BG: Tensor) -> float:
    """Advance the schedule once with this rollout's groups at ``u = 0`` (``p`` uniform) and return alpha_t."""
    schedule = schedule_for(settings)
    rewards_BG = rewards_BG.double()
    log_q_BG = boltzmann_log_target(rewards_BG, settings.beta_reward, settings.eps)
    log_p_BG = torch.full_like(rewards_BG, -math.log(rewards_BG.shape[1]))
    alpha = float(schedule.update(rewards_BG=rewards_BG, log_q_BG=log_q_BG, log_p_BG=log_p_BG))
    logger.info("apo alpha schedule: %s", schedule.metrics())
    return alpha


# ----------------------------------------------------------------------------------------------------------------
# Advantage estimators (driver process, once per rollout).


def group_codes(index: Any) -> Tensor:
    """``[N]`` long: verl's group index (``non_tensor_batch['uid']``, any hashable ids) as ordinals 0, 1, ... in
    order of first appearance."""
    if index is None:
        raise ValueError("the APO estimators need verl's group index (non_tensor_batch['uid']); none was passed")
    seen: dict[Any, int] = {}
    codes = [seen.setdefault(u, len(seen)) for u in np.asarray(index).tolist()]
    return torch.tensor(codes, dtype=torch.long)


def _sequence_rewards(token_level_rewards: Tensor) -> Tensor:
    rewards_N = token_level_rewards.sum(dim=-1)
    check_finite("rewards", rewards_N)
    return rewards_N


def compute_apo_advantage(
    token_level_rewards: Tensor,
    response_mask: Tensor,
    index: Any = None,
    config: Any = None,
    **unused: Any,
) -> tuple[Tensor, Tensor]:
    """``adv_estimator=apo``: on-policy APO advantages for a per-sample loss, any batching.

    Args:
        token_level_rewards: ``[N, T]``; the sequence reward is its sum over ``T``.
        response_mask: ``[N, T]``.
        index: ``[N]`` group ids (verl's ``uid``); groups in any order, all of one size ``G``.
        config: verl's ``algorithm`` config, with ``apo`` -> ``actor_rollout_ref.actor``.
    Returns:
        ``(advantages, returns)``, both ``[N, T]``: :func:`on_policy_advantages` broadcast over each response.
    Raises:
        ValueError: settings missing, a group loss selected (use ``apo_group``), a token aggregation that does not
            match the sequence score, groups of unequal size.
    """
    settings, actor = estimator_settings(config)
    if settings.loss_mode in GROUP_LOSSES:
        raise ValueError(
            f"adv_estimator=apo writes per-sample advantages, but policy_loss.loss_mode={settings.loss_mode} "
            "expects the group payload: use algorithm.adv_estimator=apo_group, or a per-sample loss (vanilla)"
        )
    agg = actor.get("loss_agg_mode", None)
    if agg is not None and agg != AGG_FOR_SCORE[settings.sequence_score]:
        raise ValueError(
            f"adv_estimator=apo gives APO's gradient only with actor_rollout_ref.actor.loss_agg_mode="
            f"{AGG_FOR_SCORE[settings.sequence_score]} for sequence_score={settings.sequence_score} (got {agg})"
        )
    groups = make_groups(group_codes(index), None, hint="(verl groups rows by non_tensor_batch['uid'])")
    rewards_BG = groups.gather(_sequence_rewards(token_level_rewards))
    alpha = step_alpha(settings, rewards_BG)
    adv_BG = _advantages(settings, rewards_BG, alpha)
    adv_NT = groups.scatter(adv_BG).to(token_level_rewards.dtype).unsqueeze(-1) * response_mask
    return adv_NT, adv_NT


def _trainer_settings(config: Any) -> Any:
    """The ``trainer`` section of the run, reached from the ``algorithm`` node verl hands an estimator through the
    root of its Hydra config (``RayPPOTrainer.fit`` passes ``self.config.algorithm``); ``None`` when ``config`` is
    not part of one (a dataclass, a test's dict)."""
    get_root = getattr(config, "_get_root", None)
    if get_root is None:
        return None
    root = get_root()
    return root.get("trainer", None) if hasattr(root, "get") else None


def _check_group_batching(actor: Any, trainer: Any, group_size: int) -> None:
    """Fail at the first step, in the driver, on settings that would split or reorder groups."""
    problems = []
    if trainer is not None:
        # verl's defaults are both true: balance_batch re-sorts rows by length before the advantage step (even on
        # one rank), and the v1 trainer always balances and re-packs advantages per token.
        if trainer.get("use_v1", False):
            problems.append("trainer.use_v1=true")
        if trainer.get("balance_batch", False):
            problems.append("trainer.balance_batch=true")
    if actor.get("shuffle", False):
        problems.append("actor_rollout_ref.actor.shuffle=true")
    if actor.get("use_dynamic_bsz", False):
        problems.append("actor_rollout_ref.actor.use_dynamic_bsz=true")
    micro = actor.get("ppo_micro_batch_size_per_gpu", None)
    if micro is not None and int(micro) % group_size:
        problems.append(f"ppo_micro_batch_size_per_gpu={micro} is not a multiple of G={group_size}")
    if problems:
        raise ValueError(f"settings that break groups: {', '.join(problems)}. {GROUP_HINT}")


def compute_apo_group_payload(
    token_level_rewards: Tensor,
    response_mask: Tensor,
    index: Any = None,
    config: Any = None,
    **unused: Any,
) -> tuple[Tensor, Tensor]:
    """``adv_estimator=apo_group``: the payload for the exact group losses (``loss_mode=apo``/``adpo``).

    Verifies that rows ``k G .. k G + G - 1`` are exactly group ``k`` (what ``trainer.balance_batch=false`` and the
    legacy trainer keep), steps the alpha schedule, and returns advantages that hold the on-policy APO advantage
    in the leading columns and the :mod:`.payload` in the last ones.

    Args / Returns: as :func:`compute_apo_advantage`.
    Raises:
        ValueError: settings missing or inconsistent, groups not contiguous, responses narrower than the payload.
    """
    settings, actor = estimator_settings(config)
    if settings.loss_mode not in GROUP_LOSSES:
        raise ValueError(
            f"adv_estimator=apo_group writes a group payload that only policy_loss.loss_mode in {GROUP_LOSSES} can "
            f"read (got {settings.loss_mode}); for a per-sample loss use algorithm.adv_estimator=apo"
        )
    codes_N = group_codes(index)
    groups = make_groups(codes_N, None, hint=GROUP_HINT)
    G = groups.group_size
    _check_group_batching(actor, _trainer_settings(config), G)
    rows_N = torch.arange(codes_N.numel())
    if not torch.equal(codes_N, rows_N // G):
        first = int((codes_N != rows_N // G).nonzero()[0])
        raise ValueError(
            f"the rollout batch does not hold each group in one contiguous block of G={G} rows (first stray row "
            f"{first}): something reordered it before the advantage step. {GROUP_HINT}"
        )
    rewards_N = _sequence_rewards(token_level_rewards)
    rewards_BG = groups.gather(rewards_N)
    alpha = step_alpha(settings, rewards_BG)
    adv_BG = _advantages(settings, rewards_BG, alpha)
    adv_NT = groups.scatter(adv_BG).to(torch.float32).unsqueeze(-1) * response_mask
    adv_NT = payload.encode(adv_NT, G, codes_N, rows_N, rewards_N, alpha)
    return adv_NT, adv_NT


# ----------------------------------------------------------------------------------------------------------------
# Group policy losses (actor workers, once per micro-batch).


def _group_policy_loss(
    name: str,
    old_log_prob: Tensor,
    log_prob: Tensor,
    advantages: Tensor,
    response_mask: Tensor,
    config: Any,
    rollout_is_weights: Tensor | None,
) -> tuple[Tensor, dict[str, float]]:
    settings = loss_settings(config)
    if rollout_is_weights is not None:
        raise ValueError(
            "the APO group losses do not apply token-level rollout importance weights: disable "
            "algorithm.rollout_correction (rollout_is / rollout_rs)"
        )
    data = payload.decode(advantages)
    G = data.group_size
    rollout_n = getattr(config, "rollout_n", None)
    if isinstance(rollout_n, int) and rollout_n != G:
        raise ValueError(f"the payload's group size {G} differs from actor_rollout_ref.rollout.n={rollout_n}")
    steps = data.rows_N[1:] - data.rows_N[:-1]
    if bool((steps != 1).any()):
        shown = data.rows_N[:12].tolist()
        raise ValueError(
            f"rows reach the loss out of rollout order (rollout rows {shown}...): the mini-batch was shuffled or "
            f"re-packed. Set actor_rollout_ref.actor.shuffle=false and actor_rollout_ref.actor.use_dynamic_bsz=false."
            f" {GROUP_HINT}"
        )
    dtype = torch.promote_types(log_prob.dtype, torch.float32)
    algorithm = settings.group_algorithm(name)
    loss, metrics = algorithm.batch_objective()(
        log_prob,
        old_log_prob,
        response_mask,
        data.rewards_N.to(dtype),
        data.group_ids_N.to(log_prob.device),
        sequence_score=settings.sequence_score,
        group_size=G,
        group_hint=GROUP_HINT,
        **algorithm.objective_kwargs(settings, data.alpha, aliases=SETTING_NAMES),
    )
    # verl backpropagates every micro-batch loss as is and averages gradients over data-parallel ranks; scale the
    # micro-batch mean so that the accumulated gradient is that of the mean over the global mini-batch's groups.
    info = getattr(config, "global_batch_info", None) or {}
    global_rows, dp_size = info.get("global_batch_size"), info.get("dp_size") or 1
    num_groups = log_prob.shape[0] // G
    if global_rows:
        if int(global_rows) % G:
            raise ValueError(f"the global mini-batch of {global_rows} rows is not a multiple of G={G}. {GROUP_HINT}")
        loss = loss * (num_groups * dp_size / (int(global_rows) // G))
    prefix = algorithm.metric_prefix  # a user's objective: its metrics under its name
    out = {(k if prefix is None else f"{prefix}/{k}"): float(v) for k, v in metrics.items()}
    out = {k: v for k, v in out.items() if not (k in NAN_WHEN_UNDEFINED and math.isnan(v))}  # undefined: left out
    if algorithm.has_alpha_schedule:
        out["apo/alpha"] = data.alpha  # the library reports it as a float32 tensor; this is the value used
    out["apo/groups"] = float(num_groups)
    return loss, out


def compute_policy_loss_apo(
    old_log_prob: Tensor,
    log_prob: Tensor,
    advantages: Tensor,
    response_mask: Tensor,
    loss_agg_mode: str = "token-mean",
    config: Any = None,
    rollout_is_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """``loss_mode=apo``: ``L = 1/B sum_b D_alpha(q_b || p_theta,b)`` (Eq. 7) over the micro-batch's groups.

    ``q = softmax(zscore(R) / beta_r)`` from the payload's rewards, ``p_theta = softmax((l - l_old) / tau_anc)``
    with ``l`` the sequence score of ``log_prob`` and ``l_old`` that of ``old_log_prob`` (``[N, T]`` each, masked by
    ``response_mask``); alpha from the payload. ``loss_agg_mode`` is ignored: the loss is a mean over groups,
    scaled by ``B_micro * dp_size / B_global`` so that verl's accumulation gives the global mini-batch mean.

    Raises:
        ValueError: no payload (wrong estimator or the v1 trainer), rows out of rollout order, a group split across
            micro-batches, rollout importance weights; each message names the verl settings to change.
    """
    return _group_policy_loss("apo", old_log_prob, log_prob, advantages, response_mask, config, rollout_is_weights)


def compute_policy_loss_adpo(
    old_log_prob: Tensor,
    log_prob: Tensor,
    advantages: Tensor,
    response_mask: Tensor,
    loss_agg_mode: str = "token-mean",
    config: Any = None,
    rollout_is_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """``loss_mode=adpo``: ADPO-Softmax ``L = -1/B sum_b sum_i q_bi log p_theta,bi`` (APO's gradient at
    alpha = 1), same inputs, checks and scaling as :func:`compute_policy_loss_apo`; alpha is not used."""
    return _group_policy_loss("adpo", old_log_prob, log_prob, advantages, response_mask, config, rollout_is_weights)


def compute_policy_loss_objective(
    old_log_prob: Tensor,
    log_prob: Tensor,
    advantages: Tensor,
    response_mask: Tensor,
    loss_agg_mode: str = "token-mean",
    config: Any = None,
    rollout_is_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """``loss_mode=objective``: the group objective ``policy_loss.objective`` (``module:function``, called with
    ``policy_loss.objective_kwargs``), same inputs, checks and scaling as :func:`compute_policy_loss_apo`."""
    return _group_policy_loss(
        "objective", old_log_prob, log_prob, advantages, response_mask, config, rollout_is_weights
    )


def register_all() -> None:
    """Register the losses and estimators in verl's registries (this process)."""
    from verl.trainer.ppo.core_algos import register_adv_est, register_policy_loss

    register_policy_loss("apo")(compute_policy_loss_apo)
    register_policy_loss("adpo")(compute_policy_loss_adpo)
    register_policy_loss("objective")(compute_policy_loss_objective)
    register_adv_est("apo")(compute_apo_advantage)
    register_adv_est("apo_group")(compute_apo_group_payload)
