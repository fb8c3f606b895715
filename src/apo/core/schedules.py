"""alpha schedules (paper Sec. 5): ``fixed``, ``guarded`` (Eq. 19-23) and ``ess`` (Eq. 21), chosen by name.

Every schedule is a small object with one method, ``update(...) -> alpha``, called **once per optimizer step** with
the step's statistics, plus ``alpha`` (the value in force), ``metrics()`` and ``state_dict()`` /
``load_state_dict()`` so a resumed run continues exactly. ``update`` takes the same keywords for every schedule::

    update(*, rewards_BG, log_q_BG, log_p_BG, confidence=None) -> float

so the trainer need not know which one it holds. In data-parallel training, call it with the groups gathered from
all processes: it is deterministic, so every process then holds the same alpha.

The on-policy caveat. With ``pi_ref = pi_old`` and one optimizer step per rollout, ``u = 0`` at every loss
evaluation, so the anchored ``p`` is uniform and Eq. 19's confidence ``c_t = 1 - H(p) / log P`` is exactly 0: the
guarded schedule then stays at ``alpha_max`` for the whole run. It moves only when the policy moves between rollout
and update (several optimizer steps per rollout) or when the caller passes another ``confidence`` (see
:mod:`apo.core.diagnostics`: ``sequence_confidence``, ``token_confidence``). The default stays the paper's anchored
entropy; the choice is the trainer's ``confidence_source`` setting.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from torch import Tensor

from .diagnostics import entropy_confidence
from .divergence import check_alpha, solve_ess_alpha
from .targets import zero_variance_groups


def _check_range(alpha_min: float, alpha_max: float) -> tuple[float, float]:
    lo, hi = check_alpha(alpha_min), check_alpha(alpha_max)
    if lo > hi:
        raise ValueError(f"alpha_min ({lo}) must be <= alpha_max ({hi})")
    return lo, hi


def _check_rate(name: str, value: float) -> float:
    if not (0.0 < float(value) <= 1.0):
        raise ValueError(f"{name} must be in (0, 1], got {value!r}")
    return float(value)


class FixedAlpha:
    """``alpha_t = alpha`` for every step."""

    name = "fixed"

    def __init__(self, alpha: float = 0.6):
        self.alpha = check_alpha(alpha)

    def update(self, **stats: Any) -> float:
        return self.alpha

    def metrics(self) -> dict[str, float]:
        return {"apo/alpha": self.alpha}

    def state_dict(self) -> dict[str, Any]:
        return {"alpha": self.alpha}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.alpha = check_alpha(state["alpha"])


class GuardedAlpha:
    """Reward + confidence guarded schedule (Eq. 19-23, Algorithm 1 lines 17-21).

    At step ``t``, with confidence ``c_t`` (Eq. 19, or the caller's) and mean reward ``R_t`` over all completions::

        b_t   = (1 - lam) b_{t-1} + lam R_t                       b_0 = 0          (Eq. 20)
        p_t   = max(0, tanh((R_t - b_{t-1}) / s_R))                                 (Eq. 20)
        a_raw = alpha_max - (alpha_max - alpha_min) c_t p_t                         (Eq. 22)
        a_t   = (1 - rho) a_{t-1} + rho a_raw                     a_0 = alpha_max   (Eq. 23)

    ``s_R`` starts at ``reward_scale`` (0.5) and then follows the running (Welford, unbiased) standard deviation of
    the ``R_1 .. R_{t-1}`` seen so far, once two values with nonzero spread exist; the current ``R_t`` enters only
    after ``p_t`` is computed, so a jump is measured against the past spread. ``b_0 = 0`` as in Algorithm 1 (so the
    first step always sees a "gain"; ``c_t`` gates it). Confident and improving -> alpha falls toward ``alpha_min``;
    confident but stuck (``p_t = 0``) -> alpha returns toward ``alpha_max`` at rate ``rho``.
    """

    name = "guarded"

    def __init__(
        self,
        alpha_min: float = 0.35,
        alpha_max: float = 0.9,
        rho: float = 0.1,
        lam: float = 0.1,
        reward_scale: float = 0.5,
    ):
        self.alpha_min, self.alpha_max = _check_range(alpha_min, alpha_max)
        self.rho = _check_rate("alpha_ema (rho)", rho)
        self.lam = _check_rate("baseline_ema (lambda)", lam)
        if not reward_scale > 0:
            raise ValueError(f"reward_scale (s_R) must be > 0, got {reward_scale!r}")
        self.reward_scale_init = float(reward_scale)
        self.alpha = self.alpha_max
        self.baseline = 0.0
        self.step_count = 0
        self._n, self._mean, self._m2 = 0, 0.0, 0.0
        self.last = {"confidence": 0.0, "improvement": 0.0, "mean_reward": 0.0, "alpha_raw": self.alpha_max}

    @property
    def reward_scale(self) -> float:
        if self._n >= 2:
            std = math.sqrt(self._m2 / (self._n - 1))
            if std > 0:
                return std
        return self.reward_scale_init

    def step(self, mean_reward: float, confidence: float) -> float:
        """Advance one step from the two scalars of Sec. 5.1 and return ``alpha_t``."""
        r, c = float(mean_reward), float(confidence)
        if not math.isfinite(r):
            raise ValueError(f"mean reward is not finite: {mean_reward!r}")
        if not (0.0 <= c <= 1.0):
            raise ValueError(f"confidence must be in [0, 1], got {confidence!r}")
        improvement = max(0.0, math.tanh((r - self.baseline) / self.reward_scale))
        self.baseline = (1.0 - self.lam) * self.baseline + self.lam * r
        alpha_raw = self.alpha_max - (self.alpha_max - self.alpha_min) * c * improvement
        self.alpha = (1.0 - self.rho) * self.alpha + self.rho * alpha_raw
        self._n += 1
        delta = r - self._mean
        self._mean += delta / self._n
        self._m2 += delta * (r - self._mean)
        self.step_count += 1
        self.last = {"confidence": c, "improvement": improvement, "mean_reward": r, "alpha_raw": alpha_raw}
        return self.alpha

    def update(self, *, rewards_BG: Tensor, log_p_BG: Tensor, confidence: float | None = None, **stats: Any) -> float:
        """``step(mean(rewards_BG), confidence)``; ``confidence`` defaults to Eq. 19 on ``log_p_BG``."""
        c = entropy_confidence(log_p_BG) if confidence is None else confidence
        return self.step(float(rewards_BG.double().mean()), c)

    def metrics(self) -> dict[str, float]:
        return {
            "apo/alpha": self.alpha,
            "apo/guard_confidence": self.last["confidence"],
            "apo/guard_improvement": self.last["improvement"],
            "apo/guard_baseline": self.baseline,
            "apo/guard_reward_scale": self.reward_scale,
            "apo/guard_alpha_raw": self.last["alpha_raw"],
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "alpha": self.alpha,
            "baseline": self.baseline,
            "step_count": self.step_count,
            "n": self._n,
            "mean": self._mean,
            "m2": self._m2,
            "last": dict(self.last),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.alpha, self.baseline, self.step_count = (
            float(state["alpha"]),
            float(state["baseline"]),
            state["step_count"],
        )
        self._n, self._mean, self._m2 = int(state["n"]), float(state["mean"]), float(state["m2"])
        self.last = dict(state["last"])


class ESSAlpha:
    """ESS-targeting schedule (Eq. 21): ``alpha_t`` solves ``mean_b ESS_b(alpha) = gamma * P`` over the groups with
    reward variance (:func:`apo.solve_ess_alpha`), on ``[alpha_min, alpha_max]``. No smoothing (the paper solves
    afresh each step). A step in which no group has reward variance keeps the previous alpha (initially
    ``alpha_max``): there is nothing to target."""

    name = "ess"

    def __init__(self, alpha_min: float = 0.35, alpha_max: float = 0.9, target_fraction: float = 0.5):
        self.alpha_min, self.alpha_max = _check_range(alpha_min, alpha_max)
        if not (0.0 < target_fraction <= 1.0):
            raise ValueError(f"ess_target (gamma) must be in (0, 1], got {target_fraction!r}")
        self.target_fraction = float(target_fraction)
        self.alpha = self.alpha_max
        self.skipped = 0

    def update(self, *, rewards_BG: Tensor, log_q_BG: Tensor, log_p_BG: Tensor, **stats: Any) -> float:
        signal_B = ~zero_variance_groups(rewards_BG)
        if not bool(signal_B.any()):
            self.skipped += 1
            return self.alpha
        self.alpha = solve_ess_alpha(
            log_q_BG, log_p_BG, self.target_fraction, self.alpha_min, self.alpha_max, signal_B=signal_B
        )
        return self.alpha

    def metrics(self) -> dict[str, float]:
        return {"apo/alpha": self.alpha, "apo/ess_skipped_steps": float(self.skipped)}

    def state_dict(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "skipped": self.skipped}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.alpha, self.skipped = check_alpha(state["alpha"]), int(state["skipped"])


SCHEDULES: dict[str, Callable[..., Any]] = {"fixed": FixedAlpha, "guarded": GuardedAlpha, "ess": ESSAlpha}


def schedule_params(settings: Any) -> dict[str, Any]:
    """The keyword arguments of :func:`make_alpha_schedule` for ``settings.alpha_schedule``, from a config object's
    flat settings of the same names (``apo.APOConfig``, the verl ``APOPolicyLossConfig``): ``alpha``, ``alpha_min``,
    ``alpha_max``, ``alpha_ema`` = rho, ``baseline_ema`` = lambda, ``reward_scale`` = s_R, ``ess_target`` = gamma."""
    name = settings.alpha_schedule
    if name == "fixed":
        return {"alpha": settings.alpha}
    if name == "guarded":
        return {
            "alpha_min": settings.alpha_min,
            "alpha_max": settings.alpha_max,
            "rho": settings.alpha_ema,
            "lam": settings.baseline_ema,
            "reward_scale": settings.reward_scale,
        }
    if name == "ess":
        return {
            "alpha_min": settings.alpha_min,
            "alpha_max": settings.alpha_max,
            "target_fraction": settings.ess_target,
        }
    raise ValueError(f"unknown alpha schedule {name!r} (setting `alpha_schedule`); valid: {sorted(SCHEDULES)}")


def make_alpha_schedule(name: str, **params: Any):
    """Build the schedule registered as ``name`` with ``params``.

    ``fixed(alpha)``, ``guarded(alpha_min, alpha_max, rho, lam, reward_scale)``,
    ``ess(alpha_min, alpha_max, target_fraction)``. Unknown names or parameters raise ``ValueError`` naming them.
    """
    if name not in SCHEDULES:
        raise ValueError(f"unknown alpha schedule {name!r} (setting `alpha_schedule`); valid: {sorted(SCHEDULES)}")
    cls = SCHEDULES[name]
    import inspect

    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = set(params) - accepted
    if unknown:
        raise ValueError(f"alpha schedule {name!r} takes {sorted(accepted)}, not {sorted(unknown)}")
    return cls(**params)
