"""Named algorithm presets for ``apo compare``: the paper's five algorithms plus GRPO, as config overrides.

Each preset is a flat mapping of :class:`apo.cli.config.RunConfig` keys, applied on top of the config file (or the
embedded default) and under the command-line ``key=value`` overrides. Values are the paper's (Sec. 7
"Configuration"): ``tau_anc = 0.8``, ``beta_r = 1.0``; ESS schedule with ``alpha in [0.35, 0.9]`` and target
``ESS = 0.5 G`` (Eq. 21); fixed ``alpha = 0.6``; guarded schedule (Eq. 19-23) with ``rho = lambda = 0.1``,
``s_R`` initialised to 0.5 and the anchored confidence ``c_t = 1 - H(p_theta) / log G`` of Eq. 19; GSPO with
TRL's sequence-level ratio ``(pi_theta(y|x) / pi_old(y|x))^(1/|y|)`` clipped to ``[1 - 3e-4, 1 + 4e-4]``.

Algorithms without an alpha (``gspo``, ``adpo``, ``grpo``, ...) set ``alpha_schedule: fixed``, since the config rejects
a schedule it would not use (the embedded default is ``ess``).

The baselines practitioners run off-policy, each through TRL's own loss of that name (values: their papers, or TRL's
documented recommendation where the paper leaves it to the implementation):

- ``dapo``: token-mean loss over the accumulated batch, clip-higher ``[1 - 0.2, 1 + 0.28]`` and overlong filtering
  (``mask_truncated_completions``), DAPO paper Sec. 3 (its dynamic sampling has no TRL switch and is left out);
- ``dr_grpo``: constant normaliser (``max_completion_length``) and no division of advantages by the group std
  (``scale_rewards: none``), Dr. GRPO paper Sec. 3.2; clip 0.2 as GRPO;
- ``cispo``: ``sg(min(ratio, eps_max)) * A * log pi`` with ``eps_max = 5.0``, MiniMax-M1 paper / TRL's documented
  ScaleRL value;
- ``sapo``: a soft, temperature-controlled gate in place of the clip, temperatures 1.0 (A > 0) / 1.05 (A <= 0),
  SAPO paper and TRL's defaults.

A variant or sweep key that the preset's algorithm does not read (``cispo@alpha=0.3``) is an error
(:func:`check_keys_read`): it would otherwise label runs with a setting that changed nothing.
"""

from __future__ import annotations

from typing import Any

from apo.algorithms import REGISTRY, get_algorithm, is_import_path, readers
from apo.cli.config import ConfigError, parse_overrides

PRESETS: dict[str, dict[str, Any]] = {
    name: dict(overrides) for algorithm in REGISTRY.values() for name, overrides in algorithm.presets.items()
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
    if base not in PRESETS and not is_import_path(base):
        raise ConfigError(f"unknown algorithm preset {base!r}; valid: {', '.join(PRESETS)}")
    if any("=" not in pair or pair.startswith("=") for pair in pairs):
        raise ConfigError(
            f"algorithm {name!r}: write a preset variant as PRESET@key=value[@key=value], e.g. apo-fixed@alpha=0.35"
        )
    return base, parse_overrides(pairs)


KEYS_READ_ONLY_BY: dict[str, tuple[str, ...]] = {
    key: readers(key) for algorithm in REGISTRY.values() for key in algorithm.keys
}
"""Keys that only some algorithms read -> those algorithms (every other key is read by all)."""


def check_keys_read(algorithm: str, keys: Any, where: str) -> None:
    """Raise if any of ``keys`` is not read by ``algorithm`` (:data:`KEYS_READ_ONLY_BY`); ``where`` names the
    setting's source in the message (``"variant 'cispo@alpha=0.3'"``).

    Raises:
        ConfigError: ``alpha_schedule``/``alpha``/... on an algorithm other than ``apo``, ``tau_anchor`` on a
            TRL-run algorithm, ``epsilon`` on ``apo``, ...
    """
    reads = get_algorithm(algorithm).keys
    heads = {k.partition(".")[0] for k in keys}  # objective_kwargs.tau: the key objective_kwargs
    ignored = sorted(k for k in heads if k in KEYS_READ_ONLY_BY and k not in reads)
    if ignored:
        said = "; ".join(f"{k} is read by {'/'.join(KEYS_READ_ONLY_BY[k])}" for k in ignored)
        raise ConfigError(f"{where}: algorithm {algorithm!r} ignores {', '.join(ignored)} ({said}): drop it")


def expand_sweep(algorithms: list[str], sweep: list[str]) -> list[str]:
    """``--sweep KEY=V1,V2,...``: every name in ``algorithms`` becomes one variant per value,
    ``NAME@KEY=V1``, ``NAME@KEY=V2``, ... (several sweeps: their product, in the order given). The values are YAML
    scalars, as on the command line: ``--sweep updates_per_rollout=1,4,16``.

    Raises:
        ConfigError: a sweep not written ``KEY=V1[,V2...]``, a key swept twice, a key also set by a variant, or
            ``seed`` / ``output_dir`` (``--seeds`` and ``--out`` set them).
    """
    names = list(algorithms)
    seen: set[str] = set()
    for item in sweep:
        key, sep, values = item.partition("=")
        key = key.strip()
        parts = [v.strip() for v in values.split(",")]
        if not sep or not key or not all(parts):
            raise ConfigError(f"--sweep {item!r}: write KEY=V1,V2,... (e.g. --sweep updates_per_rollout=1,4,16)")
        if key in ("seed", "output_dir"):
            flag = "--seeds" if key == "seed" else "--out"
            raise ConfigError(f"--sweep {key}: apo compare sets {key} of every run; use {flag} instead")
        if key in seen:
            raise ConfigError(f"--sweep sweeps {key} twice: give all its values in one --sweep {key}=V1,V2,...")
        seen.add(key)
        for name in names:
            if key in split_variant(name)[1]:
                raise ConfigError(
                    f"{key} is both swept (--sweep) and set by the variant {name!r}: set it in one place"
                )
        names = [f"{name}{VARIANT_SEP}{key}={v}" for name in names for v in parts]
    return names


def preset(name: str) -> dict[str, Any]:
    """A copy of the overrides of preset ``name``; ``PRESET@key=value[@key=value ...]`` names a variant of a preset
    (for ablations: ``apo-fixed@alpha=0.35``), whose pairs (YAML values, as on the command line) override the
    preset's. The whole name labels its runs (``apo-fixed@alpha=0.35-seed0``).

    Raises:
        ConfigError (a ``ValueError``): as :func:`split_variant`, or a variant key that the preset's algorithm
            does not read (:func:`check_keys_read`).
    """
    base, pairs = split_variant(name)
    # a group objective by import path is its own preset: its settings are objective_kwargs
    overrides = PRESETS[base] if base in PRESETS else {"algorithm": base, "alpha_schedule": "fixed"}
    try:
        check_keys_read(overrides["algorithm"], pairs, f"variant {name!r}")
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return {**overrides, **pairs}
