"""Seconds per optimizer step: stock TRL ``GRPOTrainer`` vs ``APOTrainer(algorithm="apo")`` on one configuration.

A tiny random Llama (char-level tokenizer built here, no model hub) on CPU. Both trainers get the same model init,
data, seed and settings (``loss_type="grpo"``, ``beta=0``); every completion is forced to the full
``max_completion_length`` (``min_new_tokens``) so both do the same generation work whatever their policies sample.
Runs alternate between the two trainers for ``--rounds`` rounds (fresh trainers each round) to spread machine noise
evenly; each round drops its first ``--warmup`` steps. Prints the median seconds per optimizer step of each, and the
ratio apo / stock (target: <= 1.05).

    python benchmarks/trainer_step.py                      # defaults below
    python benchmarks/trainer_step.py --steps 12 --rounds 3 --threads 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from apo.tasks.tiny import char_tokenizer  # noqa: E402

CHARS = " 0123456789+-*=ab"


def build_tokenizer():
    return char_tokenizer(CHARS)


def build_model(tokenizer, hidden: int, layers: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def reward(completions, **kwargs):
    return [sum(c == "a" for c in text) / max(1, len(text)) for text in completions]


def step_times(kind: str, opts, tokenizer, dataset, out_dir: str) -> list[float]:
    """Train ``opts.steps`` optimizer steps with ``kind`` (``stock`` | ``apo``); seconds of each step after warm-up."""
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from apo import APOConfig, APOTrainer

    common = dict(
        output_dir=out_dir,
        max_completion_length=opts.completion_length,
        num_generations=opts.generations,
        per_device_train_batch_size=opts.batch,
        gradient_accumulation_steps=opts.grad_accum,
        max_steps=opts.steps,
        learning_rate=1e-3,
        loss_type="grpo",
        beta=0.0,
        report_to="none",
        use_cpu=True,
        bf16=False,
        logging_steps=1,
        save_strategy="no",
        seed=0,
        disable_tqdm=True,
        generation_kwargs={"min_new_tokens": opts.completion_length},
    )
    if kind == "stock":
        args, cls = GRPOConfig(**common), GRPOTrainer
    else:
        args, cls = APOConfig(**common, algorithm="apo"), APOTrainer

    class Timer(TrainerCallback):
        def __init__(self):
            self.times, self.t0 = [], None

        def on_step_begin(self, *a, **k):
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **k):
            self.times.append(time.perf_counter() - self.t0)

    timer = Timer()
    trainer = cls(
        model=build_model(tokenizer, opts.hidden, opts.layers),
        reward_funcs=reward,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[timer],
    )
    trainer.log = lambda logs, start_time=None: trainer._metrics["train"].clear()  # no printing in the timed loop
    trainer.train()
    return timer.times[opts.warmup :]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=10, help="optimizer steps per run")
    p.add_argument("--warmup", type=int, default=2, help="steps dropped at the start of each run")
    p.add_argument("--rounds", type=int, default=3, help="alternating stock/apo runs")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--batch", type=int, default=16, help="per_device_train_batch_size (completions per micro-batch)")
    p.add_argument("--generations", type=int, default=8, help="num_generations (G)")
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--completion-length", type=int, default=32)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is steadier on a shared machine)")
    opts = p.parse_args()
    torch.set_num_threads(opts.threads)
    warnings.filterwarnings("ignore")
    import tempfile

    from datasets import Dataset
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    tokenizer = build_tokenizer()
    dataset = Dataset.from_dict({"prompt": [f"{i % 10}+{(7 * i) % 10}=" for i in range(512)]})
    times: dict[str, list[float]] = {"stock": [], "apo": []}
    with tempfile.TemporaryDirectory() as out:
        for r in range(opts.rounds):
            for kind in ("stock", "apo") if r % 2 == 0 else ("apo", "stock"):
                times[kind] += step_times(kind, opts, tokenizer, dataset, out)
    med = {k: statistics.median(v) for k, v in times.items()}
    print("command: python " + " ".join([sys.argv[0], *sys.argv[1:]]))
    print(
        f"config: Llama d={opts.hidden} x {opts.layers} layers, {opts.batch} completions x {opts.completion_length} "
        f"tokens per micro-batch, G={opts.generations}, grad_accum={opts.grad_accum}, threads={opts.threads}, "
        f"torch {torch.__version__}"
    )
    for kind in ("stock", "apo"):
        v = times[kind]
        print(f"{kind:>5}: median {med[kind]:.4f} s/step  (n={len(v)}, min {min(v):.4f}, max {max(v):.4f})")
    print(f"ratio apo/stock: {med['apo'] / med['stock']:.3f}  (target <= 1.05)")


if __name__ == "__main__":
    main()
