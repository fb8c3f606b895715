"""Named algorithm presets for ``apo compare``: the paper's five algorithms plus GRPO, as config overrides.

Each preset is a flat mapping of :class:`apo.cli.config.RunConfig` keys, applied on top of the config file (or the
embedded default) and under the command-line ``key=value`` overrides. Values are the paper's (Sec. 7
"Configuration"): ``tau_anc = 0.8``, ``beta_r = 1.0``; ESS schedule with ``alpha in [0.35, 0.9]`` and target
``ESS = 0.5 G`` (Eq. 21); fixed ``alpha = 0.6``; guarded schedule (Eq. 19-23) with ``rho = lambda = 0.1``,
``s_R`` initialised to 0.5 and the anchored confidence ``c_t = 1 - H(p_theta) / log G`` of Eq. 19; GSPO with
TRL's sequence-level ratio ``(pi_theta(y|x) / pi_old(y|x))^(1/|y|)`` clipped to ``[1 - 3e-4, 1 + 4e-4]``.

Algorithms without an alpha (``gspo``, ``adpo``, ``grpo``) set ``alpha_schedule: fixed``, since the config rejects a
schedule it would not use (the embedded default is ``ess``).
"""

from __future__ import annotations

from typing import Any

from apo.cli.config import ConfigError, parse_overrides

_ANCHOR = {"tau_anchor": 0.8, "beta_reward": 1.0}

PRESETS: dict[str, dict[str, Any]] = {
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
    "gspo": {
        "algorithm": "gspo",
        "alpha_schedule": "fixed",
        "importance_sampling_level": "sequence",
        "loss_type": "grpo",
        "epsilon": 3e-4,
        "epsilon_high": 4e-4,
    },
    "adpo": {"algorithm": "adpo", "alpha_schedule": "fixed", **_ANCHOR},
    "grpo": {"algorithm": "grpo", "alpha_schedule": "fixed", "loss_type": "grpo", "epsilon": 0.2},
}
"""Preset name -> config overrides."""


VARIANT_SEP = "@"
"""``apo-fixed@alpha=0.35``: preset ``apo-fixed`` with ``alpha: 0.35`` on top (several: ``@k=v@k2=v2``)."""


def split_variant(name: str) -> tuple[str, dict[str, Any]]:
    """``"apo-fixed@alpha=0.35"`` -> ``("apo-fixed", {"alpha": 0.35})``; a plain preset name gives ``{}``.

    Raises:
        ConfigError: an unknown preset (the message lists the valid ones), or a variant part that is not
            ``key=value``.
    """
    base, *pairs = name.split(VARIANT_SEP)
    if base not in PRESETS:
        raise ConfigError(f"unknown algorithm preset {base!r}; valid: {', '.join(PRESETS)}")
    if any("=" not in pair or pair.startswith("=") for pair in pairs):
        raise ConfigError(
            f"algorithm {name!r}: write a preset variant as PRESET@key=value[@key=value], e.g. apo-fixed@alpha=0.35"
        )
    return base, parse_overrides(pairs)


def preset(name: str) -> dict[str, Any]:
    """A copy of the overrides of preset ``name``; ``PRESET@key=value[@key=value ...]`` names a variant of a preset
    (for ablations: ``apo-fixed@alpha=0.35``), whose pairs (YAML values, as on the command line) override the
    preset's. The whole name labels its runs (``apo-fixed@alpha=0.35-seed0``).

    Raises:
        ConfigError (a ``ValueError``): as :func:`split_variant`.
    """
    base, pairs = split_variant(name)
    return {**PRESETS[base], **pairs}
