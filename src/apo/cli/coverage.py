"""Coverage of a comparison's policies: pass@k curves, distinct answers and token entropy of the held-out evaluation.

``apo plot`` writes, next to ``curves.png`` and ``table.md``:

- ``passk.png``: per algorithm (a group of seeds), pass@k against k of the trained policies (solid) and of the start
  policy (dashed), from each run's ``eval_after.json`` / ``eval_before.json`` (:func:`apo.tasks.evaluate.evaluate`);
- ``coverage.md`` / ``coverage.json``: per algorithm, pass@1, pass@k at the largest k, distinct answers per prompt
  and mean token entropy, before and after training.

Every value is the mean over the group's runs with the 95% t half-width over seeds (each run's value, a mean over
the same held-out prompts, is one unit). A group of one run has no interval over seeds; there the half-width is the
run's own 95% interval over prompts, and the table says so (``over: prompts``). Runs evaluated before pass@k was
recorded are left out of these files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from apo.cli.plots import pyplot, read_json
from apo.stats import mean_ci, nan_to_none

MEASURES = ("pass_at_1", "pass_at_max", "distinct_answers", "token_entropy")


def _point(results: list[dict], key: str, k: str | None = None) -> tuple[float | None, float | None]:
    """``(mean, half-width)`` of ``key`` (``pass_at_k[k]`` when ``k`` is given) over ``results``; with one result
    its own interval over prompts."""
    values = [r[key][k] if k is not None else r[key] for r in results]
    if len(values) == 1:
        ci = results[0].get(f"{key}_ci95")
        return values[0], (ci.get(k) if k is not None else ci) if ci is not None else None
    m, hw, _ = mean_ci(values)
    return nan_to_none(m), nan_to_none(hw)


def coverage_table(groups: dict[str, list[Path]]) -> dict[str, Any]:
    """``{label: {"runs", "over", "ks", "pass_at_k_before"/"_after": {k: [mean, hw]}, "<measure>_before"/"_after":
    [mean, hw] for MEASURES}}`` over the runs of each group whose evaluations hold ``pass_at_k``; groups without
    such runs are left out. ``pass_at_max`` is pass@k at the largest k every run of the group reports."""
    table: dict[str, Any] = {}
    for label, runs in groups.items():
        pairs = [(read_json(r / "eval_before.json"), read_json(r / "eval_after.json")) for r in runs]
        pairs = [(b, a) for b, a in pairs if b and a and "pass_at_k" in b and "pass_at_k" in a]
        if not pairs:
            continue
        ks = sorted(set.intersection(*(set(b["pass_at_k"]) & set(a["pass_at_k"]) for b, a in pairs)), key=int)
        row: dict[str, Any] = {"runs": len(pairs), "over": "seeds" if len(pairs) > 1 else "prompts", "ks": ks}
        for when, results in (("before", [b for b, _ in pairs]), ("after", [a for _, a in pairs])):
            row[f"pass_at_k_{when}"] = {k: list(_point(results, "pass_at_k", k)) for k in ks}
            row[f"pass_at_1_{when}"] = row[f"pass_at_k_{when}"].get("1", [None, None])
            row[f"pass_at_max_{when}"] = row[f"pass_at_k_{when}"][ks[-1]] if ks else [None, None]
            for key in ("distinct_answers", "token_entropy"):
                row[f"{key}_{when}"] = list(_point(results, key))
        table[label] = row
    return table


def _fmt(cell: list) -> str:
    m, hw = cell
    if m is None:
        return "—"
    return f"{m:.3f}" if hw is None else f"{m:.3f} ± {hw:.3f}"


def coverage_markdown(table: dict[str, Any]) -> str:
    """``coverage.md``: one row per algorithm, before → after for each measure."""
    head = "| algorithm | runs | ± over | pass@1 | pass@k (k) | distinct answers | token entropy |"
    lines = [head, "|" + "---|" * 7]
    for label, row in table.items():
        k = row["ks"][-1] if row["ks"] else "—"
        cells = [
            f"{_fmt(row[f'{m}_before'])} → {_fmt(row[f'{m}_after'])}" + (f" ({k})" if m == "pass_at_max" else "")
            for m in MEASURES
        ]
        lines.append(f"| {label} | {row['runs']} | {row['over']} | " + " | ".join(cells) + " |")
    note = (
        "\nBefore → after training; mean ± 95% t half-width over seeds (over prompts for a single run). pass@k: "
        "unbiased estimator from the held-out samples, a sample correct at full credit.\n"
    )
    return "\n".join(lines) + "\n" + note


def plot_pass_at_k(table: dict[str, Any], out: Path) -> Path:
    """``passk.png``: pass@k against k per algorithm, after training (solid, with its 95% band, cut to [0, 1]) and
    before (dashed)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    colors = plt.get_cmap("tab10")
    for i, (label, row) in enumerate(table.items()):
        ks = [int(k) for k in row["ks"]]
        color = colors(i % 10)
        for when, style in (("after", "-"), ("before", "--")):
            cells = [row[f"pass_at_k_{when}"][str(k)] for k in ks]
            ys = [c[0] for c in cells]
            ax.plot(ks, ys, style, color=color, marker="o", ms=3, label=label if when == "after" else None)
            if when == "after" and all(c[1] is not None for c in cells):
                lo = [max(0.0, y - c[1]) for y, c in zip(ys, cells, strict=True)]  # a probability: band in [0, 1]
                hi = [min(1.0, y + c[1]) for y, c in zip(ys, cells, strict=True)]
                ax.fill_between(ks, lo, hi, color=color, alpha=0.15)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k (samples per prompt)")
    ax.set_ylabel("pass@k (held-out)")
    ax.set_title("pass@k after training (solid, 95% band) and at the start (dashed)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def write_coverage(groups: dict[str, list[Path]], out: Path) -> dict[str, Any]:
    """Write ``coverage.json``, ``coverage.md`` and ``passk.png`` into ``out`` (nothing when no run records pass@k);
    returns the table."""
    table = coverage_table(groups)
    if table:
        (out / "coverage.json").write_text(json.dumps(table, indent=2) + "\n")
        (out / "coverage.md").write_text(coverage_markdown(table))
        plot_pass_at_k(table, out / "passk.png")
    return table
