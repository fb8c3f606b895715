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

        b_t   = (1 - lam) b_{t-1} + lam R_t                       b_0 = R_1        (Eq. 20)
        p_t   = max(0, tanh((R_t - b_{t-1}) / s_R))               p_1 = 0          (Eq. 20)
        a_raw = alpha_max - (alpha_max - alpha_min) c_t p_t                         (Eq. 22)
        a_t   = (1 - rho) a_{t-1} + rho a_raw                     a_0 = alpha_max   (Eq. 23)

    ``s_R`` is the spread of *individual* completion rewards: the pooled standard deviation
    ``sqrt(mean_k sigma_k^2)`` over the past steps ``k < t`` whose spread ``sigma_k`` was measured (``update`` passes
    the unbiased std of all rewards of the step as ``reward_std``), and ``reward_scale`` (0.5, the std of a fair
    binary reward) until a nonzero spread has been measured. The current step's spread enters only after ``p_t`` is
    computed, so a jump is measured against the past spread. Confident and improving -> alpha falls toward
    ``alpha_min``; confident but stuck (``p_t = 0``) -> alpha returns toward ``alpha_max`` at rate ``rho``; not
    confident (``c_t = 0``) -> alpha stays at ``alpha_max``.

    Departures from the paper's text (Algorithm 1: ``b_0 = 0``; Eq. 20: ``s_R`` "e.g., running std"; Sec. 7.1:
    ``s_R`` initialised to 0.5 and updated via running std), both so that Remark 5.1 holds from the first step:

    * ``b_0 = R_1``: with ``b_0 = 0`` the first ~1/lam steps see the whole reward level ``R_t`` as a gain, and a
      confident policy whose reward does not move drives alpha down (0.9 -> ~0.4 within 25 steps at ``R = 0.6``).
    * ``s_R`` on the scale of individual rewards, not the running std of the per-step means ``R_t``: the latter is
      the noise of ``R_t`` itself (~0.04 for 128 binary rewards), so every positive wiggle gave ``p_t`` near 1.
      With ``s_R`` = the individual spread ``sigma``, the noise of ``R_t - b_{t-1}`` is ``~sigma sqrt(1 + lam/(2 -
      lam)) / sqrt(N)`` for ``N`` rewards per step, so a flat reward gives ``E[p_t] ~ 0.41 / sqrt(N)`` whatever the
      reward's level or type, and a trend of ``d`` mean reward per step gives ``R_t - b_{t-1} -> d / lam``, i.e.
      ``p_t -> tanh(d / (lam sigma))``.

    Measured (``c_t = 1``, defaults: alpha in [0.35, 0.9], ``rho = lam = 0.1``; binary rewards through ``step`` with
    ``reward_std``, 20 seeds x 200 steps; ``python benchmarks/guarded_alpha_sim.py``):

    * flat success rate 0.6, 128 rewards per step: alpha settles at 0.881 (mean over steps 50-200); lowest alpha of
      any step of any seed 0.860, first steps included. 64 rewards: 0.872; 16 rewards: 0.845 (lowest 0.785).
    * flat ``step(0.6 + N(0, 0.03), 1)`` without ``reward_std`` (``s_R`` = 0.5): 0.887, lowest 0.867.
    * success rate rising by +0.01 per step (0.2 -> 0.9 in 70 steps, 128 rewards): alpha 0.786 over the last 10
      rising steps; +0.02 per step (0.1 -> 0.9 in 40 steps): 0.696, 0.676-0.700 at the end of the rise. Once the
      rise stops, alpha is back above 0.87 within 25-42 steps.
    * Algorithm 1's literal reading on the same streams: flat 0.6 settles at 0.742 and dips to 0.40 (0.38 for the
      Gaussian means) within the first 25 steps; over the last 10 rising steps alpha is 0.61 / 0.47.

    No ``s_R`` separates a trend from noise better than the reward's signal-to-noise ratio allows: rescaling ``s_R``
    moves the noise's ``E[p_t]`` (``~0.4 sd(R_t) / s_R``) and a trend's ``p_t`` (``~d / (lam s_R)``) by the same
    factor. With ``s_R`` = the individual spread, a flat reward costs ~0.02 of alpha at 128 rewards per step (~0.05
    at 16), and a mean reward rising by 0.01-0.02 per step lowers alpha by 0.1-0.2.
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
        self.baseline = 0.0  # unset until the first step (step_count == 0), then b_t
        self.step_count = 0
        self._var_n, self._var_sum = 0, 0.0  # steps with a measured reward spread, sum of their variances
        self.last = {"confidence": 0.0, "improvement": 0.0, "mean_reward": 0.0, "alpha_raw": self.alpha_max}

    @property
    def reward_scale(self) -> float:
        """``s_R``: the pooled std of individual rewards over the measured past steps, else ``reward_scale``."""
        if self._var_n >= 1 and self._var_sum > 0:
            return math.sqrt(self._var_sum / self._var_n)
        return self.reward_scale_init

    def step(self, mean_reward: float, confidence: float, *, reward_std: float | None = None) -> float:
        """Advance one step from the two scalars of Sec. 5.1 and return ``alpha_t``.

        ``reward_std``: the spread (std) of the step's individual completion rewards, pooled into ``s_R`` for the
        next steps; ``None`` leaves ``s_R`` as it is (``reward_scale`` if never measured).
        """
        r, c = float(mean_reward), float(confidence)
        if not math.isfinite(r):
            raise ValueError(f"mean reward is not finite: {mean_reward!r}")
        if not (0.0 <= c <= 1.0):
            raise ValueError(f"confidence must be in [0, 1], got {confidence!r}")
        if reward_std is not None and not (math.isfinite(float(reward_std)) and float(reward_std) >= 0):
            raise ValueError(f"reward_std must be finite and >= 0, got {reward_std!r}")
        if self.step_count == 0:
            self.baseline = r  # b_0 = R_1: the first step is no gain
        improvement = max(0.0, math.tanh((r - self.baseline) / self.reward_scale))
        self.baseline += self.lam * (r - self.baseline)  # Eq. 20
        alpha_raw = self.alpha_max - (self.alpha_max - self.alpha_min) * c * improvement
        self.alpha += self.rho * (alpha_raw - self.alpha)  # Eq. 23; exact when alpha_raw == alpha
        if reward_std is not None:
            self._var_n += 1
            self._var_sum += float(reward_std) ** 2
        self.step_count += 1
        self.last = {"confidence": c, "improvement": improvement, "mean_reward": r, "alpha_raw": alpha_raw}
        return self.alpha

    def update(self, *, rewards_BG: Tensor, log_p_BG: Tensor, confidence: float | None = None, **stats: Any) -> float:
        """``step(mean(rewards_BG), confidence, reward_std=std(rewards_BG))`` (unbiased std over all ``B * G``
        rewards; none with a single reward); ``confidence`` defaults to Eq. 19 on ``log_p_BG``."""
        c = entropy_confidence(log_p_BG) if confidence is None else confidence
        rewards = rewards_BG.double().flatten()
        std = float(rewards.std()) if rewards.numel() >= 2 else None
        return self.step(float(rewards.mean()), c, reward_std=std)

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
            "var_n": self._var_n,
            "var_sum": self._var_sum,
            "last": dict(self.last),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`. A state saved before ``s_R`` measured individual rewards (keys ``n``/``mean``/
        ``m2``, the running std of the mean rewards, and no ``var_n``/``var_sum``) is refused: its baseline and alpha
        were computed under ``b_0 = 0`` and the old ``s_R``."""
        if "var_n" not in state or "var_sum" not in state:
            raise ValueError(
                "guarded alpha schedule state has no `var_n`/`var_sum` (saved by an older version whose s_R was the "
                "running std of mean rewards); restart the schedule (delete its state file) or use that version"
            )
        self.alpha, self.baseline, self.step_count = (
            float(state["alpha"]),
            float(state["baseline"]),
            int(state["step_count"]),
        )
        self._var_n, self._var_sum = int(state["var_n"]), float(state["var_sum"])
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
