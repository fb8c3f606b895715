"""The algorithms, each defined once: :data:`REGISTRY` maps a name to an :class:`Algorithm`.

An algorithm is one of two kinds:

* a **group objective** (``apo``, ``adpo``, or a user's function by import path, ``mypkg.losses:listwise_ce``): a pure
  function on whole groups of sequence scores::

      fn(logp_BG, old_logp_BG, rewards_BG, **settings) -> (loss, metrics)

  ``logp_BG`` the policy's sequence scores (``sequence_score``: sum or mean of token log-probs) with gradient,
  ``old_logp_BG`` the anchor's (``pi_old``, the rollout policy), ``rewards_BG`` the raw rewards, one row per verified
  whole group; ``loss`` a scalar, ``metrics`` a dict of scalar tensors. The trainers verify the groups, compute the
  sequence scores and call it (:func:`batch_objective`);
* a **TRL loss** (``grpo``, ``gspo``, ``dapo``, ...): TRL's own ``_compute_loss`` with the ``loss_type``, ratio level
  and clip range the algorithm implies (:attr:`Algorithm.trl`).

Every entry holds what the rest of the package reads: the objective, its settings (a small dataclass whose fields
carry their help and range in field metadata, one ``validate()``), the keys it reads, its ``apo compare`` presets
and its TRL mapping. ``APOConfig``, the CLI's ranges, the presets and the precision defaults read them from here.
A setting the objective does not accept is an error that names it, before any weights load.

Adding a built-in group algorithm: its loss function (the math, in :mod:`apo.core.objectives`) and one
:class:`Algorithm` entry here, with its settings passed as ``objective_kwargs`` (checked against the function's
signature); settings that are config keys of their own take a settings dataclass here and one
``name: type = config_field("name")`` line per new key in ``APOConfig``.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from apo.core.author import author_loss
from apo.core.objectives import adpo_loss, apo_loss, batch_objective, check_objective_kwargs
from apo.core.scores import SCORE_MODES

GROUP = "group"
TRL = "trl"

# ----------------------------------------------------------------------------------------------------------------
# Settings: fields with their help and range in metadata.


def setting(default: Any, help: str, *, range: str | None = None, choices=None, why: str = "") -> Any:
    """A dataclass field with ``help``, and optionally ``range`` (``"[0, 1]"``, ``"> 0"``, ``"(0, 1]"``,
    alternatives joined by ``" | "``; :func:`in_range`), ``choices`` and a ``why`` said when the range is broken."""
    meta = {"help": help}
    if range is not None:
        meta["range"] = range
    if choices is not None:
        meta["choices"] = tuple(choices)
    if why:
        meta["why"] = why
    return field(default=default, metadata=meta)


_BOUND = re.compile(r"^(>=|>|<=|<)\s*(\S+)$")
_INTERVAL = re.compile(r"^([\[(])\s*(\S+)\s*,\s*(\S+)\s*([\])])$")


@functools.cache
def _range_test(spec: str) -> Callable[[float], bool]:
    tests = []
    for part in spec.split("|"):
        part = part.strip()
        if m := _BOUND.match(part):
            op, b = m.group(1), float(m.group(2))
            tests.append({">=": b.__le__, ">": b.__lt__, "<=": b.__ge__, "<": b.__gt__}[op])
        elif m := _INTERVAL.match(part):
            lo_c, lo, hi, hi_c = m.group(1), float(m.group(2)), float(m.group(3)), m.group(4)
            tests.append(
                lambda v, lo=lo, hi=hi, lo_c=lo_c, hi_c=hi_c: (
                    (v >= lo if lo_c == "[" else v > lo) and (v <= hi if hi_c == "]" else v < hi)
                )
            )
        else:
            tests.append(float(part).__eq__)
    return lambda v: not math.isnan(v) and any(t(v) for t in tests)


def in_range(value: float, spec: str) -> bool:
    """Whether ``value`` lies in the range ``spec``: ``">= 1"``, ``"> 0"``, ``"[0, 1]"``, ``"(0, 1]"``, ``"[0, 1)"``,
    or alternatives joined by ``" | "`` (``"-1 | >= 1"``: the single value -1, or >= 1); NaN is in none."""
    return _range_test(spec)(float(value))


def range_text(spec: str) -> str:
    """``"in [0, 1]"`` for an interval, the spec itself otherwise (``"> 0"``), as in "must be ..."."""
    return f"in {spec}" if spec[:1] in "[(" else spec


def check_fields(settings: Any, fields: tuple[str, ...] | None = None, prefix: str = "") -> None:
    """Check the ``choices`` and ``range`` in the metadata of ``settings``' dataclass fields (all, or ``fields``);
    ``None`` passes (unset). Raises a one-line ``ValueError`` naming ``<prefix><field>``."""
    for f in dataclasses.fields(settings):
        if fields is not None and f.name not in fields:
            continue
        value = getattr(settings, f.name)
        choices, spec = f.metadata.get("choices"), f.metadata.get("range")
        if choices is not None and value not in choices:
            raise ValueError(f"unknown {prefix}{f.name} {value!r}; valid: {list(choices)}")
        if spec is None or value is None:
            continue
        ok = not isinstance(value, bool) and isinstance(value, (int, float)) and in_range(value, spec)
        if not ok:
            why = f" ({f.metadata['why']})" if "why" in f.metadata else ""
            raise ValueError(f"{prefix}{f.name} must be {range_text(spec)}{why}, got {value!r}")


@dataclass
class AnchoredSettings:
    """The settings of the anchored group objectives (APO, ADPO): the Boltzmann target ``q = softmax(zscore(R) /
    beta_r)`` (Eq. 4-5) and the anchored policy ``p = softmax((l - l_old) / tau_anc)`` (Eq. 2-3)."""

    tau_anchor: float = setting(0.8, "Anchor temperature tau_anc > 0 (Eq. 2).", range="> 0")
    beta_reward: float = setting(1.0, "Target temperature beta_r > 0 (Eq. 5).", range="> 0")
    reward_eps: float = setting(
        1e-6,
        "epsilon in the group z-score of rewards (Eq. 4).",
        range="> 0",
        why="Eq. 4's epsilon; 0 makes equal-reward groups NaN",
    )
    sequence_score: str = setting(
        "sum",
        "Sequence score l_i: 'sum' of token log-probs (the paper) or length-normalised 'mean'.",
        choices=SCORE_MODES,
    )

    def validate(self) -> None:
        check_fields(self)

    def objective_kwargs(self, alpha: float) -> dict[str, Any]:
        """The keyword settings of the objective (``alpha``: the schedule's, unused here)."""
        return {"tau_anchor": self.tau_anchor, "beta_reward": self.beta_reward, "eps": self.reward_eps}


ALPHA_SCHEDULES = ("fixed", "guarded", "ess")
CONFIDENCE_SOURCES = ("anchored", "sequence", "token")


def weight_clip_of(w_min: float | None, w_max: float | None) -> tuple[float, float] | None:
    """``(w_min, w_max)`` of Eq. 24 from the two settings, or ``None`` when both are unset (no clipping); one missing
    end means no clipping on that side (``0`` below, ``inf`` above)."""
    if w_min is None and w_max is None:
        return None
    return (0.0 if w_min is None else float(w_min)), (float("inf") if w_max is None else float(w_max))


@dataclass
class APOSettings(AnchoredSettings):
    """APO's settings: the anchored ones plus the alpha schedule (Sec. 5) and the weight clip (Eq. 24)."""

    alpha_schedule: str = setting(
        "fixed",
        f"APO alpha schedule: one of {ALPHA_SCHEDULES} (Sec. 5; only with algorithm='apo').",
        choices=ALPHA_SCHEDULES,
    )
    alpha: float = setting(0.6, "alpha of the 'fixed' schedule, in [0, 1].", range="[0, 1]")
    alpha_min: float = setting(0.35, "Lower end of alpha for 'guarded' and 'ess' (Eq. 22).", range="[0, 1]")
    alpha_max: float = setting(
        0.9, "Upper end of alpha, and the starting alpha, for 'guarded' and 'ess'.", range="[0, 1]"
    )
    alpha_ema: float = setting(0.1, "rho in (0, 1]: EMA rate of the guarded alpha (Eq. 23).", range="(0, 1]")
    baseline_ema: float = setting(
        0.1, "lambda in (0, 1]: EMA rate of the guarded reward baseline (Eq. 20).", range="(0, 1]"
    )
    reward_scale: float = setting(
        0.5, "Initial s_R > 0 of the guarded schedule, then the pooled std of rewards.", range="> 0"
    )
    ess_target: float = setting(
        0.5, "gamma in (0, 1]: the 'ess' schedule targets mean ESS = gamma * G (Eq. 21).", range="(0, 1]"
    )
    weight_clip_min: float | None = setting(
        None, "w_min in [0, 1] of the APO weight clip (Eq. 24); None with max = off.", range="[0, 1]"
    )
    weight_clip_max: float | None = setting(
        None, "w_max >= 1 of the APO weight clip (Eq. 24); None with min = off.", range=">= 1"
    )
    confidence_source: str = setting(
        "anchored",
        "Confidence c_t of the guarded schedule: 'anchored' (Eq. 19, always 0 on-policy), 'sequence' "
        "(entropy of softmax of per-token-mean log-probs over each group) or 'token' (next-token entropy).",
        choices=CONFIDENCE_SOURCES,
    )

    def validate(self) -> None:
        clip = self.weight_clip if all(isinstance(w, (int, float, type(None))) for w in self._clip_ends) else None
        if clip is not None and not (0.0 <= clip[0] <= 1.0 <= clip[1]):  # said of both ends: either may be the fix
            raise ValueError(
                f"weight clip needs 0 <= weight_clip_min <= 1 <= weight_clip_max, got "
                f"weight_clip_min={self.weight_clip_min}, weight_clip_max={self.weight_clip_max}"
            )
        check_fields(self)
        if self.alpha_min > self.alpha_max:
            raise ValueError(f"alpha_min ({self.alpha_min}) must be <= alpha_max ({self.alpha_max})")
        if self.confidence_source != "anchored" and self.alpha_schedule != "guarded":
            raise ValueError(
                f"confidence_source={self.confidence_source!r} is read by alpha_schedule='guarded' only "
                f"(alpha_schedule={self.alpha_schedule!r}): use confidence_source='anchored' or "
                "alpha_schedule='guarded'"
            )

    @property
    def _clip_ends(self) -> tuple:
        return self.weight_clip_min, self.weight_clip_max

    @property
    def weight_clip(self) -> tuple[float, float] | None:
        """``(w_min, w_max)`` of Eq. 24 (:func:`weight_clip_of`)."""
        return weight_clip_of(self.weight_clip_min, self.weight_clip_max)

    def objective_kwargs(self, alpha: float) -> dict[str, Any]:
        return {**super().objective_kwargs(alpha), "alpha": alpha, "weight_clip": self.weight_clip}


# ----------------------------------------------------------------------------------------------------------------
# The registry.


@dataclass(frozen=True)
class Algorithm:
    """One algorithm: its kind, objective, settings, the config keys it reads, presets and TRL mapping.

    Attributes:
        name: the ``algorithm`` value (a registry name, or ``module:function`` for a user's group objective).
        kind: :data:`GROUP` (a group objective, run by this package) or :data:`TRL` (TRL's own loss).
        objective: group kind: ``fn(logp_BG, old_logp_BG, rewards_BG, **settings) -> (loss, metrics)``.
        settings: group built-ins: the dataclass of the settings read from the config (``objective_kwargs()``
            turns them into the objective's keywords); ``None`` for a user's objective (``objective_kwargs`` key).
        reads: config keys read only by some algorithms that this one reads (besides ``settings``' fields).
        trl: TRL kind: ``loss_type``, ``importance_sampling_level`` and clip range implied when left unset.
        presets: ``apo compare`` presets, name -> config overrides.
        metric_prefix: where the objective's metrics are logged, ``<prefix>/<key>``; ``None``: as returned.
        logs_alpha: whether the trainer logs ``apo/alpha`` (the alpha the objective was given, 1 without one).
    """

    name: str
    kind: str
    objective: Callable[..., tuple[Tensor, dict[str, Tensor]]] | None = None
    settings: type | None = None
    reads: tuple[str, ...] = ()
    trl: Mapping[str, Any] = field(default_factory=dict)
    presets: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    metric_prefix: str | None = None
    logs_alpha: bool = False

    @property
    def keys(self) -> tuple[str, ...]:
        """Every config key that this algorithm reads among those only some algorithms read."""
        own = tuple(f.name for f in dataclasses.fields(self.settings)) if self.settings else ()
        return own + self.reads

    @property
    def has_alpha_schedule(self) -> bool:
        return "alpha_schedule" in self.keys

    def settings_from(self, source: Any, aliases: Mapping[str, str] | None = None):
        """This algorithm's settings dataclass filled from the attributes of ``source`` (a config), validated;
        ``aliases`` maps a settings field to ``source``'s name for it (verl's ``eps`` for ``reward_eps``); a field
        ``source`` does not have keeps its default."""
        aliases = aliases or {}
        fields = dataclasses.fields(self.settings)  # a key the source lacks keeps its default (verl has no confidence)
        values = {f.name: getattr(source, aliases.get(f.name, f.name), f.default) for f in fields}
        settings = self.settings(**values)
        settings.validate()
        return settings

    def objective_kwargs(self, source: Any, alpha: float = 1.0, aliases: Mapping[str, str] | None = None) -> dict:
        """The keyword settings of the objective for config ``source``: a built-in's from its settings fields, a
        user's objective's from ``source.objective_kwargs``."""
        if self.settings is None:
            return dict(getattr(source, "objective_kwargs", None) or {})
        return self.settings_from(source, aliases).objective_kwargs(alpha)

    def check_objective_kwargs(self, kwargs: Mapping[str, Any]) -> None:
        """Raise ``ValueError`` naming a keyword setting the objective does not accept, or a required one missing."""
        check_objective_kwargs(self.objective, kwargs, self.name)

    def batch_objective(self) -> Callable[..., tuple[Tensor, dict[str, Tensor]]]:
        """The objective on a flat batch (:func:`batch_objective`)."""
        return batch_objective(self.objective, self.name)


_ANCHOR = {"tau_anchor": 0.8, "beta_reward": 1.0}
_AUTHOR = {"algorithm": "apo-author", "alpha_schedule": "fixed", "sequence_score": "mean"}  # length-normalised
_TRL_RATIO = ("loss_type", "importance_sampling_level", "scale_rewards")
_CLIP = ("epsilon", "epsilon_high", "delta")
_SAPO = ("sapo_temperature_pos", "sapo_temperature_neg")

# Entry order is the order of the presets in `apo compare`'s tables and figures.
REGISTRY: dict[str, Algorithm] = {
    a.name: a
    for a in (
        Algorithm(
            "apo",
            GROUP,
            objective=apo_loss,
            settings=APOSettings,
            logs_alpha=True,
            presets={
                "apo-ess": {
                    "algorithm": "apo",
                    "alpha_schedule": "ess",
                    "alpha_min": 0.35,
                    "alpha_max": 0.9,
                    "ess_target": 0.5,
                    **_ANCHOR,
                },
                "apo-fixed": {"algorithm": "apo", "alpha_schedule": "fixed", "alpha": 0.6, **_ANCHOR},
                "apo-guarded": {
                    "algorithm": "apo",
                    "alpha_schedule": "guarded",
                    "alpha_min": 0.35,
                    "alpha_max": 0.9,
                    "alpha_ema": 0.1,
                    "baseline_ema": 0.1,
                    "reward_scale": 0.5,
                    "confidence_source": "anchored",
                    **_ANCHOR,
                },
            },
        ),
        Algorithm(
            "gspo",
            TRL,
            reads=_TRL_RATIO + _CLIP,
            trl={"loss_type": "grpo", "importance_sampling_level": "sequence", "epsilon": 3e-4, "epsilon_high": 4e-4},
            presets={
                "gspo": {
                    "algorithm": "gspo",
                    "alpha_schedule": "fixed",
                    "importance_sampling_level": "sequence",
                    "loss_type": "grpo",
                    "epsilon": 3e-4,
                    "epsilon_high": 4e-4,
                }
            },
        ),
        Algorithm(
            "adpo",
            GROUP,
            objective=adpo_loss,
            settings=AnchoredSettings,
            logs_alpha=True,
            presets={"adpo": {"algorithm": "adpo", "alpha_schedule": "fixed", **_ANCHOR}},
        ),
        Algorithm(
            "apo-author",
            GROUP,
            objective=author_loss,  # the paper's public code (apo.core.author); its settings are objective_kwargs
            reads=("sequence_score", "objective_kwargs"),
            presets={
                # the alpha-divergence branch with its on-policy switch, at the settings the author's loss reads
                "apo-author": {**_AUTHOR, "objective_kwargs": {"path": "alphapo"}},
                # the branch the author's trainer reaches (a precomputed q): what Figure 1's runs trained
                "apo-author-ran": {**_AUTHOR, "objective_kwargs": {"path": "precomputed-q"}},
                # the author's alpha-divergence branch at the paper's values (Sec. 7.1): sum scores, tau 0.8,
                # beta_r 1.0 on z-scored rewards (P = 8 is the bundled configs' already)
                "apo-author-paper": {
                    **_AUTHOR,
                    "sequence_score": "sum",
                    "objective_kwargs": {"path": "alphapo", "tau": 0.8, "beta_reward": 1.0, "scale_rewards": True},
                },
            },
        ),
        Algorithm(
            "grpo",
            TRL,
            reads=_TRL_RATIO + _CLIP + _SAPO,  # TRL's loss as configured: any loss_type, sapo's included
            trl={"loss_type": "grpo", "importance_sampling_level": "token", "epsilon": 0.2},
            presets={"grpo": {"algorithm": "grpo", "alpha_schedule": "fixed", "loss_type": "grpo", "epsilon": 0.2}},
        ),
        Algorithm(
            "dapo",
            TRL,
            reads=_TRL_RATIO + _CLIP,
            trl={"loss_type": "dapo", "importance_sampling_level": "token", "epsilon": 0.2, "epsilon_high": 0.28},
            presets={
                "dapo": {
                    "algorithm": "dapo",
                    "alpha_schedule": "fixed",
                    "loss_type": "dapo",
                    "epsilon": 0.2,
                    "epsilon_high": 0.28,
                    "mask_truncated_completions": True,
                }
            },
        ),
        Algorithm(
            "dr_grpo",
            TRL,
            reads=_TRL_RATIO + _CLIP,
            trl={"loss_type": "dr_grpo", "importance_sampling_level": "token", "epsilon": 0.2},
            presets={
                "dr_grpo": {
                    "algorithm": "dr_grpo",
                    "alpha_schedule": "fixed",
                    "loss_type": "dr_grpo",
                    "epsilon": 0.2,
                    "scale_rewards": "none",
                }
            },
        ),
        Algorithm(
            "cispo",
            TRL,
            reads=_TRL_RATIO + ("epsilon_high",),  # CISPO's truncation of the ratio is its only clip
            trl={"loss_type": "cispo", "importance_sampling_level": "token", "epsilon": 0.2, "epsilon_high": 5.0},
            presets={
                "cispo": {"algorithm": "cispo", "alpha_schedule": "fixed", "loss_type": "cispo", "epsilon_high": 5.0}
            },
        ),
        Algorithm(
            "sapo",
            TRL,
            reads=_TRL_RATIO + _SAPO,  # a soft gate in place of the clip: no epsilon, epsilon_high, delta
            trl={"loss_type": "sapo", "importance_sampling_level": "token", "epsilon": 0.2},
            presets={
                "sapo": {
                    "algorithm": "sapo",
                    "alpha_schedule": "fixed",
                    "loss_type": "sapo",
                    "sapo_temperature_pos": 1.0,
                    "sapo_temperature_neg": 1.05,
                }
            },
        ),
    )
}
"""Built-in algorithms by name. Sources of the TRL mappings: GRPO (DeepSeekMath; ``loss_type="grpo"`` is its
per-sequence mean), GSPO paper v2 Sec. 5.1 (3e-4 / 4e-4, sequence-level ratio), DAPO paper (clip-higher 0.2 / 0.28,
token-mean loss), Dr. GRPO paper (constant normaliser), CISPO: MiniMax-M1 paper with TRL's documented ScaleRL value
``epsilon_high = 5.0``, SAPO paper (its temperatures are TRL's defaults)."""


def names(kind: str | None = None) -> tuple[str, ...]:
    """The built-in algorithm names (of one ``kind``), group objectives first, in registry order."""
    order = sorted(REGISTRY.values(), key=lambda a: a.kind != GROUP)
    return tuple(a.name for a in order if kind is None or a.kind == kind)


def is_import_path(name: str) -> bool:
    """``module:function`` (a user's group objective) rather than a registry name."""
    return isinstance(name, str) and ":" in name


def get_algorithm(name: str) -> Algorithm:
    """The :class:`Algorithm` named ``name``: a registry name, or ``module:function``, a user's group objective
    (imported, checked callable, with three positional parameters).

    Raises:
        ValueError: an unknown name (listing the valid ones), a path that does not import, an object that is not
            callable or does not take ``(logp_BG, old_logp_BG, rewards_BG)``.
    """
    if is_import_path(name):
        return _user_algorithm(name)
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown algorithm {name!r}; valid: {list(names())} or 'module:function' (a group objective)"
        ) from None


@functools.cache
def _user_algorithm(path: str) -> Algorithm:
    module_name, _, attr = path.partition(":")
    where = f"algorithm {path!r}"
    if not module_name or not attr:
        raise ValueError(f"{where}: write a group objective as 'module:function' (e.g. mypkg.losses:listwise_ce)")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 - any failure to import, said in one line
        raise ValueError(f"{where}: cannot import {module_name!r} ({type(e).__name__}: {e})") from None
    fn = module
    for part in attr.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise ValueError(f"{where}: module {module_name!r} has no attribute {attr!r}")
    if not callable(fn):
        raise ValueError(f"{where}: {attr!r} ({type(fn).__name__}) is not callable")
    try:
        inspect.signature(fn).bind_partial(None, None, None)
    except TypeError:
        raise ValueError(
            f"{where}: a group objective is called fn(logp_BG, old_logp_BG, rewards_BG, **objective_kwargs); "
            f"{attr}{_signature(fn)} does not take three positional arguments"
        ) from None
    except ValueError:  # no signature (a builtin): checked when called
        pass
    prefix = getattr(fn, "__name__", attr.rsplit(".", 1)[-1])
    return Algorithm(path, GROUP, objective=fn, reads=("sequence_score", "objective_kwargs"), metric_prefix=prefix)


def objective_path(fn: Callable) -> str:
    """The ``module:function`` path of a module-level function, by which a config names it (so that the config
    stays text: saved, compared and read back like any other).

    Raises:
        ValueError: ``fn`` is not reachable by its path (a lambda, a local function, a bound method).
    """
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    path = f"{module}:{qualname}"
    try:
        found = _user_algorithm(path).objective if module and "<" not in qualname else None
    except ValueError:
        found = None
    if found is not fn:
        raise ValueError(
            f"algorithm={fn!r}: a group objective is named by its import path; define it at the top level of a "
            "module and pass it (or 'module:function')"
        )
    return path


def _signature(fn) -> str:
    try:
        return str(inspect.signature(fn))
    except (TypeError, ValueError):
        return "(...)"


def readers(key: str) -> tuple[str, ...]:
    """The built-in algorithms that read ``key``, when only some do (empty when every algorithm reads it)."""
    return tuple(a.name for a in REGISTRY.values() if key in a.keys)


def settings_fields() -> dict[str, dataclasses.Field]:
    """Every settings field of the built-in group algorithms, by name (one definition each)."""
    out: dict[str, dataclasses.Field] = {}
    for a in REGISTRY.values():
        for f in dataclasses.fields(a.settings) if a.settings else ():
            out.setdefault(f.name, f)
    return out


def config_field(name: str) -> Any:
    """A copy of the settings field ``name`` (default, help, range) for a config dataclass that holds it."""
    f = settings_fields()[name]
    return field(default=f.default, metadata=dict(f.metadata))
