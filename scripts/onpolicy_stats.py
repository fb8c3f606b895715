"""How far the policy moves within a rollout, and what the guarded alpha does, from one run's ``metrics.jsonl``.

    python scripts/onpolicy_stats.py RUN_DIR --steps-per-rollout 4

Prints, per position of an optimizer step within its rollout (1st, 2nd, ...), the mean anchored confidence
``apo/confidence`` (c_t = 1 - H(p_theta) / log G, Eq. 19, as the loss saw it); then over all steps: how many steps
have ``apo/u_abs_max`` > 0, its mean over those steps and its largest value, c_t's largest value and mean, and the
alpha the loss used (``apo/alpha``): distinct values, range, the first five, mean and final. These are the numbers
of "The on-policy effect" in docs/results.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def rows_of(run_dir: Path) -> list[dict]:
    """One row per optimizer step (the last row of a repeated step wins), in step order."""
    rows: dict[int, dict] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        rows[row["step"]] = row
    return [rows[s] for s in sorted(rows)]


def stats(rows: list[dict], steps_per_rollout: int) -> dict:
    """The statistics printed by this script, as a dict."""
    if not rows:
        raise SystemExit("no steps in metrics.jsonl")
    conf = [r["apo/confidence"] for r in rows]
    u_max = [r["apo/u_abs_max"] for r in rows]
    alpha = [r["apo/alpha"] for r in rows]
    by_position = {}
    for k in range(steps_per_rollout):
        values = [c for i, c in enumerate(conf) if (rows[i]["step"] - 1) % steps_per_rollout == k]
        by_position[k + 1] = sum(values) / len(values) if values else None
    moved = [u for u in u_max if u > 0]
    c_max = max(conf)
    return {
        "steps": len(rows),
        "mean_confidence_by_position": by_position,
        "steps_with_u_moved": len(moved),
        "u_abs_max_mean_where_moved": sum(moved) / len(moved) if moved else 0.0,
        "u_abs_max_largest": max(u_max),
        "confidence_max": c_max,
        "confidence_max_step": rows[conf.index(c_max)]["step"],
        "confidence_mean": sum(conf) / len(conf),
        "alpha_distinct": len(set(alpha)),
        "alpha_min": min(alpha),
        "alpha_max": max(alpha),
        "alpha_first": alpha[:5],
        "alpha_mean": sum(alpha) / len(alpha),
        "alpha_final": alpha[-1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--steps-per-rollout", type=int, default=1)
    opts = parser.parse_args()
    if opts.steps_per_rollout < 1:
        raise SystemExit("--steps-per-rollout must be >= 1")
    print(json.dumps(stats(rows_of(opts.run_dir), opts.steps_per_rollout), indent=2))


if __name__ == "__main__":
    main()
