"""Train the README's default run (`apo train`, the embedded default config) and record its figures in
docs/default-run.json, the source of the numbers the README quotes (tests/test_readme.py checks that they agree,
and recomputes the held-out reward before training itself).

Usage: python scripts/default_run.py [--from-run RUN_DIR]   (--from-run: record a finished run instead of training)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "default-run.json"
KEYS = ("reward_before", "reward_after", "reward_gain", "reward_gain_ci95", "steps")


def record(run_dir: Path, wall_s: float | None) -> dict:
    """The README's figures of the finished run in ``run_dir`` (``wall_s``: the whole command's wall time)."""
    summary = json.loads((run_dir / "summary.json").read_text())
    out = {k: summary[k] for k in KEYS}
    out["command"] = "apo train"
    out["command_wall_s"] = None if wall_s is None else round(wall_s, 1)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--from-run", type=Path, default=None)
    args = parser.parse_args()
    if args.from_run is not None:
        data = record(args.from_run, None)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            apo = Path(sys.executable).parent / "apo"
            t0 = time.time()
            subprocess.run([str(apo), "train", f"output_dir={tmp}/run"], check=True)
            data = record(Path(tmp) / "run", time.time() - t0)
    OUT.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    print(json.dumps(data, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
