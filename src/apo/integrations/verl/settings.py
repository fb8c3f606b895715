"""``APOLossSettings``: the APO keys of verl's ``actor_rollout_ref.actor.policy_loss`` section, their defaults and
their checks, without importing verl (so the main test suite checks them too).

:class:`apo.integrations.verl.config.APOPolicyLossConfig` is verl's ``PolicyLossConfig`` plus this class. Defaults
and ranges are read from the algorithms' settings (:mod:`apo.algorithms`, the paper's Sec. 7 "Configuration", those
of :class:`apo.APOConfig`); the keys keep this section's names (``eps`` for ``reward_eps``, a ``weight_clip`` list).
Every key is checked when the config is built (``__post_init__``), not at the first step: a bad value raises a
one-line ``ValueError`` that names ``policy_loss.<key>``, the value and the allowed range.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from apo.algorithms import get_algorithm, in_range, is_import_path, range_text, settings_fields
from apo.core.schedules import SCHEDULES, make_alpha_schedule, schedule_params
from apo.core.scores import SCORE_MODES

SECTION = "policy_loss"
OBJECTIVE_LOSS = "objective"
"""``loss_mode`` of a group objective given by import path (the ``objective`` key)."""
SETTING_NAMES = {"reward_eps": "eps"}
"""The registry's settings (:mod:`apo.algorithms`) whose key in this section has another name."""
REGISTRY_NAMES = {v: k for k, v in SETTING_NAMES.items()}
_DEFAULTS = {name: f.default for name, f in settings_fields().items()}  # the algorithms' defaults, defined once


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{SECTION}.{name} must be a finite number, got {value!r}")
    return float(value)


@dataclass
class APOLossSettings:
    """APO's settings in verl's policy-loss section (paper Sec. 3-5); validated on construction."""

    alpha_schedule: str = _DEFAULTS["alpha_schedule"]
    """How alpha moves: ``fixed``, ``guarded`` (Eq. 19-23) or ``ess`` (Eq. 21); updated once per rollout."""
    alpha: float = _DEFAULTS["alpha"]
    """alpha of the ``fixed`` schedule, in [0, 1] (1: forward KL, 0: reverse KL)."""
    alpha_min: float = _DEFAULTS["alpha_min"]
    """Lower end of the ``guarded`` and ``ess`` schedules, in [0, alpha_max]."""
    alpha_max: float = _DEFAULTS["alpha_max"]
    """Upper end of the ``guarded`` and ``ess`` schedules, and their starting value, in [alpha_min, 1]."""
    alpha_ema: float = _DEFAULTS["alpha_ema"]
    """rho in (0, 1] of Eq. 23 (``guarded``): smoothing rate of alpha."""
    baseline_ema: float = _DEFAULTS["baseline_ema"]
    """lambda in (0, 1] of Eq. 20 (``guarded``): rate of the EMA reward baseline."""
    reward_scale: float = _DEFAULTS["reward_scale"]
    """s_R > 0 of Eq. 20 (``guarded``) until measured; then the pooled std of past individual rewards."""
    ess_target: float = _DEFAULTS["ess_target"]
    """gamma in (0, 1] of Eq. 21 (``ess``): target ESS as a fraction of the group size."""
    tau_anchor: float = _DEFAULTS["tau_anchor"]
    """tau_anc > 0 of Eq. 2: anchored logits u = (l - l_old) / tau_anc (the paper's 0.8)."""
    beta_reward: float = _DEFAULTS["beta_reward"]
    """beta_r > 0 of Eq. 5: target q = softmax(zscore(R) / beta_r)."""
    eps: float = _DEFAULTS["reward_eps"]
    """epsilon > 0 of Eq. 4's z-score (0 would make a group of equal rewards 0/0)."""
    weight_clip: list[float] | None = None
    """Optional ``[w_min, w_max]`` of Eq. 24, 0 <= w_min <= 1 <= w_max; null disables clipping."""
    sequence_score: str = _DEFAULTS["sequence_score"]
    """Sequence score l_i: ``sum`` of token log-probs (the paper) or their ``mean``."""
    objective: str | None = None
    """With ``loss_mode=objective``: a group objective ``module:function``, called ``fn(logp_BG, old_logp_BG,
    rewards_BG, **objective_kwargs)`` (:mod:`apo.algorithms`)."""
    objective_kwargs: dict | None = None
    """The keyword settings of ``objective``, each accepted by the function."""

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Raise a one-line ``ValueError`` naming ``policy_loss.<key>`` for the first invalid setting."""
        if self.alpha_schedule not in SCHEDULES:
            raise ValueError(
                f"{SECTION}.alpha_schedule={self.alpha_schedule!r} is unknown; valid: {sorted(SCHEDULES)}"
            )
        if self.sequence_score not in SCORE_MODES:
            raise ValueError(f"{SECTION}.sequence_score must be one of {SCORE_MODES}, got {self.sequence_score!r}")
        registry = settings_fields()  # the ranges are those of the algorithms' settings (apo.algorithms)
        for f in dataclasses.fields(APOLossSettings):
            name = REGISTRY_NAMES.get(f.name, f.name)
            spec = registry[name].metadata.get("range") if name in registry else None
            if spec is not None and not in_range(_number(f.name, getattr(self, f.name)), spec):
                raise ValueError(f"{SECTION}.{f.name} must be {range_text(spec)}, got {getattr(self, f.name)!r}")
        if self.alpha_min > self.alpha_max:
            raise ValueError(
                f"{SECTION}.alpha_min ({self.alpha_min}) must be <= {SECTION}.alpha_max ({self.alpha_max})"
            )
        self.weight_clip_tuple()
        self.make_schedule()  # the schedule's own checks of its parameters
        self._check_objective()

    def _check_objective(self) -> None:
        """``objective`` names a group objective that imports and takes ``objective_kwargs``, set exactly when
        ``loss_mode=objective``."""
        by_path = getattr(self, "loss_mode", OBJECTIVE_LOSS) == OBJECTIVE_LOSS  # verl's key, when it is there
        if self.objective is None:
            if by_path and hasattr(self, "loss_mode"):
                raise ValueError(f"{SECTION}.loss_mode={OBJECTIVE_LOSS} needs {SECTION}.objective=module:function")
            if self.objective_kwargs:
                raise ValueError(f"{SECTION}.objective_kwargs is set without {SECTION}.objective: unset it")
            return
        if not by_path:
            raise ValueError(
                f"{SECTION}.objective is read with loss_mode={OBJECTIVE_LOSS} (got loss_mode={self.loss_mode}): "
                f"set loss_mode={OBJECTIVE_LOSS} or unset objective"
            )
        if not is_import_path(self.objective):
            raise ValueError(f"{SECTION}.objective must be 'module:function', got {self.objective!r}")
        try:
            get_algorithm(self.objective).check_objective_kwargs(dict(self.objective_kwargs or {}))
        except ValueError as e:
            raise ValueError(f"{SECTION}.{e}") from None

    def group_algorithm(self, loss_mode: str):
        """The :class:`apo.algorithms.Algorithm` the group loss ``loss_mode`` runs (``objective``'s for
        ``loss_mode=objective``)."""
        return get_algorithm(self.objective if loss_mode == OBJECTIVE_LOSS else loss_mode)

    def weight_clip_tuple(self) -> tuple[float, float] | None:
        """``(w_min, w_max)`` of Eq. 24, or ``None`` when clipping is off."""
        if self.weight_clip is None:
            return None
        if isinstance(self.weight_clip, (str, bytes)) or len(self.weight_clip) != 2:
            raise ValueError(f"{SECTION}.weight_clip must be [w_min, w_max] or null, got {self.weight_clip!r}")
        w_min, w_max = (_number("weight_clip", w) for w in self.weight_clip)
        if not 0.0 <= w_min <= 1.0 <= w_max:
            raise ValueError(f"{SECTION}.weight_clip must satisfy 0 <= w_min <= 1 <= w_max, got {self.weight_clip!r}")
        return w_min, w_max

    @property
    def weight_clip_min(self) -> float | None:
        """``w_min`` of :meth:`weight_clip_tuple` (the registry's name for it), ``None`` when clipping is off."""
        clip = self.weight_clip_tuple()
        return None if clip is None else clip[0]

    @property
    def weight_clip_max(self) -> float | None:
        """``w_max`` of :meth:`weight_clip_tuple`, ``None`` when clipping is off."""
        clip = self.weight_clip_tuple()
        return None if clip is None else clip[1]

    def schedule_params(self) -> dict[str, Any]:
        """Keyword arguments of :func:`apo.core.make_alpha_schedule` for ``alpha_schedule``."""
        return schedule_params(self)

    def make_schedule(self):
        """A fresh alpha schedule of these settings."""
        return make_alpha_schedule(self.alpha_schedule, **self.schedule_params())
