"""Per-token log-prob gap between the colocated vLLM engine and the trainer, by engine dtype x trainer precision.

For each cell, ``apo`` trains ``--steps`` steps of the CPU default (the tiny-arith model, fp32 checkpoint, 4 prompts x
8 completions, lr 1e-3) through the engine, in a process of its own (one engine per process), and reports TRL's
``sampling/sampling_logp_difference/mean`` and ``/max`` (``|log pi_trainer(y_t) - log pi_engine(y_t)|`` over the
sampled tokens, logged by ``APOTrainer`` for every algorithm) at step 1 (before any update) and the largest over the
later steps (after updates and weight syncs). The trainer computes in fp32 (``bf16=false``) or under bf16 autocast
(``bf16=true``, fp32 master weights); the engine runs in ``vllm_dtype``: ``float32``, ``bfloat16``, or ``auto``
(TRL's behaviour: vLLM's rule, bf16 for this fp32 checkpoint on a CPU).

    python benchmarks/vllm_mismatch.py                  # the four cells below, about 3 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CELLS = [("float32", False), ("auto", False), ("bfloat16", True), ("float32", True)]


def child(vllm_dtype: str, bf16: bool, steps: int) -> dict:
    """Train ``steps`` steps in this cell and return the gap metrics per step."""
    from apo import APOTrainer
    from apo.cli import config as cfglib
    from apo.cli.run import load_run_inputs

    cfg = cfglib.resolve(
        None,
        {
            "use_vllm": True,
            "vllm_dtype": vllm_dtype,
            "use_cpu": True,
            "bf16": bf16,
            "max_steps": steps,
            "per_device_train_batch_size": 32,
            "learning_rate": 1e-3,
            "save_strategy": "no",
            "eval_before_after": False,
            "torch_threads": 2,
            "output_dir": f"/tmp/apo-vllm-mismatch-{os.getpid()}",
        },
    )
    reward_fn, model, tokenizer, train_ds, _ = load_run_inputs(cfg)
    trainer = APOTrainer(
        model=model, reward_funcs=[reward_fn], args=cfg, train_dataset=train_ds, processing_class=tokenizer
    )
    trainer.train()
    rows = [r for r in trainer.state.log_history if "sampling/sampling_logp_difference/mean" in r]
    return {
        "mean": [r["sampling/sampling_logp_difference/mean"] for r in rows],
        "max": [r["sampling/sampling_logp_difference/max"] for r in rows],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        dtype, bf16 = args.child[0], args.child[1] == "bf16"
        with open(args.out, "w") as f:
            json.dump(child(dtype, bf16, args.steps), f)
        return
    print("| vllm_dtype | trainer | mean gap, step 1 | max gap, step 1 | mean gap, later | max gap, later |")
    print("|---|---|---|---|---|---|")
    for dtype, bf16 in CELLS:
        out = f"/tmp/apo-vllm-mismatch-{os.getpid()}.json"
        precision = "bf16" if bf16 else "fp32"
        command = [sys.executable, __file__, "--child", dtype, precision, "--out", out, "--steps", str(args.steps)]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with open(out) as f:
            r = json.load(f)
        os.unlink(out)
        later_mean, later_max = max(r["mean"][1:]), max(r["max"][1:])
        print(
            f"| {dtype} | {precision} | {r['mean'][0]:.1e} | {r['max'][0]:.1e} | {later_mean:.1e} | {later_max:.1e} |"
        )


if __name__ == "__main__":  # vLLM's engine re-imports the main module in its helpers
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
