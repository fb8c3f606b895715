"""`apo compare` and `apo plot`: train several algorithms x seeds, then compare them in figures and a table.

A comparison folder holds one run directory per (preset, seed), named ``<preset>-seed<k>`` (see
:mod:`apo.cli.run` for what a run directory holds), and::

    curves.png   mean training reward per step over seeds, with a 95% t-interval (cf. the paper's Figure 1)
    alpha.png    alpha, ESS / G, confidence c_t, p_theta entropy and max |u| of APO / ADPO; token entropy of all
    table.md     per preset: held-out reward before / after, best training reward, steps to a threshold,
                 final token entropy, wall time; mean +- 95% half-width over seeds
    table.json   the same numbers, and every per-seed value, machine-readable
    compare.json the runs of the last `apo compare` call and its wall time

The figures and tables are drawn by :mod:`apo.cli.plots` from saved files only, so ``apo plot`` redraws them without
training.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from apo.cli import config as cfglib
from apo.cli.presets import preset

logger = logging.getLogger("apo")


def run_name(preset_name: str, seed: int) -> str:
    """The run directory name of one (preset, seed): ``apo-ess-seed0``."""
    return f"{preset_name}-seed{seed}"


def default_out_dir(config_path: str | Path | None) -> Path:
    """``runs/compare-<config stem>`` (``runs/compare-default`` for the embedded default)."""
    return Path("runs") / f"compare-{Path(config_path).stem if config_path else 'default'}"


def compare(
    config_path: str | Path | None,
    algorithms: list[str],
    seeds: list[int],
    overrides: list[str],
    out_dir: str | Path | None = None,
) -> Path:
    """Train every preset in ``algorithms`` with every seed in ``seeds``, one run after another, then draw the
    comparison (:func:`plot_comparison`); returns the comparison folder.

    Settings of one run, lowest to highest precedence: the config file (``None``: the embedded default), the preset
    (:data:`apo.cli.presets.PRESETS`), the ``key=value`` ``overrides``, then ``seed=k`` and
    ``output_dir=<out>/<preset>-seed<k>``. The seed sets the draw of training prompts, the sampling and the
    optimizer's randomness; held-out prompts and their sampling seed (``eval_seed``) are the same for every run, so
    ``eval_before.json`` is the same starting point everywhere.

    Every setting is validated before the first run starts. A run whose ``summary.json`` exists is finished and is
    skipped; a run directory without it (a killed comparison) is resumed from its last checkpoint, so rerunning the
    same command completes a comparison. Runs go one after another in this process: one process per GPU where several
    exist is not implemented.

    Raises:
        ConfigError: an unknown preset (listing the valid ones), an invalid override, or a resumed run whose saved
            config differs from the one requested.
    """
    if not algorithms or not seeds:
        raise cfglib.ConfigError("apo compare needs at least one algorithm (--algorithms) and one seed (--seeds)")
    out = Path(out_dir) if out_dir else default_out_dir(config_path)
    user = cfglib.parse_overrides(list(overrides))
    plan = []
    for name in algorithms:
        base = preset(name)
        for seed in seeds:
            run_dir = out / run_name(name, seed)
            values = cfglib.resolve_values(config_path, {**base, **user, "seed": seed, "output_dir": str(run_dir)})
            cfglib.build(values)  # the config's own checks, before anything is trained
            plan.append((run_dir, values))

    t0 = time.time()
    out.mkdir(parents=True, exist_ok=True)
    log = {"config": str(config_path) if config_path else None, "overrides": list(overrides), "runs": []}
    from apo.cli.run import train

    for i, (run_dir, values) in enumerate(plan, 1):
        if (run_dir / "summary.json").exists():
            logger.info("[%d/%d] %s: finished earlier, skipped", i, len(plan), run_dir)
            log["runs"].append({"run": run_dir.name, "status": "skipped"})
            continue
        resume = (run_dir / "config.yaml").exists()
        logger.info("[%d/%d] %s: %s", i, len(plan), run_dir, "resuming" if resume else "training")
        t_run = time.time()
        train(values, resume=resume)
        log["runs"].append(
            {"run": run_dir.name, "status": "resumed" if resume else "trained", "wall_time_s": time.time() - t_run}
        )
    log["wall_time_s"] = time.time() - t0
    (out / "compare.json").write_text(json.dumps(log, indent=2) + "\n")
    return plot_comparison([run_dir for run_dir, _ in plan], out_dir=out)


def plot_comparison(run_dirs: list[Path], out_dir: str | Path | None = None, **kw) -> Path:
    """Draw ``curves.png``, ``alpha.png``, ``table.md`` and ``table.json`` from saved run directories (a folder that
    holds run directories stands for all of them); returns the output folder (default: the runs' common parent).
    Keyword arguments go to :func:`apo.cli.plots.comparison_table` (``window``, ``threshold``)."""
    from apo.cli.plots import write_comparison

    return write_comparison(run_dirs, out_dir, **kw)
