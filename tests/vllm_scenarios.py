"""Training scenarios through TRL's colocated vLLM engine, one per process (``python tests/vllm_scenarios.py NAME
OUT.json``), for ``tests/test_vllm.py``.

vLLM's in-process engine (``distributed_executor_backend="external_launcher"``) holds a ``torch.distributed`` group
for the life of its process: a second engine in the same process fails (``EADDRINUSE``), so each scenario that needs
an engine runs in a process of its own and writes what the test checks to ``OUT.json``:

- ``log``: the trainer's ``state.log_history`` (one row per optimizer step, then the run's summary row);
- ``moved``: the largest ``|w_after - w_before|`` over the trainable parameters;
- ``control``: for ``apo``, the log of a second ``train()`` on the same trainer with the weight sync skipped (the
  engine keeps the weights of the last sync while the trainer moves on): the negative control of the mismatch check.

Built as ``apo train`` builds its trainer: the bundled default config (the 1M-parameter tiny-arith model, fp32 on a
CPU) resolved with overrides, :func:`apo.cli.run.load_run_inputs`, :class:`apo.APOTrainer`.
"""

from __future__ import annotations

import json
import os
import sys
import time

COMMON = {
    "use_vllm": True,
    "vllm_mode": "colocate",
    "use_cpu": True,
    "bf16": False,
    "max_steps": 3,
    "per_device_train_batch_size": 32,  # 4 prompts x 8 completions
    "learning_rate": 1e-3,  # large enough that one step moves the log-probs far beyond fp32 rounding
    "save_strategy": "no",
    "eval_before_after": False,
    "torch_threads": 2,
}
SCENARIOS = {
    "apo": {"algorithm": "apo"},
    "adpo": {"algorithm": "adpo", "alpha_schedule": "fixed"},
    "grpo": {"algorithm": "grpo", "alpha_schedule": "fixed"},
    "gspo": {"algorithm": "gspo", "alpha_schedule": "fixed"},
    "peft": {"algorithm": "apo", "use_peft": True, "lora_r": 8, "lora_alpha": 16, "learning_rate": 1e-2},
    "offpolicy": {"algorithm": "apo", "alpha_schedule": "fixed", "updates_per_rollout": 4, "max_steps": 8},
}


def build_trainer(overrides: dict, output_dir: str):
    """An :class:`apo.APOTrainer` made as ``apo train`` makes it, for the default config plus ``overrides``."""
    from apo import APOTrainer
    from apo.cli import config as cfglib
    from apo.cli.lora import peft_config
    from apo.cli.run import load_run_inputs

    cfg = cfglib.resolve(None, {**overrides, "output_dir": output_dir})
    reward_fn, model, tokenizer, train_ds, _ = load_run_inputs(cfg)
    return APOTrainer(
        model=model,
        reward_funcs=[reward_fn],
        args=cfg,
        train_dataset=train_ds,
        processing_class=tokenizer,
        peft_config=peft_config(cfg),
    )


def run(name: str, output_dir: str) -> dict:
    """Train scenario ``name`` and return what the test checks (see the module docstring)."""
    t0 = time.time()
    trainer = build_trainer({**COMMON, **SCENARIOS[name]}, output_dir)
    started = time.time() - t0
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    moved = max(
        (p.detach() - before[n]).abs().max().item() for n, p in trainer.model.named_parameters() if n in before
    )
    result = {"log": trainer.state.log_history, "moved": moved, "engine_start_s": started, "train_s": time.time() - t0}
    if name == "apo":  # negative control: the engine keeps the last synced weights while the trainer moves on
        trainer.vllm_generation.sync_weights = lambda: None
        trainer.args.max_steps = 2
        trainer.train()
        result["control"] = trainer.state.log_history
    return result


if __name__ == "__main__":  # vLLM spawns helpers that re-import the main module
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    name, out, output_dir = sys.argv[1], sys.argv[2], sys.argv[3]
    with open(out, "w") as f:
        json.dump(run(name, output_dir), f)
