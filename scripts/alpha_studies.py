"""The tables of the three alpha studies (docs/results.md, "Where alpha should act"), from a comparison's saved runs.

    python scripts/alpha_studies.py runs/alpha-low --reference apo-fixed@alpha=0.6 --slope alpha
    python scripts/alpha_studies.py runs/confident-wrong --reference grpo \\
        --measure runs/confident-wrong/measure.jsonl

Per group of runs (``apo compare`` names them ``<preset>[@key=value...]-seed<k>``), the mean and 95% t half-width
over seeds of: held-out pass@1 and pass@k at the largest k (``eval_after.json``, unbiased estimator), held-out mean
reward (partial credit included), distinct answers per prompt, the sampling distribution's mean token entropy on
held-out prompts (``token_entropy``), TRL's training token entropy over the last 10% of steps (``entropy``), the
first step whose 10-step mean training reward reaches 0.5 (runs that never do are counted apart), and alpha (mean
over all steps of all seeds, and the lowest of any step).

``--reference R --by K``: the Welch 95% interval of each group minus the reference group with the same value of the
swept key ``K`` (``apo-fixed@alpha=0.1@updates_per_rollout=4`` - ``R@updates_per_rollout=4``), on pass@1, pass@k,
held-out token entropy and distinct answers. ``--slope KEY``: per value of ``--by``, the least-squares slope of
each of those against the numeric variant ``KEY`` over all runs, with its 95% interval
(:func:`apo.stats.slope_interval`), and with ``--figure F.png`` the four against ``KEY``.
``--measure FILE``: the JSON lines of ``python scripts/make_confident_wrong.py --measure`` add P(right) and
P(dropped-carry answer) on the subset and P(right) elsewhere. ``--guard``: the guarded schedule's signals
(:func:`guard_table`). ``--traces F.png``: alpha, training reward and token entropy per step (:func:`trace_figure`).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from apo.cli.plots import find_runs, group_runs, read_metrics, run_stats, variant_pairs
from apo.stats import SMOOTH_WINDOW, mean_ci, slope_interval, welch_interval

OUTCOMES = (
    ("pass1", "pass@1"),
    ("passk", "pass@k"),
    ("entropy_eval", "token entropy (held-out)"),
    ("distinct", "distinct answers"),
)


def outcomes_of(values: dict[str, list[dict]]) -> tuple[tuple[str, str], ...]:
    """:data:`OUTCOMES`, with the held-out mean reward after pass@k when some run's differs from its pass@1 (a
    partial-credit reward; with a binary reward the two are equal)."""
    partial = any(
        r["reward"] is not None and r["pass1"] is not None and abs(r["reward"] - r["pass1"]) > 1e-9
        for runs in values.values()
        for r in runs
    )
    return OUTCOMES[:2] + ((("reward", "mean reward"),) if partial else ()) + OUTCOMES[2:]


def run_values(run: Path, measured: dict[str, dict]) -> dict[str, float | None]:
    """The per-run numbers of the tables (``None`` where missing)."""
    after = json.loads((run / "eval_after.json").read_text()) if (run / "eval_after.json").is_file() else {}
    passk = after.get("pass_at_k") or {}  # {"1": mean, ..., "16": mean}
    ks = sorted(int(k) for k in passk)
    rows = read_metrics(run)
    alphas = [float(r["apo/alpha"]) for r in rows if "apo/alpha" in r]
    stats = run_stats(run)
    out = {
        "pass1": passk.get("1"),
        "passk": passk[str(ks[-1])] if ks else None,
        "k": ks[-1] if ks else None,
        "reward": after.get("reward"),
        "distinct": after.get("distinct_answers"),
        "entropy_eval": after.get("token_entropy"),
        "entropy_train": stats["final_entropy"],
        "steps_to_half": stats["steps_to_threshold"],
        "alpha_mean": sum(alphas) / len(alphas) if alphas else None,
        "alpha_min": min(alphas) if alphas else None,
    }
    m = measured.get(run.name)
    if m:
        out.update(right_subset=m["subset_p_right"], wrong_subset=m["subset_p_wrong"], right_rest=m["rest_p_right"])
    return out


def _fmt(values: list[float | None], decimals: int = 3) -> str:
    xs = [v for v in values if v is not None and not math.isnan(v)]
    if not xs:
        return "—"
    m, half, n = mean_ci(xs)
    return f"{m:.{decimals}f}" if n < 2 else f"{m:.{decimals}f} ± {half:.{decimals}f}"


COLUMNS = {
    "pass1": ("pass@1", 3),
    "passk": ("pass@k", 3),
    "reward": ("reward", 3),
    "distinct": ("distinct", 2),
    "entropy_eval": ("entropy (held-out)", 3),
    "entropy_train": ("entropy (training, last 10%)", 3),
    "right_subset": ("P(right) subset", 3),
    "wrong_subset": ("P(carry dropped) subset", 3),
    "right_rest": ("P(right) elsewhere", 3),
    "steps": ("steps to 0.5", 0),
    "alpha": ("alpha mean (min)", 3),
}
"""The columns of :func:`group_table` by name (``--columns``): title and decimals."""


def group_table(values: dict[str, list[dict]], columns: list[str]) -> str:
    """Markdown: one row per group, ``mean ± 95% half-width`` over its seeds, in the named ``columns``
    (:data:`COLUMNS`); ``steps``: the mean first step whose 10-step training reward reaches 0.5 (runs that never do
    counted apart); ``alpha``: the mean over all steps of all seeds, and the lowest of any step."""
    lines = ["| group | n | " + " | ".join(COLUMNS[c][0] for c in columns) + " |", "|---|---|" + "---|" * len(columns)]
    for label, runs in values.items():
        cells = []
        for col in columns:
            if col == "steps":
                reached = [float(r["steps_to_half"]) for r in runs if r["steps_to_half"] is not None]
                never = len(runs) - len(reached)
                cells.append(_fmt(reached, 0) + (f" ({never} never)" if never else ""))
            elif col == "alpha":
                alphas = [r["alpha_mean"] for r in runs if r["alpha_mean"] is not None]
                lows = [r["alpha_min"] for r in runs if r["alpha_min"] is not None]
                cells.append(f"{sum(alphas) / len(alphas):.3f} ({min(lows):.3f})" if alphas else "—")
            else:
                cells.append(_fmt([r.get(col) for r in runs], COLUMNS[col][1]))
        lines.append(f"| {label} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _matching(label: str, reference: str, by: str) -> str:
    """The reference group's label with ``label``'s value of the swept key ``by``."""
    pairs = variant_pairs(label)[1]
    return reference + (f"@{by}={pairs[by]}" if by in pairs else "")


MEASURED = tuple((key, COLUMNS[key][0]) for key in ("right_subset", "wrong_subset"))


def reference_table(values: dict[str, list[dict]], reference: str, by: str) -> str:
    """Markdown: Welch 95% intervals of each group minus its matching reference group, per outcome (and the subset
    probabilities when measured)."""
    measured = any("right_subset" in r for runs in values.values() for r in runs)
    outcomes = outcomes_of(values) + (MEASURED if measured else ())
    lines = ["| group − " + reference + " | " + " | ".join(t for _, t in outcomes) + " |"]
    lines.append("|---|" + "---|" * len(outcomes))
    for label, runs in values.items():
        ref = _matching(label, reference, by)
        if ref == label or ref not in values:
            continue
        cells = []
        for key, _ in outcomes:
            xs = [r[key] for r in runs if r.get(key) is not None]
            ys = [r[key] for r in values[ref] if r.get(key) is not None]
            diff, half = welch_interval(xs, ys)
            cells.append(f"{diff:+.3f} ± {half:.3f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def slope_table(values: dict[str, list[dict]], key: str, by: str) -> str:
    """Markdown: per value of ``by``, the slope of each outcome against the numeric variant ``key``, 95% interval."""
    points: dict[str, list[tuple[float, dict]]] = {}
    for label, runs in values.items():
        pairs = variant_pairs(label)[1]
        if key in pairs:
            points.setdefault(pairs.get(by, "—"), []).extend((float(pairs[key]), r) for r in runs)
    outcomes = outcomes_of(values)
    lines = [f"| {by} | runs | " + " | ".join(f"d({t}) / d{key}" for _, t in outcomes) + " |"]
    lines.append("|---|---|" + "---|" * len(outcomes))
    for value, pts in points.items():
        cells = []
        for outcome, _ in outcomes:
            xy = [(x, r[outcome]) for x, r in pts if r[outcome] is not None]
            b, half = slope_interval([x for x, _ in xy], [y for _, y in xy])
            cells.append(f"{b:+.3f} ± {half:.3f}")
        lines.append(f"| {value} | {len(pts)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def slope_figure(values: dict[str, list[dict]], key: str, by: str, out: Path) -> Path:
    """``out``: pass@1, pass@k, held-out token entropy and distinct answers against the numeric variant ``key``, one
    line per value of ``by``, mean ± 95% t half-width over seeds."""
    from apo.cli.plots import pyplot

    plt = pyplot()
    lines: dict[str, list[tuple[float, list[dict]]]] = {}
    for label, runs in values.items():
        pairs = variant_pairs(label)[1]
        if key in pairs:
            lines.setdefault(f"{by}={pairs.get(by, '—')}", []).append((float(pairs[key]), runs))
    outcomes = outcomes_of(values)
    fig, axes = plt.subplots(1, len(outcomes), figsize=(4.2 * len(outcomes), 3.4))
    for ax, (outcome, title) in zip(axes, outcomes, strict=True):
        for i, (name, pts) in enumerate(sorted(lines.items())):
            pts = sorted(pts, key=lambda p: p[0])
            stats = [mean_ci([r[outcome] for r in runs if r[outcome] is not None]) for _, runs in pts]
            xs = [x + 0.006 * (i - (len(lines) - 1) / 2) for x, _ in pts]
            ax.errorbar(xs, [m for m, _, _ in stats], yerr=[h if h == h else 0.0 for _, h, _ in stats], marker="o",
                        ms=3.5, lw=1.2, capsize=3, label=name)  # fmt: skip
        ax.set_xlabel(key)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Held-out, after training, against {key}: mean ± 95% t-interval over seeds", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def guard_table(groups: dict[str, list[Path]]) -> str:
    """Markdown: for the groups whose runs log the guarded schedule (``apo/guard_*``), over all steps of all seeds,
    the mean confidence ``c_t`` and improvement ``p_t`` (Eq. 19-20), the share of steps with ``p_t = 0`` (stuck),
    and the mean change of alpha from the step before on stuck steps and on improving ones (Eq. 22-23: alpha rises
    back toward ``alpha_max`` when stuck, falls when confident and improving), and alpha's range."""
    head = "| group | steps | mean c_t | mean p_t | steps with p_t = 0 | mean Δalpha, p_t = 0 | mean Δalpha, p_t > 0 |"
    lines = [head + " alpha range |", "|---|---|---|---|---|---|---|---|"]
    for label, runs in groups.items():
        conf, imp, stuck, moving, alphas = [], [], [], [], []
        for run in runs:
            rows = [r for r in read_metrics(run) if "apo/guard_confidence" in r and "apo/alpha" in r]
            for prev, row in zip(rows, rows[1:], strict=False):
                delta = row["apo/alpha"] - prev["apo/alpha"]
                (stuck if row["apo/guard_improvement"] == 0 else moving).append(delta)
            conf += [r["apo/guard_confidence"] for r in rows]
            imp += [r["apo/guard_improvement"] for r in rows]
            alphas += [r["apo/alpha"] for r in rows]
        if not conf:
            continue

        def mean(xs):
            return f"{sum(xs) / len(xs):+.4f}" if xs else "—"

        lines.append(
            f"| {label} | {len(conf)} | {sum(conf) / len(conf):.3f} | {sum(imp) / len(imp):.3f} | "
            f"{len(stuck) / max(1, len(stuck) + len(moving)):.2f} | {mean(stuck)} | {mean(moving)} | "
            f"{min(alphas):.3f}–{max(alphas):.3f} |"
        )
    return "\n".join(lines)


TRACES = (
    ("apo/alpha", "alpha used", 1),
    ("reward", f"training reward ({SMOOTH_WINDOW}-step mean)", SMOOTH_WINDOW),
    ("entropy", f"token entropy, training ({SMOOTH_WINDOW}-step mean)", SMOOTH_WINDOW),
)


def trace_figure(groups: dict[str, list[Path]], out: Path) -> Path:
    """``out``: alpha, training reward and token entropy over optimizer steps, one line per group (mean over seeds,
    a 95% t band: :func:`apo.cli.plots.draw_band`), the last two smoothed over ``SMOOTH_WINDOW`` steps; the legend
    below the panels."""
    from apo.cli.plots import draw_band, pyplot

    plt = pyplot()
    fig, axes = plt.subplots(1, len(TRACES), figsize=(4.6 * len(TRACES), 3.6))
    colors = plt.get_cmap("tab10")
    for ax, (key, title, window) in zip(axes, TRACES, strict=True):
        for i, (label, runs) in enumerate(groups.items()):
            draw_band(ax, runs, key, window, label, colors(i % 10))
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    for ax in axes[1:]:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06 + 0.035 * ((len(labels) + 1) // 2), 1, 1))
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", help="comparison folders or run directories")
    p.add_argument("--by", default="updates_per_rollout", help="the swept key that pairs a group with its reference")
    p.add_argument("--reference", default="", help="the group every other is compared with (Welch intervals)")
    p.add_argument("--slope", default="", help="a numeric variant key: slope of each outcome against it")
    p.add_argument("--measure", type=Path, help="JSON lines of scripts/make_confident_wrong.py --measure")
    p.add_argument("--figure", type=Path, help="with --slope: draw the outcomes against that key into this PNG")
    p.add_argument("--guard", action="store_true", help="the guarded schedule's confidence, improvement and alpha")
    p.add_argument("--columns", default="", help=f"columns of the group table, comma-separated: {','.join(COLUMNS)}")
    p.add_argument("--traces", type=Path, help="draw alpha, training reward and entropy per step into this PNG")
    opts = p.parse_args()
    measured = {}
    if opts.measure:
        for line in opts.measure.read_text().splitlines():
            row = json.loads(line)
            measured[Path(row["run"]).name] = row
    groups = group_runs(find_runs(opts.paths))
    values = {label: [run_values(r, measured) for r in runs] for label, runs in groups.items()}
    ks = {r["k"] for runs in values.values() for r in runs if r["k"]}
    print(f"pass@k at k = {sorted(ks)}; mean ± 95% t half-width over seeds\n")
    default = [c for c in COLUMNS if measured or c not in ("right_subset", "wrong_subset", "right_rest")]
    print(group_table(values, opts.columns.split(",") if opts.columns else default))
    if opts.reference:
        print()
        print(reference_table(values, opts.reference, opts.by))
    if opts.slope:
        print()
        print(slope_table(values, opts.slope, opts.by))
        if opts.figure:
            slope_figure(values, opts.slope, opts.by, opts.figure)
    if opts.guard:
        print()
        print(guard_table(groups))
    if opts.traces:
        trace_figure(groups, opts.traces)


if __name__ == "__main__":
    main()
