"""Seconds per optimizer step, generation vs training, peak memory: stock TRL vs APOTrainer, fast generation on/off.

Variants, all on the same model init, data, seed and step shape (``--completions`` completions of exactly
``--max-tokens`` tokens per optimizer step; EOS is suppressed with ``min_new_tokens`` so the token count is fixed):

- ``stock``: TRL's ``GRPOTrainer`` with ``GRPOConfig`` defaults (``loss_type="dapo"``, activation checkpointing on, a
  dynamic KV cache and eager decoding),
- ``grpo`` / ``apo``: :class:`apo.APOTrainer` with ``algorithm="grpo"`` / ``"apo"``, ``fast_generation=False``,
- ``grpo-fast`` / ``apo-fast``: the same with ``fast_generation=True`` (static KV cache + compiled decoding on CUDA;
  on CPU it falls back to TRL's path unless ``--compile-on-cpu``).

Each variant gets a fresh trainer per round; rounds alternate the order to spread machine noise. Per step: wall time
(device synchronised at both ends), the time inside the trainer's ``_generate_single_turn`` (the ``generate`` call:
prompt padding, prefill, decode, EOS masking), and the rest ("train": rewards, old log-probs, forward, backward,
optimizer). The first ``--warmup`` steps of each run are dropped (they hold compilation); medians are over the rest.
Peak memory: ``torch.cuda.max_memory_allocated`` over the run on CUDA; on CPU the largest RSS seen at a step end.

Shapes (random weights, no model hub): ``tiny`` (Llama, d=64, 2 layers), ``smollm2-135m`` (SmolLM2-135M's
``LlamaConfig``), ``qwen3-1.7b`` (Qwen3-1.7B's ``Qwen3Config``); the vocabulary is the architecture's, tokens past a
small character set decode to ``<tN>`` fillers.

    python benchmarks/step_time.py --shape tiny --device cpu                     # CPU, about 5 minutes on 2 cores
    python benchmarks/step_time.py --shape qwen3-1.7b --completions 64 --max-tokens 256 --steps 3 --warmup 1

Off-policy (``--updates-per-rollout k``): each rollout feeds ``k`` optimizer steps (``updates_per_rollout``; stock TRL:
``steps_per_generation = k x gradient accumulation``); the "train" column then is the cost of an off-policy
optimizer step, where the policy has moved since the rollout (old log-probs are computed at the rollout):

    python benchmarks/step_time.py --shape tiny --variants grpo,apo --updates-per-rollout 4 --warmup 4 --steps 16 \
        --rounds 3 --threads 1
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
import warnings

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402

from apo.tasks.tiny import char_tokenizer  # noqa: E402

CHARS = " 0123456789+-*=ab"
VARIANTS = ("stock", "grpo", "grpo-fast", "apo", "apo-fast")

# Published sizes of the real architectures (config.json of HuggingFaceTB/SmolLM2-135M and Qwen/Qwen3-1.7B).
SHAPES = {
    "tiny": dict(
        arch="llama", vocab_size=None, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=2048, tie_word_embeddings=True,
    ),
    "smollm2-135m": dict(
        arch="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
        num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192, rms_norm_eps=1e-5,
        rope_theta=100000.0, tie_word_embeddings=True,
    ),
    "qwen3-1.7b": dict(
        arch="qwen3", vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
        num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
        rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True,
    ),
}  # fmt: skip


def build_tokenizer(vocab_size: int | None):
    """Character-level tokenizer (``<bos>`` prepended), padded with ``<tN>`` filler tokens to ``vocab_size``."""
    return char_tokenizer(CHARS, vocab_size)


def build_model(shape: str, tokenizer, device: torch.device, dtype: torch.dtype):
    """Random-init model of ``shape`` on ``device`` in ``dtype``; the same weights on every call (seed 0)."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

    spec = dict(SHAPES[shape])
    arch = spec.pop("arch")
    spec["vocab_size"] = spec["vocab_size"] or len(tokenizer)
    ids = dict(
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id
    )
    config_cls, model_cls = (Qwen3Config, Qwen3ForCausalLM) if arch == "qwen3" else (LlamaConfig, LlamaForCausalLM)
    config = config_cls(**spec, **ids)
    torch.manual_seed(0)
    with torch.device(device):
        model = model_cls(config).to(dtype)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model


def reward(completions, **kwargs):
    return [sum(c == "a" for c in text) / max(1, len(text)) for text in completions]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def run_variant(variant: str, opts, tokenizer, dataset, device: torch.device, dtype: torch.dtype) -> dict:
    """Train ``opts.warmup + opts.steps`` optimizer steps with ``variant``; per-step times and peak memory."""
    from transformers import CompileConfig, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from apo import APOConfig, APOTrainer
    from apo.integrations.trl.generation import FastGeneration

    micro = opts.micro_batch
    if opts.completions % micro:
        raise ValueError(f"--completions ({opts.completions}) must be a multiple of --micro-batch ({micro})")
    common = dict(
        output_dir=opts.out_dir,
        max_completion_length=opts.max_tokens,
        num_generations=opts.num_generations,
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=opts.completions // micro,
        max_steps=opts.warmup + opts.steps,
        learning_rate=1e-6,
        report_to="none",
        use_cpu=device.type == "cpu",
        bf16=dtype == torch.bfloat16,
        logging_steps=1,
        save_strategy="no",
        seed=0,
        disable_tqdm=True,
        dataloader_num_workers=0,
        generation_kwargs={"min_new_tokens": opts.max_tokens},  # no EOS before max_tokens: fixed token count
    )
    if not opts.checkpointing:
        common["gradient_checkpointing"] = False
    k = opts.updates_per_rollout
    if variant == "stock":
        args, cls = GRPOConfig(**common, steps_per_generation=k * common["gradient_accumulation_steps"]), GRPOTrainer
    else:
        algorithm, _, fast = variant.partition("-")
        args = APOConfig(**common, algorithm=algorithm, fast_generation=bool(fast), updates_per_rollout=k)
        cls = APOTrainer

    steps, gen_in_step, peak_rss = [], [0.0], [0]
    lengths: set[int] = set()

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            sync(device)
            gen_in_step[0] = 0.0
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **k):
            sync(device)
            steps.append((time.perf_counter() - self.t0, gen_in_step[0]))
            if device.type == "cpu":
                peak_rss[0] = max(peak_rss[0], rss_bytes())

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    model = build_model(opts.shape, tokenizer, device, dtype)
    trainer = cls(
        model=model, reward_funcs=reward, args=args, train_dataset=dataset, processing_class=tokenizer,
        callbacks=[Timer()],
    )  # fmt: skip
    if opts.compile_on_cpu and device.type == "cpu" and variant.endswith("-fast"):
        compile_config = CompileConfig(mode="default")
        compile_config._compile_all_devices = True
        trainer._fast_generation = FastGeneration(compile_config=compile_config)

    generate = trainer._generate_single_turn

    def timed_generate(prompt_ids, *a, **k):
        sync(device)
        t0 = time.perf_counter()
        completion_ids, logprobs = generate(prompt_ids, *a, **k)
        sync(device)
        gen_in_step[0] += time.perf_counter() - t0
        lengths.update(len(c) for c in completion_ids)
        return completion_ids, logprobs

    trainer._generate_single_turn = timed_generate
    metrics = trainer._metrics
    trainer.log = lambda logs, start_time=None: metrics["train"].clear()  # no printing in the timed loop
    from torch._dynamo.utils import counters

    graphs_before = counters["stats"]["unique_graphs"]
    trainer.train()
    kept = steps[opts.warmup :]
    state = getattr(trainer, "_fast_generation", None)
    result = {
        "variant": variant,
        "step_s": [round(s, 4) for s, _ in kept],
        "gen_s": [round(g, 4) for _, g in kept],
        "warmup_step_s": [round(s, 4) for s, _ in steps[: opts.warmup]],
        "completion_lengths": sorted(lengths),
        "peak_bytes": torch.cuda.max_memory_allocated() if device.type == "cuda" else peak_rss[0],
        "compiled_graphs": counters["stats"]["unique_graphs"] - graphs_before,
        "fast": None
        if state is None
        else {"calls": state.calls, "cache_lengths": sorted(state.cache_lengths), "off": state.disabled},
    }
    del trainer, model
    gc.collect()
    if variant.endswith("-fast"):
        torch._dynamo.reset()  # free the compiled graphs and CUDA-graph pools; the next fast run compiles afresh
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def summarize(results: dict[str, list[dict]], opts) -> list[str]:
    med = {}
    lines = [
        f"{'variant':>10} | {'s/step':>8} | {'gen s':>8} | {'train s':>8} | {'peak GB':>8} | {'n':>3} | notes",
        "-" * 96,
    ]
    for variant, runs in results.items():
        step = [s for r in runs for s in r["step_s"]]
        gen = [g for r in runs for g in r["gen_s"]]
        rest = [s - g for r in runs for s, g in zip(r["step_s"], r["gen_s"], strict=True)]
        peak = max(r["peak_bytes"] for r in runs) / 2**30
        med[variant] = (statistics.median(step), statistics.median(gen), statistics.median(rest), peak)
        fast = runs[-1]["fast"]
        notes = [f"lengths {runs[-1]['completion_lengths']}", f"graphs {runs[-1]['compiled_graphs']}"]
        if fast is not None:
            notes.append("fast: " + (f"OFF ({fast['off']})" if fast["off"] else f"on, cache {fast['cache_lengths']}"))
        warm = [w for r in runs for w in r["warmup_step_s"]]
        if warm:
            notes.append(f"warm-up {max(warm):.1f} s")
        m = med[variant]
        lines.append(
            f"{variant:>10} | {m[0]:8.3f} | {m[1]:8.3f} | {m[2]:8.3f} | {m[3]:8.2f} | {len(step):>3} | "
            + "; ".join(notes)
        )

    def ratio(a: str, b: str, what: int = 0) -> str:
        if a in med and b in med:
            return f"{med[a][what] / med[b][what]:.3f}"
        return "n/a"

    lines += [
        "",
        f"speed-up stock / apo-fast (s/step): {ratio('stock', 'apo-fast')}   (target >= 3 on the Qwen3-1.7B shape)",
        f"speed-up stock / apo (s/step):      {ratio('stock', 'apo')}",
        f"apo-fast / grpo-fast (s/step):      {ratio('apo-fast', 'grpo-fast')}   (target <= 1.02)",
        f"apo / grpo (s/step):                {ratio('apo', 'grpo')}",
        f"apo / grpo (train s, no generation): {ratio('apo', 'grpo', 2)}   (target <= 1.05 off-policy)",
        f"generation stock / apo-fast:        {ratio('stock', 'apo-fast', 1)}",
        f"peak memory apo-fast / stock:       {ratio('apo-fast', 'stock', 3)}   (target <= 1)",
    ]
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    p.add_argument("--device", default="auto", help="cpu | cuda | auto (cuda when available)")
    p.add_argument("--completions", type=int, default=64, help="completions per optimizer step")
    p.add_argument("--max-tokens", type=int, default=256, help="tokens per completion (forced: no early EOS)")
    p.add_argument("--prompt-tokens", type=int, default=64, help="tokens per prompt, <bos> included")
    p.add_argument("--num-generations", type=int, default=8, help="G: completions per prompt")
    p.add_argument("--micro-batch", type=int, default=16, help="per_device_train_batch_size (a multiple of G)")
    p.add_argument("--steps", type=int, default=3, help="timed optimizer steps per run (after warm-up)")
    p.add_argument("--warmup", type=int, default=1, help="optimizer steps dropped at the start of each run")
    p.add_argument("--rounds", type=int, default=1, help="runs of every variant, order alternating")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {VARIANTS}")
    p.add_argument(
        "--no-checkpointing", dest="checkpointing", action="store_false", help="activation checkpointing off"
    )
    p.add_argument(
        "--updates-per-rollout",
        type=int,
        default=1,
        help="optimizer steps per rollout (k > 1: off-policy mini-batches; generation every k steps, so use "
        "--warmup and --steps that are multiples of k)",
    )
    p.add_argument("--compile-on-cpu", action="store_true", help="fast variants compile (inductor) on CPU too")
    p.add_argument("--threads", type=int, default=None, help="torch threads (CPU)")
    p.add_argument("--json", default=None, help="append one JSON line per run to this file")
    opts = p.parse_args()
    variants = [v.strip() for v in opts.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; valid: {list(VARIANTS)}")
    if opts.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(opts.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if opts.threads:
        torch.set_num_threads(opts.threads)
    warnings.filterwarnings("ignore")
    import logging

    import transformers
    import trl
    from datasets import Dataset
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    tokenizer = build_tokenizer(SHAPES[opts.shape]["vocab_size"])
    g = torch.Generator().manual_seed(0)
    digits = torch.randint(0, 10, (512, opts.prompt_tokens - 1), generator=g).tolist()
    dataset = Dataset.from_dict({"prompt": ["".join(map(str, row)) for row in digits]})
    header = (
        f"command: python {' '.join(sys.argv)}\n"
        f"shape {opts.shape}, {opts.completions} completions x {opts.max_tokens} tokens per step "
        f"(G={opts.num_generations}, micro-batch {opts.micro_batch}), prompts of {opts.prompt_tokens} tokens, "
        f"{dtype} on {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}, "
        f"activation checkpointing {'on' if opts.checkpointing else 'off'}, threads {torch.get_num_threads()}\n"
        f"torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}"
    )
    print(header, flush=True)
    results: dict[str, list[dict]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory() as out_dir:
        opts.out_dir = out_dir
        for r in range(opts.rounds):
            for variant in variants if r % 2 == 0 else variants[::-1]:
                t0 = time.perf_counter()
                res = run_variant(variant, opts, tokenizer, dataset, device, dtype)
                res.update(shape=opts.shape, round=r, wall_s=round(time.perf_counter() - t0, 1))
                results[variant].append(res)
                print(json.dumps(res), flush=True)
                if opts.json:
                    with open(opts.json, "a") as f:
                        f.write(json.dumps(res) + "\n")
    print("\n" + header)
    print("\n".join(summarize(results, opts)), flush=True)


if __name__ == "__main__":
    main()
