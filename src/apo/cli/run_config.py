"""``RunConfig``: the trainer's ``APOConfig`` plus the run's own settings (model, task, reward, evaluation, LoRA).

Every key of ``apo train`` / ``apo compare`` / ``apo eval`` is one field: those of ``APOConfig`` / ``GRPOConfig`` /
``TrainingArguments`` inherited, the run's written out below, each with its help and, where it is a number, its
allowed range in the field's metadata (``range``: ``"> 0"``, ``"[0, 1]"``, ...; :func:`apo.algorithms.in_range`).
The inherited TRL / transformers keys carry none: their ranges are the one table here, :data:`INHERITED_RANGES`.
Files, overrides and checks: :mod:`apo.cli.config`. This module imports TRL (through ``APOConfig``); the CLI loads it
when a config is resolved.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import Any

from apo.cli.lora import DEFAULTS as LORA_DEFAULTS
from apo.integrations.trl.config import APOConfig

SEED_RANGE = "[0, 4294967295]"  # numpy's seed range, which transformers' set_seed uses
INHERITED_RANGES: dict[str, str] = {
    # training loop (transformers TrainingArguments)
    "learning_rate": ">= 0",
    "num_train_epochs": "> 0",
    "max_steps": "-1 | >= 1",  # -1: train num_train_epochs epochs (transformers' meaning); 0 would train one step
    "per_device_train_batch_size": ">= 1",
    "per_device_eval_batch_size": ">= 1",
    "gradient_accumulation_steps": ">= 1",
    "eval_accumulation_steps": ">= 1",
    "warmup_steps": ">= 0",  # below 1: a fraction of the total steps (transformers)
    "weight_decay": ">= 0",
    "adam_beta1": "[0, 1)",
    "adam_beta2": "[0, 1)",
    "adam_epsilon": ">= 0",
    "max_grad_norm": ">= 0",  # 0: no clipping
    "label_smoothing_factor": "[0, 1]",
    "neftune_noise_alpha": ">= 0",
    "torch_empty_cache_steps": ">= 1",
    "logging_steps": "> 0",  # below 1: a fraction of the total steps (transformers)
    "save_steps": "> 0",
    "eval_steps": "> 0",
    "eval_delay": ">= 0",
    "save_total_limit": ">= 0",  # 0 or None: keep every checkpoint
    "seed": SEED_RANGE,
    "data_seed": SEED_RANGE,
    "dataloader_num_workers": ">= 0",
    "dataloader_prefetch_factor": ">= 1",
    "ddp_bucket_cap_mb": ">= 1",
    "ddp_timeout": ">= 1",
    "local_rank": ">= -1",
    "router_aux_loss_coef": ">= 0",
    # generation and loss (TRL GRPOConfig)
    "num_generations": ">= 2",
    "num_generations_eval": ">= 1",
    "max_completion_length": ">= 1",
    "pad_to_multiple_of": ">= 1",
    "generation_batch_size": ">= 1",
    "steps_per_generation": ">= 1",
    "temperature": "> 0",
    "top_p": "(0, 1]",
    "top_k": ">= 0",  # 0: no top-k filtering
    "min_p": "[0, 1]",
    "repetition_penalty": "> 0",
    "beta": ">= 0",
    "num_iterations": ">= 1",
    "updates_per_rollout": ">= 1",
    "epsilon": ">= 0",
    "epsilon_high": ">= 0",
    "delta": "> 0",
    "sapo_temperature_neg": "> 0",
    "sapo_temperature_pos": "> 0",
    "vespo_k_pos": "> 0",
    "vespo_lambda_pos": "> 0",
    "vespo_k_neg": "> 0",
    "vespo_lambda_neg": "> 0",
    "ref_model_mixup_alpha": "[0, 1]",
    "ref_model_sync_steps": ">= 1",
    "top_entropy_quantile": "[0, 1]",
    "entropy_coef": ">= 0",
    "entropy_coef_min": ">= 0",
    "entropy_coef_max": ">= 0",
    "entropy_coef_delta": ">= 0",
    "entropy_target": ">= 0",
    "max_tool_calling_iterations": ">= 0",
    "off_policy_mask_threshold": ">= 0",
    "num_completions_to_print": ">= 0",
    "vllm_server_port": "[1, 65535]",
    "vllm_group_port": "[1, 65535]",
    "vllm_server_timeout": "> 0",
    "vllm_gpu_memory_utilization": "(0, 1]",
    "vllm_max_model_length": ">= 1",
    "vllm_tensor_parallel_size": ">= 1",
    "vllm_importance_sampling_clip_min": ">= 0",
    "vllm_importance_sampling_clip_max": "> 0",
    "vllm_importance_sampling_cap": "> 0",
}
"""Ranges of the numeric keys ``RunConfig`` inherits from TRL / transformers (and APOConfig's
``updates_per_rollout``), whose fields carry none: the one table; every other key has its range on its field. Syntax:
``">= 1"``, ``"> 0"``, ``"[0, 1]"``, ``"(0, 1]"``, ``"[0, 1)"``, alternatives joined by ``" | "`` (``"-1 | >= 1"``:
the single value -1, or >= 1); ``None`` passes wherever the field's type allows it (it means "unset")."""


def run_field(default: Any, help: str, *, range: str | None = None) -> Any:
    """A run setting: its default, one line of help and, for a number, its range (``None`` passes as "unset")."""
    metadata = {"help": help} if range is None else {"help": help, "range": range}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class RunConfig(APOConfig):
    """One flat dataclass: every ``APOConfig`` field plus the run settings below, read from YAML
    (:func:`apo.cli.config.resolve`)."""

    # --- what to train, on what
    model: str = run_field(
        "tiny-arith", "Policy to train: tiny-arith | tiny-arith-wrong | smollm2 | a local folder | a hub id."
    )
    task: str = run_field(
        "arith", "Prompts: arith[:ops] | reasoning-gym:<generator> | a MATH-style file/folder | hub id."
    )
    task_options: dict = run_field({}, "Keyword options of the task (arith: digits; reasoning-gym: generator config).")
    math_level: str | None = run_field(None, "MATH filter, e.g. 'Level 3' (MATH-style data only).")
    # --- reward
    reward: str | None = run_field(
        None, "Reward: arithmetic | math | reasoning-gym | 'module:function'; None: the task's."
    )
    answer_format: typing.Literal["boxed", "final", "auto"] | None = run_field(
        None, "Answer extraction of math/reasoning-gym rewards: boxed | final | auto; None: the reward's."
    )
    partial_credit: float = run_field(
        0.0,
        "arithmetic reward: most credit for a wrong answer, times its share of digits right; 0: binary.",
        range="[0, 1]",  # a wrong answer must score below a right one (1.0)
    )
    reward_timeout: float | None = run_field(
        10.0,
        "Seconds a reward may take per call, one batch (None: no limit); over it, the batch scores 0.",
        range="> 0",
    )
    # --- evaluation and data sizes
    eval_task: str | None = run_field(
        None, "Evaluation data, used whole (a file/folder/hub id or a task); None: the held-out part of task."
    )
    eval_task_options: dict = run_field({}, "Keyword options of eval_task (like task_options).")
    train_size: int | None = run_field(None, "Training prompts (None: the task's default).", range=">= 1")
    eval_size: int = run_field(
        200,
        "Held-out prompts for `apo eval` and the before/after evaluation.",
        range=">= 1",  # eval_before_after=false turns the evaluation off
    )
    eval_samples: int = run_field(4, "Completions sampled per held-out prompt in evaluation.", range=">= 1")
    pass_at_k: list[int] = run_field(
        [], "k of the pass@k reported in evaluation, each <= eval_samples; []: every k in 1..eval_samples."
    )
    eval_seed: int = run_field(
        1234, "Seed of the evaluation draw and sampling (the same before and after training).", range=SEED_RANGE
    )
    eval_batch_size: int = run_field(64, "Prompts per generation batch in evaluation.", range=">= 1")
    eval_before_after: bool = run_field(True, "Evaluate the policy before and after training and record both.")
    # --- machine
    cache_dir: str = run_field("~/.cache/apo", "Where prepared models (tiny-arith, converted SmolLM2) are cached.")
    torch_threads: int | None = run_field(
        None, "torch.set_num_threads (None: torch's, all cores; 1: shared machine).", range=">= 1"
    )
    truncated_completions: str = run_field(
        "zero",
        "Reward of a completion cut at max_completion_length without EOS: 'zero' (the CLI's default, so "
        "that algorithms are compared on finished answers) or 'grade' (APOConfig's and TRL's default).",
    )
    master_weights: bool = run_field(
        True,
        "With bf16/fp16: fp32 weights and optimizer states, low-precision autocast compute (TRL's default); "
        "false: low-precision weights trained by torch-optimi's Kahan-summed AdamW (docs/numerics.md).",
    )
    # --- LoRA (TRL ModelConfig's keys and defaults; checked by apo.cli.lora)
    use_peft: bool = run_field(False, "Train a LoRA adapter (PEFT) instead of every weight; needs `pip install peft`.")
    lora_r: int = run_field(LORA_DEFAULTS["lora_r"], "LoRA rank r (needs use_peft).", range=">= 1")
    lora_alpha: int = run_field(
        LORA_DEFAULTS["lora_alpha"], "LoRA scale numerator: updates scaled by lora_alpha / r.", range="> 0"
    )
    lora_dropout: float = run_field(
        LORA_DEFAULTS["lora_dropout"],
        "Dropout on the LoRA branch's input (TRL: 0.05; > 0 makes pi_old noisy).",
        range="[0, 1)",
    )
    lora_target_modules: list[str] | str | None = run_field(
        None, "Module names (or a regex) that get adapters; None: all-linear (attention and MLP projections)."
    )
    lora_modules_to_save: list[str] | None = run_field(
        None, "Modules trained in full and saved with the adapter, e.g. [lm_head] (needs use_peft)."
    )
    use_rslora: bool = run_field(False, "Rank-stabilised LoRA: scale lora_alpha / sqrt(r) (needs use_peft).")
    use_dora: bool = run_field(False, "DoRA: weight-decomposed LoRA (needs use_peft).")


RUN_KEYS = tuple(RunConfig.__annotations__)
"""The keys the run adds to ``APOConfig`` (written out above)."""
