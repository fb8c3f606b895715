"""What holds the memory of a training step on a bundled config (SmolLM2 shape): an exact account, not a sample.

For the policy the trainer builds (full, or with a LoRA adapter), one micro-batch of the config's shape
(``per_device_train_batch_size`` sequences of the chat-rendered prompt length + ``max_completion_length`` tokens)
goes through TRL's own log-prob forward (``_get_per_token_logps_and_entropies``, with its fused LM head) inside
``torch.autograd.graph.saved_tensors_hooks``, which sees every tensor autograd keeps for the backward. Printed:

- parameters, gradients and AdamW's two moments (bytes of the trainable and frozen parameters);
- the tensors saved for the backward (the activations; parameters, which autograd also keeps, are left out), by
  storage (each counted once), grouped by their last dimension (hidden size, MLP width, vocabulary, other), with the
  largest ones;
- the process's peak RSS (``VmHWM``) after the forward and after the backward.

Run: ``python benchmarks/smollm2_memory.py smollm2-chain-sum --threads 1`` (add ``--lora`` for the adapter;
``--batch 8`` for a quarter of the batch: every saved tensor is linear in the number of sequences).
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile

import torch


def _hwm_gb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    return float("nan")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("config", nargs="?", default="smollm2-chain-sum")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--lora", action="store_true")
    p.add_argument("--batch", type=int, default=None, help="sequences (default: per_device_train_batch_size)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)

    from apo.cli import config as cfglib
    from apo.cli.inputs import load_run_inputs
    from apo.integrations.trl.trainer import APOTrainer
    from apo.tasks.datasets import render_prompts

    overrides = dict(max_steps=1, eval_before_after=False, save_strategy="no", output_dir=tempfile.mkdtemp())
    cfg = cfglib.resolve(a.config, overrides)
    reward_fn, model, tokenizer, train_ds, _ = load_run_inputs(cfg)
    peft_config = None
    if a.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(task_type="CAUSAL_LM", r=16, lora_alpha=32, target_modules="all-linear")
    trainer = APOTrainer(
        model=model,
        reward_funcs=[reward_fn],
        args=cfg,
        train_dataset=train_ds,
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    model = trainer.model
    texts, special = render_prompts(tokenizer, [train_ds[i]["prompt"] for i in range(64)], None)
    prompt_len = max(len(tokenizer(t, add_special_tokens=special)["input_ids"]) for t in texts)
    N, C = a.batch or cfg.per_device_train_batch_size, cfg.max_completion_length
    torch.manual_seed(0)
    ids = torch.randint(0, len(tokenizer), (N, prompt_len + C))
    mask = torch.ones_like(ids)

    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() * p.element_size() for p in model.parameters() if not p.requires_grad)
    saved: dict[tuple[int, int], tuple[tuple[int, ...], int]] = {}
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}  # saved too, but held anyway

    def pack(t):
        if t.device.type == "cpu" and t.numel() > 0 and t.untyped_storage().data_ptr() not in weights:
            s = t.untyped_storage()
            saved[(s.data_ptr(), s.nbytes())] = (tuple(t.shape), s.nbytes())
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logp, _, _ = trainer._get_per_token_logps_and_entropies(model, ids, mask, C, compute_entropy=True)
    after_forward = _hwm_gb()
    logp.sum().backward()
    after_backward = _hwm_gb()

    config = model.config if not a.lora else model.get_base_model().config
    names = {config.hidden_size: "hidden", config.intermediate_size: "mlp", config.vocab_size: "vocab"}
    by_kind: dict[str, int] = collections.Counter()
    for shape, nbytes in saved.values():
        by_kind[names.get(shape[-1] if shape else 0, "other")] += nbytes
    largest = sorted(saved.values(), key=lambda x: -x[1])[:5]
    gb = 2**30
    print(
        json.dumps(
            {
                "mode": "lora" if a.lora else "full",
                "batch": [N, prompt_len + C],
                "completion_tokens": C,
                "weights_gb": (trainable + frozen) / gb,
                "grads_gb": trainable / gb,
                "adamw_states_gb": 2 * trainable / gb,
                "saved_for_backward_gb": sum(n for _, n in saved.values()) / gb,
                "saved_by_last_dim_gb": {k: v / gb for k, v in by_kind.items()},
                "saved_tensors": len(saved),
                "largest_saved": [[list(s), n / gb] for s, n in largest],
                "peak_rss_after_forward_gb": after_forward,
                "peak_rss_after_backward_gb": after_backward,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
