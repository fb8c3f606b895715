"""Build the tiny-arith checkpoint shipped in ``src/apo/assets/tiny-arith`` (2-digit addition, seed 0, target 0.3).

A 1M-parameter Llama trained from scratch by ``apo.tasks.tiny.train_tiny_arith`` until its sampled (T=1) accuracy on
held-out prompts reaches the target; ``prepare_tiny_arith`` returns this folder whenever its metadata matches the
settings asked for. Reproduce it (about 1.5 minutes on one CPU thread) with:

    python scripts/make_tiny_arith.py --out src/apo/assets/tiny-arith

Training uses one torch thread, so runs on the same machine give the same weights; other CPUs may differ in the
last bits and therefore in the step at which the target is crossed.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path

from apo.tasks.arithmetic import ArithmeticTask
from apo.tasks.tiny import save_checkpoint, train_tiny_arith


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("src/apo/assets/tiny-arith"), help="checkpoint folder")
    parser.add_argument("--seed", type=int, default=0, help="seed of the init, the data and the evaluation")
    parser.add_argument("--target-accuracy", type=float, default=0.3, help="stop at this sampled held-out accuracy")
    parser.add_argument("--digits", type=int, default=2, help="digits per operand")
    parser.add_argument("--ops", default="+", help="operators, e.g. '+' or '+-*'")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    task = ArithmeticTask(ops=tuple(args.ops), digits=args.digits)
    model, tokenizer, metadata = train_tiny_arith(task, args.target_accuracy, args.seed)
    if args.out.exists():
        shutil.rmtree(args.out)
    save_checkpoint(model, tokenizer, metadata, args.out)
    summary = {k: metadata[k] for k in ("steps", "seconds", "eval_accuracy", "eval_mixed_groups", "n_params")}
    print(json.dumps({"out": str(args.out), **summary}))


if __name__ == "__main__":
    main()
