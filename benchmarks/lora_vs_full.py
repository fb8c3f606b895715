"""Seconds per optimizer step and memory of LoRA against full fine-tuning on a bundled config (SmolLM2 shape).

Each mode runs in its own process (so that its peak RSS is its own), a few steps each, one after the other; modes
alternate when ``--rounds`` > 1, so a change in the machine's load hits both alike. Per step it records the wall
time; over the run, the resident set size (RSS, sampled every 10 ms by a thread) at its peak in each phase of a step:

- ``generate``: TRL's ``_generate_single_turn`` (the rollout's ``model.generate``),
- ``logps``: ``_get_per_token_logps_and_entropies`` (forward to per-token log-probs: the loss's forward, and
  TRL's old/ref log-probs when it needs them),
- ``backward``: ``accelerator.backward``,
- ``optimizer``: ``optimizer.step``,

and the peak over the whole process (``VmHWM``), and the wall seconds spent in each phase per step (averaged over
the process's steps). Run::

    python benchmarks/lora_vs_full.py smollm2-chain-sum --steps 2 --threads 1

``--modes full,lora,frozen`` adds a third mode, the floor of a LoRA step: the model with every weight frozen but the
RMSNorm scales and no adapters, so the backward still runs through every layer for the input gradients but computes
no weight gradients of the projections and has no adapter ops to run (its optimizer step is over the 35k norm scales).

Prints one JSON line per process and a table: wall and CPU seconds of every step (CPU: ``time.process_time``, all
threads of the process), and the ratio LoRA / full of the mean CPU seconds per step. On a shared machine the wall
time mostly measures the other jobs; the CPU time of a step at a fixed thread count is the number to compare.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time


def _rss_kb(field: str = "VmRSS") -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def child(
    config: str, mode: str, steps: int, threads: int, lora_r: int, lora_alpha: int, lr: float | None, dropout: float
) -> dict:
    """One run of ``steps`` optimizer steps in this process; returns its timings and memory by phase."""
    import torch
    from transformers import TrainerCallback

    from apo.cli import config as cfglib
    from apo.cli.inputs import load_run_inputs
    from apo.integrations.trl.trainer import APOTrainer

    torch.set_num_threads(threads)
    out = tempfile.mkdtemp(prefix="apo-bench-")
    overrides = dict(
        max_steps=steps, eval_before_after=False, save_strategy="no", output_dir=out, torch_threads=threads
    )
    if lr is not None:
        overrides["learning_rate"] = lr
    cfg = cfglib.resolve(config, overrides)
    reward_fn, model, tokenizer, train_ds, _ = load_run_inputs(cfg)
    peft_config = None
    if mode == "frozen":  # LoRA's floor: the backward through every layer, no adapter ops, no weight gradients
        for name, param in model.named_parameters():
            param.requires_grad_("norm" in name)
    if mode == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(
            task_type="CAUSAL_LM", r=lora_r, lora_alpha=lora_alpha, lora_dropout=dropout, target_modules="all-linear"
        )

    phase = ["load"]
    peaks: dict[str, int] = {}
    spent: dict[str, float] = {}
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            rss = _rss_kb()
            peaks[phase[0]] = max(peaks.get(phase[0], 0), rss)
            time.sleep(0.01)

    threading.Thread(target=sample, daemon=True).start()
    step_times: list[float] = []
    step_cpu: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t, self.c = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kw):
            step_times.append(time.perf_counter() - self.t)
            step_cpu.append(time.process_time() - self.c)

    trainer = APOTrainer(
        model=model,
        reward_funcs=[reward_fn],
        args=cfg,
        train_dataset=train_ds,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[Timer()],
    )

    def tagged(obj, name, tag):
        inner = getattr(obj, name)

        def wrapper(*a, **kw):
            before = phase[0]
            phase[0] = tag
            t0 = time.perf_counter()
            try:
                return inner(*a, **kw)
            finally:
                spent[tag] = spent.get(tag, 0.0) + time.perf_counter() - t0
                phase[0] = before

        setattr(obj, name, wrapper)

    tagged(trainer, "_generate_single_turn", "generate")
    tagged(trainer, "_get_per_token_logps_and_entropies", "logps")
    tagged(trainer.accelerator, "backward", "backward")
    phase[0] = "other"
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    trainer.create_optimizer()
    tagged(trainer.optimizer, "step", "optimizer")
    trainer.train()
    stop.set()
    return {
        "mode": f"{mode} (dropout {dropout})" if mode == "lora" else mode,
        "threads": threads,
        "steps": steps,
        "step_s": step_times,
        "step_cpu_s": step_cpu,
        "trainable_params": trainable,
        "peak_rss_gb": _rss_kb("VmHWM") / 2**20,
        "phase_peak_rss_gb": {k: v / 2**20 for k, v in peaks.items()},
        "phase_s_per_step": {k: v / steps for k, v in spent.items()},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("config", nargs="?", default="smollm2-chain-sum")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--modes", default="full,lora")
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--lora-alpha", type=int, default=32)
    p.add_argument("--lr", type=float, default=None, help="learning_rate (default: the config's)")
    p.add_argument("--lora-dropout", type=float, default=0.05, help="lora_dropout (default: TRL's 0.05)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        result = child(a.config, a.child, a.steps, a.threads, a.lora_r, a.lora_alpha, a.lr, a.lora_dropout)
        print("RESULT " + json.dumps(result))
        return
    results = []
    for _ in range(a.rounds):
        for mode in a.modes.split(","):
            cmd = [sys.executable, __file__, a.config, "--child", mode, "--steps", str(a.steps)]
            cmd += ["--threads", str(a.threads), "--lora-r", str(a.lora_r), "--lora-alpha", str(a.lora_alpha)]
            cmd += ["--lora-dropout", str(a.lora_dropout)]
            if a.lr is not None:
                cmd += ["--lr", str(a.lr)]
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if not line:
                sys.exit(f"{mode} failed:\n{proc.stderr[-3000:]}")
            results.append(json.loads(line[0][len("RESULT ") :]))
            print(json.dumps(results[-1]), flush=True)
    cpu: dict[str, list[float]] = {}
    print("| mode | wall s/step | CPU s/step | peak RSS GB | trainable params |")
    print("|---|---|---|---|---|")
    for r in results:
        wall, used = r["step_s"], r["step_cpu_s"]
        cpu.setdefault(r["mode"].split()[0], []).extend(used)
        print(
            f"| {r['mode']} | {', '.join(f'{x:.1f}' for x in wall)} | {', '.join(f'{x:.1f}' for x in used)} | "
            f"{r['peak_rss_gb']:.2f} | {r['trainable_params']:,} |"
        )
    for mode in ("lora", "frozen"):
        if "full" in cpu and mode in cpu:
            ratio = (sum(cpu[mode]) / len(cpu[mode])) / (sum(cpu["full"]) / len(cpu["full"]))
            print(f"{mode} / full CPU seconds per step: {ratio:.2f}")


if __name__ == "__main__":
    main()
