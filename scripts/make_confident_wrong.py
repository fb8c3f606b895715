"""Build the confidently-wrong start checkpoint (``model: tiny-arith-wrong``) and measure it, or measure trained runs.

The shipped tiny-arith model fine-tuned to drop the units carry on a known subset of 2-digit additions (first operand
ending in 7, 8 or 9, units carrying: about 24% of problems) until it gives that wrong answer with probability 0.9 on
held-out subset problems, while answers elsewhere are distilled from the start model itself
(:mod:`apo.tasks.confident_wrong`). ``apo train model=tiny-arith-wrong`` builds it on first use; building it here
first saves every run of a comparison from building it:

    python scripts/make_confident_wrong.py                      # build into ~/.cache/apo (or --cache-dir), measure
    python scripts/make_confident_wrong.py --measure runs/cw    # subset / rest confidence of each run's final/

Printed numbers are exact expected accuracies at T = 1 on the held-out side (teacher-forced probabilities of the
right and of the dropped-carry answer, averaged over the 182 subset and 614 other held-out problems).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from apo.tasks.confident_wrong import prepare_confident_wrong, subset_stats
from apo.tasks.tiny import SHIPPED_DIR, read_metadata


def _stats(folder: Path) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    return subset_stats(model, AutoTokenizer.from_pretrained(folder))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", type=Path, default=Path("~/.cache/apo"), help="where the checkpoint is built")
    parser.add_argument("--measure", nargs="+", type=Path, help="run directories (or folders of runs) to measure")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.measure:
        from apo.cli.plots import find_runs

        for run in find_runs(args.measure):
            print(json.dumps({"run": str(run), **_stats(run / "final")}))
        return
    path = prepare_confident_wrong(args.cache_dir)
    meta = read_metadata(path)
    out = {"out": str(path), "steps": meta["steps"], "seconds": meta["seconds"]}
    print(json.dumps({**out, "start (shipped tiny-arith)": _stats(SHIPPED_DIR), "confidently wrong": _stats(path)}))


if __name__ == "__main__":
    main()
