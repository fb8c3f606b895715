"""What the policy's movement within a rollout does to each algorithm, from a comparison's saved runs.

    python scripts/offpolicy_stats.py runs/offpolicy [--markdown]

Per group of runs (``apo compare`` names them ``<preset>[@key=value...]-seed<k>``), over all steps of all seeds:
the mean and range of the alpha the loss used (``apo/alpha``), the mean ESS / G (``apo/ess``), the largest anchored
confidence c_t (``apo/confidence``, Eq. 19), the largest ``|u|`` (``apo/u_abs_max``); for every algorithm the mean
per-token ``KL(pi_theta || pi_old)`` over the steps that are not the first of their rollout
(``offpolicy/kl_old`` where ``offpolicy/staleness > 0``), its largest value, and the mean clip fraction of TRL's ratio
losses (``clip_ratio/region_mean``; ``cispo_clip_ratio`` for CISPO), and the fraction of groups on which the author's
on-policy switch fired (``apo_author/switch_frac``, ``apo-author`` presets). These are the numbers of the "Off-policy"
section of docs/results.md.

    python scripts/offpolicy_stats.py runs/offpolicy --versus grpo,gspo,cispo,sapo,adpo

prints, with ``--matrix updates_per_rollout``, the held-out reward after training (mean ± 95% t half-width over
seeds; collapsed runs counted) as one row per algorithm and one column per value of the swept key; and with
``--versus`` adds, for every group whose preset is an APO one (``apo-*``), the Welch 95% interval of its held-out
reward after training minus that of each named preset with the same variant settings
(``apo-ess@updates_per_rollout=16`` - ``grpo@updates_per_rollout=16``), over seeds
(:func:`apo.stats.welch_interval`).

    python scripts/offpolicy_stats.py runs/precision --without bf16,fp32_anchor_passes

prints, for every group that sets any of the named keys (``apo-ess@bf16=true@updates_per_rollout=4``), the Welch 95%
interval of its held-out reward after training minus that of the group without them
(``apo-ess@updates_per_rollout=4``): the effect of those settings (docs/numerics.md, "Does the rounding matter?").
A mapping's key also names its entries: ``--without objective_kwargs`` pairs ``apo-author-paper@objective_kwargs.tau=0.5``
with ``apo-author-paper`` (docs/results.md, "The paper as run").
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from apo.cli.plots import find_runs, group_runs, read_metrics, run_stats, variant_pairs
from apo.stats import mean_ci, welch_interval


def _values(rows: list[dict], key: str, where=lambda r: True) -> list[float]:
    return [float(r[key]) for r in rows if key in r and where(r) and not math.isnan(float(r[key]))]


def group_stats(runs: list[Path]) -> dict:
    """The statistics of one group of runs (every step of every run pooled)."""
    rows = [row for run in runs for row in read_metrics(run)]
    moved = lambda r: r.get("offpolicy/staleness", 0.0) > 0  # noqa: E731
    alpha = _values(rows, "apo/alpha")
    kl = _values(rows, "offpolicy/kl_old", moved)
    clip = _values(rows, "clip_ratio/region_mean") or _values(rows, "cispo_clip_ratio")

    def mean(xs):
        return sum(xs) / len(xs) if xs else None

    return {
        "runs": len(runs),
        "alpha_mean": mean(alpha),
        "alpha_min": min(alpha) if alpha else None,
        "alpha_max": max(alpha) if alpha else None,
        "ess_mean": mean(_values(rows, "apo/ess")),
        "confidence_max": max(_values(rows, "apo/confidence"), default=None),
        "u_abs_max": max(_values(rows, "apo/u_abs_max"), default=None),
        "u_abs_mean": mean(_values(rows, "apo/u_abs_mean", moved)),
        "kl_old_mean": mean(kl),
        "kl_old_max": max(kl) if kl else None,
        "clip_mean": mean(clip),
        "switch_frac": mean(_values(rows, "apo_author/switch_frac")),
    }


COLUMNS = (
    ("alpha_mean", "alpha mean"),
    ("alpha_min", "alpha min"),
    ("ess_mean", "ESS / G"),
    ("confidence_max", "max c_t"),
    ("u_abs_max", "max |u|"),
    ("u_abs_mean", "mean |u| (moved steps)"),
    ("kl_old_mean", "KL(θ‖old) mean"),
    ("kl_old_max", "KL(θ‖old) max"),
    ("clip_mean", "clip fraction"),
    ("switch_frac", "author's switch"),
)


def matrix_table(groups: dict[str, list[Path]], key: str) -> str:
    """Markdown: held-out reward after training, ``mean ± half-width (collapsed runs)``, per algorithm and value of
    the swept ``key``."""
    cells: dict[str, dict[str, str]] = {}
    values: list[str] = []
    for label, runs in groups.items():
        base, pairs = variant_pairs(label)
        if key not in pairs:
            continue
        rest = "".join(f"@{k}={v}" for k, v in pairs.items() if k != key)
        stats = [run_stats(r) for r in runs]
        m, half, n = mean_ci([s["reward_after"] for s in stats if s["reward_after"] is not None])
        collapsed = sum(bool(s["collapsed"]) for s in stats)
        text = f"{m:.3f} ± {half:.3f}" if n > 1 else f"{m:.3f}"
        cells.setdefault(base + rest, {})[pairs[key]] = text + (
            f" ({collapsed} of {len(runs)} collapsed)" if collapsed else ""
        )
        if pairs[key] not in values:
            values.append(pairs[key])
    lines = ["| algorithm | " + " | ".join(f"{key}={v}" for v in values) + " |", "|---|" + "---|" * len(values)]
    for name, row in cells.items():
        lines.append(f"| {name} | " + " | ".join(row.get(v, "—") for v in values) + " |")
    return "\n".join(lines)


def versus_table(groups: dict[str, list[Path]], baselines: list[str]) -> str:
    """Markdown: per APO group, ``diff ± half-width`` of held-out reward after training against each baseline."""
    after = {label: [run_stats(r)["reward_after"] for r in runs] for label, runs in groups.items()}
    lines = ["| | " + " | ".join(f"− {b}" for b in baselines) + " |", "|---|" + "---|" * len(baselines)]
    for label, values in after.items():
        base, pairs = variant_pairs(label)
        if not base.startswith("apo-"):
            continue
        suffix = "".join(f"@{k}={v}" for k, v in pairs.items())
        cells = []
        for b in baselines:
            other = after.get(b + suffix)
            if other is None:
                cells.append("—")
                continue
            diff, half = welch_interval([v for v in values if v is not None], [v for v in other if v is not None])
            cells.append(f"{diff:+.3f} ± {half:.3f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def without_table(groups: dict[str, list[Path]], keys: list[str]) -> str:
    """Markdown: per group that sets any of ``keys``, ``diff ± half-width`` of held-out reward after training against
    the group with the same label less those keys."""
    after = {label: [run_stats(r)["reward_after"] for r in runs] for label, runs in groups.items()}
    lines = ["| runs | held-out reward after | − the same without " + ", ".join(keys) + " |", "|---|---|---|"]
    for label, values in after.items():
        base, pairs = variant_pairs(label)
        named = [k for k in pairs if k in keys or k.partition(".")[0] in keys]  # objective_kwargs: its KEY.SUBs too
        if not named:
            continue
        plain = base + "".join(f"@{k}={v}" for k, v in pairs.items() if k not in named)
        mine = [v for v in values if v is not None]
        m, half, n = mean_ci(mine)
        other = after.get(plain)
        theirs = [v for v in other if v is not None] if other is not None else []
        cell = "—"
        if len(mine) > 1 and len(theirs) > 1:
            diff, dhalf = welch_interval(mine, theirs)
            cell = f"{diff:+.3f} ± {dhalf:.3f} (vs {plain})"
        text = f"{m:.3f} ± {half:.3f}" if n > 1 else f"{m:.3f}" if n else "—"
        lines.append(f"| {label} | {text} | {cell} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", help="comparison folders or run directories")
    p.add_argument("--markdown", action="store_true", help="print a markdown table")
    p.add_argument("--versus", default="", help="presets to compare the APO groups with (held-out reward)")
    p.add_argument(
        "--matrix", default="", help="a swept key: held-out reward per algorithm (rows) and value (columns)"
    )
    p.add_argument("--without", default="", help="keys: each group that sets them against the group without")
    opts = p.parse_args()
    groups = group_runs(find_runs(opts.paths))
    if opts.matrix:
        print(matrix_table(groups, opts.matrix))
        return
    if opts.without:
        print(without_table(groups, opts.without.split(",")))
        return
    if opts.versus:
        print(versus_table(groups, opts.versus.split(",")))
        return
    lines = ["| runs | n | " + " | ".join(t for _, t in COLUMNS) + " |", "|---|---|" + "---|" * len(COLUMNS)]
    for label, runs in groups.items():
        s = group_stats(runs)
        cells = ["—" if s[k] is None else f"{s[k]:.3g}" if abs(s[k]) < 0.01 else f"{s[k]:.3f}" for k, _ in COLUMNS]
        lines.append(f"| {label} | {s['runs']} | " + " | ".join(cells) + " |")
    print("\n".join(lines) if opts.markdown else "\n".join(line.replace("|", " ") for line in lines))


if __name__ == "__main__":
    main()
