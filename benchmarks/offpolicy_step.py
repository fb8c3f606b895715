"""Training time of one off-policy optimizer step, ``apo`` vs ``grpo`` (and any other algorithm), generation excluded.

One rollout is generated once (``updates_per_rollout = k``, so TRL computes the rollout policy's log-probs and the
mini-batch carries them); the policy is then moved by a few optimizer steps so that ``pi_theta != pi_old``, as on any
step but the first of a rollout. The timed unit is what an off-policy optimizer step does besides generation: the
trainer's loss on that mini-batch (forward with entropies, the objective, its metrics, for ``apo`` the schedule's
step from the gathered groups), ``backward``, and the optimizer step. The algorithms share the model weights and
the mini-batch, and alternate call by call (``--repeats`` pairs, order flipped every pair) so machine noise falls on
both; the medians are printed, and the median over pairs of the ratio of the two calls made back to back (the
paired ratio: robust to load that changes over seconds, as on a shared machine).

    python benchmarks/offpolicy_step.py                                  # apo-ess vs grpo, tiny Llama, CPU
    python benchmarks/offpolicy_step.py --algorithms apo,grpo,cispo --hidden 128 --layers 4 --repeats 40
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
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402

from apo.tasks.tiny import char_tokenizer  # noqa: E402

CHARS = " 0123456789+-*=ab"


def build_model(tokenizer, hidden: int, layers: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def reward(completions, **kwargs):
    """Fraction of ``a`` characters: varies within groups, so advantages are not all zero."""
    return [sum(c == "a" for c in text) / max(1, len(text)) for text in completions]


def make_trainer(algorithm: str, model, tokenizer, dataset, opts):
    from apo import APOConfig, APOTrainer

    extra = {"alpha_schedule": "ess"} if algorithm == "apo" else {}
    args = APOConfig(
        output_dir="/tmp/apo-offpolicy-step", algorithm=algorithm, updates_per_rollout=opts.updates_per_rollout,
        num_generations=8, per_device_train_batch_size=opts.completions, max_completion_length=opts.max_tokens,
        generation_kwargs={"min_new_tokens": opts.max_tokens}, learning_rate=1e-3, max_steps=100, report_to="none",
        use_cpu=True, bf16=False, save_strategy="no", seed=0, disable_tqdm=True, dataloader_num_workers=0,
        activation_checkpointing=False, **extra,
    )  # fmt: skip
    return APOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=dataset, processing_class=tokenizer)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--algorithms", default="apo,grpo", help="the first is compared with each other one")
    p.add_argument("--completions", type=int, default=64, help="completions per optimizer step (8 per prompt)")
    p.add_argument("--max-tokens", type=int, default=64, help="tokens per completion (forced)")
    p.add_argument("--updates-per-rollout", type=int, default=4)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--repeats", type=int, default=30, help="timed steps per algorithm")
    p.add_argument("--threads", type=int, default=1)
    opts = p.parse_args()
    torch.set_num_threads(opts.threads)
    warnings.filterwarnings("ignore")
    from datasets import Dataset

    tokenizer = char_tokenizer(CHARS)
    dataset = Dataset.from_dict({"prompt": [f"{i % 10}+{(3 * i) % 10}=" for i in range(256)]})
    model = build_model(tokenizer, opts.hidden, opts.layers)
    algorithms = opts.algorithms.split(",")
    trainers = {a: make_trainer(a, model, tokenizer, dataset, opts) for a in algorithms}
    for trainer in trainers.values():
        trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train's loop, which is not run here
    first = trainers[algorithms[0]]
    model.train()
    batch = first._prepare_inputs(next(iter(first.get_train_dataloader())))  # one rollout, first mini-batch
    assert batch.get("old_per_token_logps") is not None, "old log-probs missing: not an off-policy mini-batch"
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(3):  # move the policy away from the rollout's
        first._compute_loss(model, batch).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    times: dict[str, list[float]] = {a: [] for a in algorithms}
    kl: list[float] = []
    for trainer in trainers.values():
        trainer._metrics["train"].clear()
    for i in range(opts.repeats + 2):
        order = algorithms if i % 2 == 0 else algorithms[::-1]
        for a in order:
            trainer = trainers[a]
            trainer._alpha_step = None  # apo: the schedule steps as on a new optimizer step
            t0 = time.perf_counter()
            loss = trainer._compute_loss(model, batch)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if i >= 2:  # the first two pairs warm up allocators
                times[a].append(time.perf_counter() - t0)
            kl += trainer._metrics["train"]["offpolicy/kl_old"]
            for values in trainer._metrics["train"].values():
                values.clear()
    u = float(batch["old_per_token_logps"].numel())
    print("command: python " + " ".join(sys.argv))
    print(
        f"tiny Llama d={opts.hidden} x {opts.layers} layers, {opts.completions} completions x {opts.max_tokens} "
        f"tokens per step ({int(u)} completion tokens), updates_per_rollout={opts.updates_per_rollout}, "
        f"{opts.threads} thread(s), torch {torch.__version__}"
    )
    print(f"off-policy: KL(pi_theta || pi_old) per token {min(kl):.2e} .. {max(kl):.2e} over the timed steps")
    med = {a: statistics.median(t) for a, t in times.items()}
    for a in algorithms:
        print(f"{a:>8}: median {med[a] * 1e3:8.1f} ms per off-policy optimizer step (n={len(times[a])})")
    base = algorithms[0]
    for a in algorithms[1:]:
        paired = statistics.median(x / y for x, y in zip(times[base], times[a], strict=True))
        print(
            f"{base} / {a}: ratio of medians {med[base] / med[a]:.3f}, median paired ratio {paired:.3f}   "
            "(target <= 1.05 for apo / grpo)"
        )


if __name__ == "__main__":
    main()
