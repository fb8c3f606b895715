"""``APOPolicyLossConfig``: the APO settings as verl's ``actor_rollout_ref.actor.policy_loss`` section.

verl builds the actor config with ``hydra.utils.instantiate`` (``verl.utils.config.omega_conf_to_dataclass``), so the
``policy_loss`` section becomes whatever class its ``_target_`` names, called with the section's keys; verl's own
``PolicyLossConfig`` rejects keys it does not know. Selecting this subclass adds the APO keys (Hydra needs ``+`` for
keys absent from verl's YAML)::

    actor_rollout_ref.actor.policy_loss._target_=apo.integrations.verl.config.APOPolicyLossConfig
    actor_rollout_ref.actor.policy_loss.loss_mode=apo
    +actor_rollout_ref.actor.policy_loss.tau_anchor=0.8
    ...

The APO keys, their defaults (the paper's: ``tau_anchor = 0.8``, like :class:`apo.APOConfig`) and their checks live
in :mod:`apo.integrations.verl.settings`, which does not import verl.

Importing this module registers the APO loss and estimators (``apo.integrations.verl.plugin``), so a run whose
config names this class has them in every process that builds the config, even without the entry point.
"""

from __future__ import annotations

from dataclasses import dataclass

from verl.workers.config import PolicyLossConfig

from apo.algorithms import GROUP, names

from .settings import OBJECTIVE_LOSS, APOLossSettings

GROUP_LOSSES = (*names(GROUP), OBJECTIVE_LOSS)


@dataclass
class APOPolicyLossConfig(PolicyLossConfig, APOLossSettings):
    """verl's policy-loss settings plus APO's (:class:`apo.integrations.verl.settings.APOLossSettings`: the paper's
    defaults, ``tau_anchor = 0.8`` included). Every APO key is validated on construction, i.e. when verl builds the
    actor config, with a one-line error naming ``policy_loss.<key>``; unknown keys are an error.

    ``loss_mode`` (inherited): ``apo`` / ``adpo`` for the exact group losses (with ``adv_estimator=apo_group``),
    ``objective`` for a group objective by import path (``objective``, ``objective_kwargs``), or
    a per-sample loss such as ``vanilla`` with ``adv_estimator=apo`` (on-policy APO weights as advantages).
    """


from . import plugin  # noqa: E402, F401  (importing it registers the losses and estimators in this process)
