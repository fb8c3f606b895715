"""Figures and tables from saved run directories (``metrics.jsonl``, ``eval_*.json``, ``summary.json``); no training,
no TRL import.

:func:`plot_run` draws one run; :func:`write_comparison` draws several runs grouped by preset (``apo compare``,
``apo plot``), and one ``sweep-<key>.png`` per key swept over variants (``apo compare --sweep``).
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

from apo.stats import (
    CONFIDENCE,
    SMOOTH_WINDOW,
    mean_ci,
    metric,
    moving_average,
    nan_to_none,
    pointwise_mean_ci,
    stability_stats,
)


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The rows of ``run_dir/metrics.jsonl``, in step order, one per step (a repeated step keeps its last row). A
    torn last line (a run killed while writing it; ``--resume`` drops it too) is left out.

    Raises:
        ValueError: a line before the last that is not a JSON row with a ``step`` (naming the file and the line).
    """
    path = Path(run_dir) / "metrics.jsonl"
    rows: dict[int, dict] = {}
    if path.exists():
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                rows[int(row["step"])] = row
            except (ValueError, KeyError, TypeError) as e:
                if i == len(lines):  # torn by a kill
                    continue
                raise ValueError(f"{path}, line {i}: not a metrics row ({type(e).__name__}: {e})") from None
    return [rows[k] for k in sorted(rows)]


def plot_run(run_dir: str | Path, out: str | Path | None = None, rows: list[dict] | None = None) -> Path:
    """``curves.png``: reward, alpha and ESS fraction per optimizer step of one run (``rows``: its
    :func:`read_metrics`, read here when not given)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(run_dir) if rows is None else rows
    out = Path(out) if out else Path(run_dir) / "curves.png"
    panels = [("reward", "mean reward"), ("apo/alpha", "alpha"), ("apo/ess", "ESS / P")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2))
    for ax, (key, label) in zip(axes, panels, strict=True):
        pts = [(r["step"], metric(r, key)) for r in rows if key in r]
        if pts:
            ax.plot(*zip(*pts, strict=True), lw=1.5)
        else:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("optimizer step")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    fig.suptitle(Path(run_dir).name)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


# --- Comparison of several runs (`apo compare`, `apo plot`) ---------------------------------------------------------

REWARD_THRESHOLD = 0.5
"""Training reward whose first crossing (smoothed) is reported as "steps to threshold"."""


def find_runs(paths: list[str | Path]) -> list[Path]:
    """Run directories among ``paths``: a folder with ``config.yaml`` or ``metrics.jsonl`` is a run; another folder
    stands for the runs directly inside it (sorted by name). Each run once, however often it is named.

    Raises:
        FileNotFoundError: a path that is neither a run nor holds one.
    """
    runs: list[Path] = []
    seen: set[Path] = set()
    for p in map(Path, paths):
        if _is_run(p):
            found = [p]
        else:
            found = sorted(q for q in p.iterdir() if _is_run(q)) if p.is_dir() else []
            if not found:
                raise FileNotFoundError(f"{p} is not a run directory (no config.yaml / metrics.jsonl) and holds none")
        for run in found:  # a run named twice (`cmp1 cmp1/grpo-seed0`, `cmp1 ./cmp1/`) counts once
            if run.resolve() not in seen:
                seen.add(run.resolve())
                runs.append(run)
    return runs


def _is_run(p: Path) -> bool:
    return p.is_dir() and ((p / "config.yaml").is_file() or (p / "metrics.jsonl").is_file())


def run_label(run_dir: Path) -> str:
    """The group of a run: its directory name without ``-seed<k>`` (``apo-ess-seed2`` -> ``apo-ess``, as
    ``apo compare`` names them; ``grpo@task=a%2Fb.jsonl-seed0`` -> ``grpo@task=a/b.jsonl``); for another name,
    derived from its ``config.yaml``: ``apo-<alpha_schedule>`` for APO, else the algorithm."""
    m = re.fullmatch(r"(.+)-seed\d+", run_dir.name)
    if m:
        from urllib.parse import unquote

        return unquote(m.group(1))  # apo.cli.compare.run_name percent-encodes what a folder name cannot hold
    cfg = {}
    if (run_dir / "config.yaml").is_file():
        from apo.cli.config import yaml_load

        cfg = yaml_load((run_dir / "config.yaml").read_text(), str(run_dir / "config.yaml")) or {}
    alg = cfg.get("algorithm", "apo")
    return f"apo-{cfg.get('alpha_schedule', 'fixed')}" if alg == "apo" else alg


_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
_NUMBER_SPLIT = re.compile(r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)")


def group_runs(run_dirs: list[Path]) -> dict[str, list[Path]]:
    """Runs grouped by :func:`run_label`, presets in :data:`apo.cli.presets.PRESETS` order, each followed by its
    variants (``apo-fixed@alpha=0.35``) sorted with numbers compared as numbers (``@k=4`` before ``@k=16``), then other
    labels sorted; runs within a group sorted by directory name. When two runs would share a label and a directory
    name (``cmp1/grpo-seed0`` and ``cmp2/grpo-seed0``: one seed twice, not two seeds), every label is prefixed with
    the run's folder relative to the runs' common parent (``cmp1/grpo``, ``cmp2/grpo``)."""
    from apo.cli.presets import PRESETS

    labels = {r: run_label(r) for r in run_dirs}
    names = [(labels[r], r.name) for r in run_dirs]
    if len(set(names)) < len(names):  # same-named runs of two comparisons are not two seeds of one group
        common = Path(os.path.commonpath([str(r.resolve().parent) for r in run_dirs]))
        labels = {r: f"{r.resolve().parent.relative_to(common).as_posix()}/{labels[r]}" for r in run_dirs}
    groups: dict[str, list[Path]] = {}
    for r in run_dirs:
        groups.setdefault(labels[r], []).append(r)
    presets = list(PRESETS)

    def natural(text: str) -> tuple:  # "x=16" after "x=4": numbers compare as numbers
        return tuple(
            (0, float(t), "") if _NUMBER.fullmatch(t) else (1, 0.0, t) for t in _NUMBER_SPLIT.split(text) if t
        )

    def rank(label: str) -> tuple:
        base, _, variant = label.partition("@")
        if base in presets:
            return (presets.index(base), variant != "", natural(variant))
        return (len(presets), False, natural(label))

    return {k: sorted(groups[k], key=lambda p: p.name) for k in sorted(groups, key=rank)}


def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def run_stats(run_dir: Path, *, window: int = SMOOTH_WINDOW, threshold: float = REWARD_THRESHOLD) -> dict:
    """The per-run numbers of the comparison table (``None`` where a file or metric is missing):

    - ``reward_before`` / ``reward_after``: held-out mean reward of ``eval_before.json`` / ``eval_after.json``;
    - ``best_train_reward``: ``max_t`` of the trailing ``window``-step moving average of the per-step training reward
      (the mean reward of the step's sampled completions as trained on, :func:`metric`);
    - ``steps_to_threshold``: the first optimizer step whose smoothed training reward is ``>= threshold``
      (``None``: never);
    - ``final_entropy``: mean token entropy (TRL's ``entropy``) over the last ``ceil(10%)`` of logged steps;
    - ``wall_time_s``: ``summary.json``'s wall time (training, evaluations, checkpoints);
    - ``steps``: optimizer steps logged;
    - the stability numbers of :func:`stability_stats` (``final_train_reward``, ``drop_from_peak``, ``collapsed``).
    """
    rows = read_metrics(run_dir)
    pts = [(r["step"], metric(r, "reward")) for r in rows if "reward" in r]
    smooth = moving_average([v for _, v in pts], window)
    ent = [r["entropy"] for r in rows if "entropy" in r]
    tail = ent[-max(1, math.ceil(0.1 * len(ent))) :] if ent else []
    before = read_json(run_dir / "eval_before.json")
    after = read_json(run_dir / "eval_after.json")
    summary = read_json(run_dir / "summary.json")
    return {
        "reward_before": before["reward"] if before else None,
        "reward_after": after["reward"] if after else None,
        "best_train_reward": max(smooth) if smooth else None,
        "steps_to_threshold": next((s for (s, _), y in zip(pts, smooth, strict=True) if y >= threshold), None),
        "final_entropy": sum(tail) / len(tail) if tail else None,
        "wall_time_s": summary["wall_time_s"] if summary else None,
        "steps": len(rows),
        **stability_stats(rows, window=window),
    }


TABLE_COLUMNS = (
    ("reward_before", "held-out reward before", 3),
    ("reward_after", "held-out reward after", 3),
    ("best_train_reward", "best training reward", 3),
    ("steps_to_threshold", "steps to threshold", 0),
    ("final_entropy", "final token entropy", 3),
    ("final_train_reward", "final training reward", 3),
    ("drop_from_peak", "drop from peak", 3),
    ("collapsed", "collapsed", None),
    ("wall_time_s", "wall time (s)", 0),
)
"""``(key of run_stats, column title, decimals)`` of ``table.md``; ``None`` decimals: a yes/no column, shown as
"k of n" runs."""


def comparison_table(
    run_dirs: list[Path], *, window: int = SMOOTH_WINDOW, threshold: float = REWARD_THRESHOLD
) -> dict:
    """The content of ``table.json``: per preset, every per-run value of :func:`run_stats` and, per column, the mean
    and 95% t half-width over the runs that have a value (``n``; ``steps_to_threshold`` counts only the runs that
    reached the threshold, ``reached`` of ``runs``)."""
    table = {"window": window, "threshold": threshold, "confidence": CONFIDENCE, "algorithms": []}
    for label, runs in group_runs(run_dirs).items():
        stats = [run_stats(r, window=window, threshold=threshold) for r in runs]
        cols = {}
        for key, _, decimals in TABLE_COLUMNS:
            values = [s[key] for s in stats]
            if decimals is None:  # yes/no: a count
                known = [v for v in values if v is not None]
                cols[key] = {"values": values, "count": sum(map(bool, known)), "n": len(known)}
                continue
            m, hw, n = mean_ci([v for v in values if v is not None])
            cols[key] = {"values": values, "mean": nan_to_none(m), "half_width": nan_to_none(hw), "n": n}
        table["algorithms"].append(
            {"algorithm": label, "runs": [r.name for r in runs], "steps": [s["steps"] for s in stats], **cols}
        )
    return table


def _cell(col: dict, decimals: int | None, n_runs: int) -> str:
    if decimals is None:
        return f"{col['count']} of {col['n']}" if col["n"] else "—"
    if col["mean"] is None:
        return "—"
    text = f"{col['mean']:.{decimals}f}"
    if col["half_width"] is not None:
        text += f" ± {col['half_width']:.{decimals}f}"
    return text if col["n"] == n_runs else f"{text} ({col['n']} of {n_runs})"


def table_markdown(table: dict) -> str:
    """``table.md`` from :func:`comparison_table`'s result (no paths or dates: the same runs give the same bytes)."""
    w, thr = table["window"], table["threshold"]
    lines = [
        "| algorithm | seeds | " + " | ".join(title for _, title, _ in TABLE_COLUMNS) + " |",
        "|---|---|" + "---|" * len(TABLE_COLUMNS),
    ]
    for row in table["algorithms"]:
        n_runs = len(row["runs"])
        cells = [_cell(row[k], d, n_runs) for k, _, d in TABLE_COLUMNS]
        lines.append(f"| {row['algorithm']} | {n_runs} | " + " | ".join(cells) + " |")
    notes = [
        f'Mean ± half-width of the {table["confidence"]:.0%} t-interval over seeds (no ± for one seed; "k of n": '
        "only k of the n runs have a value).",
        "Held-out reward: mean reward of the sampled completions on the held-out prompts (eval_before.json / "
        "eval_after.json); *before* is the starting policy, the same for every run.",
        f"Best training reward: the maximum over steps of the {w}-step trailing moving average of the per-step "
        "training reward (mean reward of the step's sampled completions).",
        f"Steps to threshold: the first optimizer step whose {w}-step smoothed training reward is ≥ {thr:g}, averaged "
        'over the runs that reach it ("k of n"); — when none does.',
        "Final token entropy: mean per-token entropy of the policy (TRL's `entropy`) over the last 10% of steps.",
        "Final training reward: the mean of the last w logged training rewards, w = min(10, n / 4) for n logged "
        "(one per rollout); drop from peak: the best such w-point mean minus the final one; collapsed: runs whose "
        "final w-point mean is below their first.",
        "Wall time: summary.json's wall time of each run (training, checkpoints, both evaluations).",
    ]
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"


def _aligned(runs: list[Path], key: str, window: int) -> tuple[list[int], list[list[float]]]:
    """Steps logged with ``key`` by every run, and per run its (smoothed when ``window > 1``) values at those steps."""
    series = []
    for r in runs:
        pts = [(row["step"], metric(row, key)) for row in read_metrics(r) if key in row]
        ys = moving_average([v for _, v in pts], window) if window > 1 else [v for _, v in pts]
        series.append(dict(zip([s for s, _ in pts], ys, strict=True)))
    common = sorted(set.intersection(*(set(s) for s in series))) if series else []
    return common, [[s[t] for t in common] for s in series]


def draw_band(ax, runs: list[Path], key: str, window: int, label: str, color) -> bool:
    """Draw on ``ax`` the mean over ``runs`` of ``key`` per step (smoothed over ``window`` steps when ``window > 1``)
    with its 95% t-interval band (:func:`apo.stats.pointwise_mean_ci`; no band for one run); ``False`` when no step
    logs ``key`` in every run (nothing drawn)."""
    steps, per_run = _aligned(runs, key, window)
    if not steps:
        return False
    stats = pointwise_mean_ci(per_run)
    mean = [m for m, _, _ in stats]
    ax.plot(steps, mean, lw=1.4, color=color, label=f"{label} (n={len(runs)})")
    if len(runs) > 1:
        ax.fill_between(
            steps, [m - h for m, h, _ in stats], [m + h for m, h, _ in stats], color=color, alpha=0.18, lw=0
        )
    return True


def plot_reward_curves(groups: dict[str, list[Path]], out: Path, *, window: int = SMOOTH_WINDOW) -> Path:
    """``curves.png``: per preset, the mean over seeds of the smoothed training reward per step with its 95%
    t-interval band."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    colors = plt.get_cmap("tab10")
    for i, (label, runs) in enumerate(groups.items()):
        draw_band(ax, runs, "reward", window, label, colors(i % 10))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training reward")
    ax.set_title(f"Training reward: mean ± 95% t-interval over seeds ({window}-step moving average)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def plot_alpha_curves(groups: dict[str, list[Path]], out: Path, *, window: int = SMOOTH_WINDOW) -> Path:
    """``alpha.png``: alpha used (``apo/alpha``), ESS / G (``apo/ess``), confidence c_t (``apo/confidence``),
    p_theta entropy / log G (``apo/entropy``) and ``max |u|`` over the batch (``apo/u_abs_max``,
    ``u = l_theta - l_old``: 0 whenever the loss is evaluated at the rollout parameters) of the runs that log them
    (APO, and ADPO as its alpha = 1 case); token entropy (``entropy``) of every run. Mean over seeds with a 95%
    t-interval band, unsmoothed except the token entropy (``window``-step average); and of every run the off-policy
    distance of the trainer (``offpolicy/kl_old``, ``offpolicy/seq_log_ratio_abs_max``: 0 on-policy)."""
    plt = pyplot()
    colors = plt.get_cmap("tab10")
    color_of = {label: colors(i % 10) for i, label in enumerate(groups)}
    panels = [  # a group that does not log the metric (grpo, gspo) draws nothing in that panel
        ("apo/alpha", "alpha used", 1),
        ("apo/ess", "ESS / G", 1),
        ("apo/confidence", "confidence c_t (Eq. 19)", 1),
        ("apo/entropy", "p_theta entropy / log G", 1),
        ("apo/u_abs_max", "max |u| = max |l_theta - l_old|", 1),
        ("entropy", f"token entropy ({window}-step avg.)", window),
        ("offpolicy/kl_old", "KL(pi_theta || pi_old) per token", 1),
        ("offpolicy/seq_log_ratio_abs_max", "max |l_theta - l_old| (every algorithm)", 1),
    ]
    fig, axes = plt.subplots(2, 4, figsize=(16, 6.4))
    for ax, (key, title, w) in zip(axes.flat, panels, strict=True):
        drawn = [draw_band(ax, runs, key, w, label, color_of[label]) for label, runs in groups.items()]
        if not any(drawn):
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
        else:
            ax.legend(fontsize=7)
        ax.set_xlabel("optimizer step")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    fig.suptitle("APO schedule diagnostics: mean ± 95% t-interval over seeds", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


def variant_pairs(label: str) -> tuple[str, dict[str, str]]:
    """``"apo-ess@updates_per_rollout=4@learning_rate=3e-4"`` -> ``("apo-ess", {"updates_per_rollout": "4",
    "learning_rate": "3e-4"})`` (values as written)."""
    base, *pairs = label.split("@")
    return base, dict(pair.split("=", 1) for pair in pairs if "=" in pair)


def swept_keys(labels: list[str]) -> list[str]:
    """Variant keys that take at least two values over ``labels`` (``apo compare --sweep``), in first-seen order."""
    values: dict[str, set[str]] = {}
    for label in labels:
        for key, value in variant_pairs(label)[1].items():
            values.setdefault(key, set()).add(value)
    return [k for k, v in values.items() if len(v) > 1]


def _as_number(text: str) -> float:
    from apo.cli.config import ConfigError, yaml_load

    try:
        value = yaml_load(text, "a swept value")
    except ConfigError:
        return math.nan
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def plot_sweep(table: dict, key: str, out: Path) -> Path:
    """``sweep-<key>.png``: per algorithm (the label without ``@key=...``), the held-out reward after training and
    the drop of the smoothed training reward from its peak, against the swept ``key``: mean over seeds with the 95%
    t-interval as error bars (from :func:`comparison_table`'s rows)."""
    plt = pyplot()
    lines: dict[str, list[tuple[float, dict]]] = {}
    for row in table["algorithms"]:
        base, pairs = variant_pairs(row["algorithm"])
        if key not in pairs:
            continue
        rest = "".join(f"@{k}={v}" for k, v in pairs.items() if k != key)
        lines.setdefault(base + rest, []).append((_as_number(pairs[key]), row))
    xs_all = [x for pts in lines.values() for x, _ in pts if x == x]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = plt.get_cmap("tab10")
    panels = [("reward_after", "held-out reward after training"), ("drop_from_peak", "drop from peak (training)")]
    for ax, (col, title) in zip(axes, panels, strict=True):
        for i, (name, pts) in enumerate(lines.items()):
            pts = sorted((x, r) for x, r in pts if x == x and r[col]["mean"] is not None)
            if not pts:
                continue
            xs = [x for x, _ in pts]
            ys = [r[col]["mean"] for _, r in pts]
            err = [r[col]["half_width"] or 0.0 for _, r in pts]
            off = 1.0 + 0.015 * (i - len(lines) / 2)  # spread the error bars of the lines sideways (log axis)
            ax.errorbar([x * off for x in xs], ys, yerr=err, marker="o", ms=3.5, lw=1.2, capsize=3,
                        color=colors(i % 10), label=name)  # fmt: skip
        if xs_all and min(xs_all) > 0 and max(xs_all) / min(xs_all) >= 4:
            ax.set_xscale("log", base=2)
            ax.set_xticks(sorted(set(xs_all)), [f"{x:g}" for x in sorted(set(xs_all))])
        ax.set_xlabel(key)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"Against {key}: mean ± 95% t-interval over seeds", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_comparison(
    paths: list[str | Path],
    out_dir: str | Path | None = None,
    *,
    window: int = SMOOTH_WINDOW,
    threshold: float = REWARD_THRESHOLD,
) -> Path:
    """``curves.png``, ``alpha.png``, ``table.md`` and ``table.json`` for the runs in ``paths`` (see
    :func:`find_runs`), and ``sweep-<key>.png`` per swept key with numeric values, written to ``out_dir`` (default:
    the runs' common parent folder); returns that folder."""
    runs = find_runs(paths)
    out = Path(out_dir) if out_dir else Path(os.path.commonpath([str(r.resolve().parent) for r in runs]))
    out.mkdir(parents=True, exist_ok=True)
    groups = group_runs(runs)
    table = comparison_table(runs, window=window, threshold=threshold)
    (out / "table.json").write_text(json.dumps(table, indent=2) + "\n")
    (out / "table.md").write_text(table_markdown(table))
    plot_reward_curves(groups, out / "curves.png", window=window)
    plot_alpha_curves(groups, out / "alpha.png", window=window)
    for key in swept_keys(list(groups)):
        values = {variant_pairs(label)[1].get(key) for label in groups} - {None}
        if any(not math.isnan(_as_number(v)) for v in values):  # a figure against a number (not task=<file>)
            plot_sweep(table, key, out / f"sweep-{key}.png")
    return out
