"""Seconds per ``apo`` optimizer step, generating with vLLM (``use_vllm=true``, colocated CPU engine, fp32) vs TRL's
``generate``, side by side in one run; generation's share of the step and the peak memory of each.

Shapes (bundled configs, as ``apo train`` builds the trainer, no evaluation):

- ``default``: the CPU default (``src/apo/configs/default.yaml``): the 1M-parameter tiny-arith model, 16 prompts x 8
  completions of at most 6 tokens;
- ``smollm2-gsm``: SmolLM2-135M-Instruct (``src/apo/configs/smollm2-gsm.yaml``), 4 prompts x 8 completions of
  ``--tokens`` tokens (default 128); every completion is forced to the full length (``min_new_tokens`` for
  ``generate``, ``min_tokens`` for vLLM) so both backends do the same generation work whatever they sample.

Each backend trains in a process of its own (one vLLM engine per process); backends alternate for ``--rounds``
rounds, each round dropping its first ``--warmup`` steps (vLLM's first step compiles, ``generate``'s warms caches).
Generation time per step is the wall time of TRL's ``_generate_single_turn`` (for vLLM it includes the weight sync,
reported apart as well); peak memory is the process's maximum resident set (``ru_maxrss``: trainer, engine and its
KV cache together). Prints one JSON object per backend and the ratio vllm / generate of the median step.

    python benchmarks/vllm_step_time.py --shape default --steps 6
    python benchmarks/vllm_step_time.py --shape smollm2-gsm --steps 3 --warmup 1 --batch 16
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

SHAPES = {
    "default": (None, {}),
    "smollm2-gsm": ("smollm2-gsm", {}),
}


def child(shape: str, backend: str, steps: int, tokens: int, threads: int, batch: int | None) -> dict:
    """Train ``steps`` steps of ``shape`` with ``backend`` and return per-step timings and the peak memory."""
    from transformers import TrainerCallback

    from apo import APOTrainer
    from apo.cli import config as cfglib
    from apo.cli.lora import peft_config
    from apo.cli.run import load_run_inputs

    path, extra = SHAPES[shape]
    overrides = {
        **extra,
        "max_steps": steps,
        "save_strategy": "no",
        "eval_before_after": False,
        "output_dir": f"/tmp/apo-vllm-bench-{shape}-{backend}-{os.getpid()}",
        "torch_threads": threads,
        "use_vllm": backend == "vllm",
    }
    if shape != "default":
        overrides["max_completion_length"] = tokens
    if batch is not None:
        overrides["per_device_train_batch_size"] = batch
    cfg = cfglib.resolve(path, overrides)
    if shape != "default":  # every completion at full length, in each backend's own words
        cfg.generation_kwargs = {"min_tokens": tokens} if backend == "vllm" else {"min_new_tokens": tokens}
    reward_fn, model, tokenizer, train_ds, _ = load_run_inputs(cfg)
    t0 = time.time()
    trainer = APOTrainer(
        model=model,
        reward_funcs=[reward_fn],
        args=cfg,
        train_dataset=train_ds,
        processing_class=tokenizer,
        peft_config=peft_config(cfg),
    )
    start_s = time.time() - t0
    timings = {"generate": [], "sync": [], "step": []}

    def timed(name, fn):
        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                timings[name][-1] += time.perf_counter() - t

        return wrapper

    trainer._generate_single_turn = timed("generate", trainer._generate_single_turn)
    if backend == "vllm":
        trainer.vllm_generation.sync_weights = timed("sync", trainer.vllm_generation.sync_weights)

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t = time.perf_counter()
            for key in ("generate", "sync"):
                timings[key].append(0.0)

        def on_step_end(self, args, state, control, **kw):
            timings["step"].append(time.perf_counter() - self.t)

    trainer.add_callback(Clock())
    trainer.train()
    lengths = [row["completions/mean_length"] for row in trainer.state.log_history if "completions/mean_length" in row]
    return {
        "engine_start_s" if backend == "vllm" else "trainer_init_s": start_s,
        **timings,
        "mean_completion_length": statistics.mean(lengths),
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="default")
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps per round and backend")
    parser.add_argument("--warmup", type=int, default=1, help="first steps of each round left out of the medians")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=128, help="completion length of the smollm2-gsm shape")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the engine's too)")
    parser.add_argument("--batch", type=int, help="completions per step (a multiple of 8); default: the config's")
    parser.add_argument("--child", choices=["generate", "vllm"], help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.warmup >= args.steps:
        parser.error(f"--warmup ({args.warmup}) must be below --steps ({args.steps})")
    if args.child:
        result = child(args.shape, args.child, args.steps, args.tokens, args.threads, args.batch)
        with open(args.out, "w") as f:
            json.dump(result, f)
        return

    results: dict[str, list[dict]] = {"generate": [], "vllm": []}
    for _ in range(args.rounds):
        for backend in ("generate", "vllm"):
            out = f"/tmp/apo-vllm-bench-{os.getpid()}-{backend}.json"
            command = [sys.executable, __file__, "--child", backend, "--out", out]
            command += ["--shape", args.shape, "--steps", str(args.steps), "--tokens", str(args.tokens)]
            command += ["--threads", str(args.threads)] + (["--batch", str(args.batch)] if args.batch else [])
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
            with open(out) as f:
                results[backend].append(json.load(f))
            os.unlink(out)
    summary = {}
    for backend, rounds in results.items():
        kept = [(r["step"][i], r["generate"][i], r["sync"][i]) for r in rounds for i in range(args.warmup, args.steps)]
        step = statistics.median(s for s, _, _ in kept)
        generate = statistics.median(g for _, g, _ in kept)
        summary[backend] = {
            "step_s_median": round(step, 3),
            "generate_s_median": round(generate, 3),
            "generation_share": round(generate / step, 3),
            "sync_s_median": round(statistics.median(s for _, _, s in kept), 3),
            "steps_timed": len(kept),
            "mean_completion_length": round(statistics.mean(r["mean_completion_length"] for r in rounds), 1),
            "peak_rss_gib": round(max(r["peak_rss_gib"] for r in rounds), 2),
            "start_s": round(statistics.mean(r.get("engine_start_s", r.get("trainer_init_s", 0)) for r in rounds), 1),
        }
        print(json.dumps({"shape": args.shape, "backend": backend, **summary[backend]}))
    ratio = summary["vllm"]["step_s_median"] / summary["generate"]["step_s_median"]
    print(json.dumps({"shape": args.shape, "vllm_over_generate_step": round(ratio, 3)}))


if __name__ == "__main__":  # vLLM's engine re-imports the main module in its helpers
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
