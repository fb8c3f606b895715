"""``APOPolicyLossConfig``: the APO settings as verl's ``actor_rollout_ref.actor.policy_loss`` section.

verl builds the actor config with ``hydra.utils.instantiate`` (``verl.utils.config.omega_conf_to_dataclass``), so the
``policy_loss`` section becomes whatever class its ``_target_`` names, called with the section's keys; verl's own
``PolicyLossConfig`` rejects keys it does not know. Selecting this subclass adds the APO keys (Hydra needs ``+`` for
keys absent from verl's YAML)::

    actor_rollout_ref.actor.policy_loss._target_=apo.integrations.verl.config.APOPolicyLossConfig
    actor_rollout_ref.actor.policy_loss.loss_mode=apo
    +actor_rollout_ref.actor.policy_loss.tau_anchor=0.8
    ...

Importing this module registers the APO loss and estimators (``apo.integrations.verl.plugin``), so a run whose
config names this class has them in every process that builds the config, even without the entry point.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from verl.workers.config import PolicyLossConfig

from apo.core import make_alpha_schedule
from apo.core.divergence import check_alpha
from apo.core.objectives import check_weight_clip
from apo.core.schedules import schedule_params
from apo.core.scores import SCORE_MODES
from apo.core.targets import check_positive

GROUP_LOSSES = ("apo", "adpo")


@dataclass
class APOPolicyLossConfig(PolicyLossConfig):
    """verl's policy-loss settings plus APO's (paper Sec. 3-5). Validated on construction; unknown keys are an error.

    ``loss_mode`` (inherited): ``apo`` / ``adpo`` for the exact group losses (with ``adv_estimator=apo_group``), or
    a per-sample loss such as ``vanilla`` with ``adv_estimator=apo`` (on-policy APO weights as advantages).
    """

    alpha_schedule: str = "fixed"
    """How alpha moves: ``fixed``, ``guarded`` (Eq. 19-23) or ``ess`` (Eq. 21); updated once per rollout."""
    alpha: float = 0.6
    """alpha of the ``fixed`` schedule, in [0, 1] (1: forward KL, 0: reverse KL)."""
    alpha_min: float = 0.35
    """Lower end of the ``guarded`` and ``ess`` schedules."""
    alpha_max: float = 0.9
    """Upper end of the ``guarded`` and ``ess`` schedules, and their starting value."""
    alpha_ema: float = 0.1
    """rho of Eq. 23 (``guarded``): smoothing rate of alpha."""
    baseline_ema: float = 0.1
    """lambda of Eq. 20 (``guarded``): rate of the EMA reward baseline."""
    reward_scale: float = 0.5
    """s_R of Eq. 20 (``guarded``) until measured; then the pooled std of the individual rewards of past rollouts."""
    ess_target: float = 0.5
    """gamma of Eq. 21 (``ess``): target ESS as a fraction of the group size."""
    tau_anchor: float = 1.0
    """tau_anc > 0 of Eq. 2: anchored logits u = (l - l_old) / tau_anc."""
    beta_reward: float = 1.0
    """beta_r > 0 of Eq. 5: target q = softmax(zscore(R) / beta_r)."""
    eps: float = 1e-6
    """epsilon of Eq. 4's z-score."""
    weight_clip: list[float] | None = None
    """Optional ``[w_min, w_max]`` of Eq. 24, 0 <= w_min <= 1 <= w_max; null disables clipping."""
    sequence_score: str = "sum"
    """Sequence score l_i: ``sum`` of token log-probs (the paper) or their ``mean``."""

    def __post_init__(self) -> None:
        check_alpha(self.alpha)
        check_positive("tau_anchor", self.tau_anchor)
        check_positive("beta_reward", self.beta_reward)
        if self.eps < 0:
            raise ValueError(f"eps must be >= 0, got {self.eps}")
        if self.sequence_score not in SCORE_MODES:
            raise ValueError(f"sequence_score must be one of {SCORE_MODES}, got {self.sequence_score!r}")
        check_weight_clip(self.weight_clip_tuple())
        self.make_schedule()  # validates the schedule name and its parameters

    def weight_clip_tuple(self) -> tuple[float, float] | None:
        if self.weight_clip is None:
            return None
        if len(self.weight_clip) != 2:
            raise ValueError(f"weight_clip must be [w_min, w_max], got {self.weight_clip!r}")
        return float(self.weight_clip[0]), float(self.weight_clip[1])

    def schedule_params(self) -> dict[str, Any]:
        """Keyword arguments of :func:`apo.core.make_alpha_schedule` for ``alpha_schedule``."""
        return schedule_params(self)

    def make_schedule(self):
        return make_alpha_schedule(self.alpha_schedule, **self.schedule_params())


from . import plugin  # noqa: E402, F401  (importing it registers the losses and estimators in this process)
