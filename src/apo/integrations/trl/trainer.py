"""``APOTrainer``: TRL's ``GRPOTrainer`` with APO / ADPO losses on verified whole groups (tested with trl 1.16.0).

What it overrides, and why (everything else is TRL's):

- ``_calculate_rewards`` / ``_generate_and_score_completions``: carry the raw per-completion reward (TRL's weighted
  sum over reward functions, local slice) and a ``group_ids`` tensor (unique per prompt across processes and over the
  run) to the loss. TRL passes only z-scored advantages. The ``G`` rows of each group are checked to hold one prompt.
- ``_calculate_rewards`` also applies ``args.truncated_completions`` (every algorithm, train and eval): under
  ``"zero"`` a completion cut at ``max_completion_length`` without EOS scores 0 from every reward function before
  TRL forms advantages, so GRPO/GSPO baselines and APO targets all see the same 0; TRL's reward metrics
  (``reward``, ``reward_std``, ``rewards/<func>/mean|std``) and completion table keep the graded rewards, and the
  mean reward trained on is ``reward_zeroed``. Under ``"grade"`` (the default, TRL's behaviour) nothing changes.
  TRL's ``completions/clipped_ratio`` counts the cut completions; ``completions/truncated_graded_reward`` is the
  mean reward the functions paid them; a rollout whose every completion was cut is named in one warning (once in
  training, once in evaluation).
  TRL's ``mask_truncated_completions`` is another thing (see :mod:`.config`).
- ``_prepare_inputs``: TRL shuffles the generation batch row-wise before cutting it into ``steps_per_generation``
  micro-batches; here whole groups are shuffled instead (:func:`apo.integrations.trl.batching.shuffle_whole_groups`,
  seeded from torch's global generator like TRL's). Applied to every algorithm whenever
  ``per_device_train_batch_size % num_generations == 0`` (required for ``apo``/``adpo``) and
  ``steps_per_generation > 1``, so that peers compared in one study see the same micro-batches; otherwise TRL's
  row-wise shuffle is kept (with ``steps_per_generation == 1`` the one micro-batch holds every group whole anyway,
  and a run is then step for step the one ``GRPOTrainer`` makes).
- ``_compute_loss`` (group objectives only: ``apo``, ``adpo`` or a user's ``module:function``; the TRL losses run
  TRL's own ``_compute_loss`` untouched): per-token
  log-probs from TRL's ``_get_per_token_logps_and_entropies``, anchor = ``old_per_token_logps`` (or the detached
  current log-probs where TRL, exactly, knows the policy has not moved), the algorithm's group objective with the
  settings it accepts (:mod:`apo.algorithms`), divided by ``current_gradient_accumulation_steps`` as TRL's
  ``grpo`` loss is. ``make_groups`` verifies the grouping at every call.
- ``_get_per_token_logps_and_entropies``: on CPU, TRL's fused LM head scores only the completion positions (its
  compact branch, which it takes on Triton devices) instead of every position of prompt + completion
  (:mod:`.scoring`); same values, every algorithm, train and eval.
- ``__init__`` with ``use_vllm``: vLLM must be importable (one line naming the extra) and, in colocate mode, the
  engine's context must hold ``max_completion_length``, both checked before TRL loads any weights; TRL's
  ``VLLMGeneration`` is built as :mod:`.vllm_engine`'s subclass (the engine in the trainer's dtype, the weight sync
  of CPU engines through vLLM's in-place reload). When TRL's vLLM correction is off (``apo``/``adpo``),
  ``_generate_and_score_completions`` logs TRL's ``sampling/...`` mismatch metrics itself.
- ``_save_checkpoint`` / ``_load_optimizer_and_scheduler``: every checkpoint folder is written under
  ``.partial/``, completed by a manifest of its files' sizes and SHA-256 (``apo_manifest.json``, written last, see
  :mod:`.checkpoints`) and renamed into place (a kill leaves the previous one intact); the alpha schedule's state goes
  to ``apo_alpha_schedule.json`` in it and is restored on resume.

Decisions and departures (paper: Algorithm 1; TRL: ``GRPOTrainer``):

- **alpha advances once per optimizer step** (a change of ``state.global_step``), before the loss that uses it, as
  in Algorithm 1; every process computes the same alpha, which is used for every micro-batch of the step and logged
  as ``apo/alpha``. Evaluation never advances it. Its statistics come from:

  - the **whole rollout**, when a rollout starts the step: at generation time the policy *is* pi_old, so u = 0 and
    p is uniform for every group of the rollout, and the rewards of all its groups (gathered over processes by TRL)
    are known. This is Algorithm 1's whole batch; with the usual one optimizer step per rollout (the paper's
    config: 8 completions per micro-batch, 16 accumulation steps) it is every step. Used for the ``fixed`` and
    ``ess`` schedules and for ``guarded`` with ``confidence_source="anchored"`` (whose c_t is then exactly 0);
    the ``sequence`` and ``token`` confidences need the policy's log-probs or entropies, which the rollout does not
    compute, and take the next path. When a step spans several rollouts (``steps_per_generation <
    gradient_accumulation_steps``), its first rollout stands for the step. When one rollout feeds several optimizer
    steps (``steps_per_generation > gradient_accumulation_steps`` or ``num_iterations > 1``), its first step uses
    the whole rollout, including groups that later steps train on, and the later steps their first micro-batch:
    the guarded schedule's mean rewards then average different numbers of groups from step to step (the same
    expectation, different noise, which its running reward scale s_R absorbs).
  - the **first micro-batch** of the step otherwise (later optimizer steps on one rollout, where u != 0), its
    groups gathered over processes (``accelerator.gather``): the statistics of later micro-batches are not known
    when the first one's gradient is taken.
- **pi_ref = pi_old**: TRL computes ``old_per_token_logps`` exactly when ``gradient_accumulation_steps %
  (steps_per_generation * num_iterations) != 0``, i.e. when a rollout's micro-batches span more than one optimizer
  step (mini-batches with ``steps_per_generation > gradient_accumulation_steps``, epochs with ``num_iterations > 1``).
  Otherwise the policy cannot move between rollout and update and the detached current log-probs *are* pi_old's. A
  runtime guard raises if old log-probs are ever missing after an optimizer step since the rollout. On-policy,
  ``u = 0`` and ``p`` is uniform (logged: ``apo/u_abs_max``, ``apo/u_abs_mean``, ``apo/entropy``, ``apo/confidence``).
- **vLLM**: ``apo``/``adpo`` switch ``vllm_importance_sampling_correction`` off (see :mod:`.config`): the divergence is
  over the explicit candidate set and the anchor is the trainer-side log-probs; vLLM's sampling log-probs never enter.
- **confidence** of the guarded schedule (``confidence_source``): ``anchored`` = Eq. 19 on the anchored ``p`` (the
  paper; 0 whenever the policy has not moved), ``sequence`` = :func:`apo.sequence_confidence` of the policy's
  per-token-mean log-probs over each group, ``token`` = :func:`apo.token_confidence` of TRL's next-token entropies
  (masked mean over all processes) with the model's vocabulary size.
- **Unscorable completions** (every reward function returned ``None``; TRL: NaN reward, advantage 0) get their group's
  mean scored reward, i.e. z-score 0 (:func:`apo.integrations.trl.batching.fill_unscorable`).
- ``apo``/``adpo`` metrics (``apo/...``, ``adpo/...``) are averaged over processes (``apo/u_abs_max``: maximum) and go
  to ``self._metrics``, so they are logged wherever TRL logs; ``entropy`` is logged as TRL does.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
import trl
from torch import Tensor
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, sort_checkpoints
from trl import GRPOConfig, GRPOTrainer
from trl.extras.profiling import profiling_decorator
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.utils import (
    get_config_model_id,
    nanstd,
    split_pixel_values_by_grid,
    split_tensor_dict,
    unsplit_pixel_values_by_grid,
)

from apo.algorithms import GROUP, get_algorithm
from apo.core.diagnostics import NAN_WHEN_UNDEFINED, sequence_confidence, token_confidence
from apo.core.divergence import anchored_log_policy
from apo.core.groups import GroupIndex, make_groups
from apo.core.schedules import make_alpha_schedule
from apo.core.scores import sequence_logprob
from apo.core.targets import boltzmann_log_target

from .batching import fill_unscorable, local_group_ids, shuffle_whole_groups
from .checkpoints import fsync_path, write_manifest
from .config import APOConfig
from .generation import generate_single_turn
from .precision import fp32_forward, resolve_fp32_anchor_passes, warn_if_updates_lost, warn_offpolicy_anchor
from .scoring import score_completions_only
from .vllm_engine import (
    check_model_length,
    engine_dtype,
    require_vllm,
    sampling_mismatch_metrics,
    vllm_generation,
)

logger = logging.getLogger(__name__)

TESTED_TRL_VERSION = "1.16.0"
SCHEDULE_STATE_FILE = "apo_alpha_schedule.json"


if trl.__version__ != TESTED_TRL_VERSION:
    _msg = (
        f"apo's TRL integration overrides private GRPOTrainer hooks and is tested with trl=={TESTED_TRL_VERSION}, "
        f"but trl=={trl.__version__} is installed. Install trl=={TESTED_TRL_VERSION}"
    )
    if os.environ.get("APO_ALLOW_UNTESTED_TRL") != "1":
        raise ImportError(_msg + " (or set APO_ALLOW_UNTESTED_TRL=1 to try anyway).")
    warnings.warn(_msg + ".", RuntimeWarning, stacklevel=2)

GROUP_HINT = (
    "Groups are kept whole by APOTrainer's group-preserving batching, which needs per_device_train_batch_size (and "
    "per_device_eval_batch_size) to be a multiple of num_generations (num_generations_eval) and TRL's RepeatSampler "
    "layout; check those settings and any custom sampler, dataloader or _prepare_inputs override."
)


def _write_json_atomic(path: str, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` through a temporary file in the same folder and ``os.replace``."""
    folder = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".apo-", suffix=".json", dir=folder)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=2, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _model_config(model):
    """The ``PretrainedConfig`` of ``model``: a model object's own, or read from a path or hub id (no weights)."""
    if not isinstance(model, str):
        return model.config
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(model)


def _is_peft(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def _lm_head_cast_with_lora(args: APOConfig, model) -> None:
    """TRL 1.16's ``cast_lm_head_to_fp32`` fails on a LoRA model whose LM head is tied to its embedding
    (``AttributeError: 'LlamaForCausalLM' object has no attribute 'embed_tokens'``: it looks for the embedding one
    level too high in the PEFT wrapper), e.g. Qwen3-1.7B or tiny-arith with ``use_peft``. Off with a note when it was
    this package's default (with ``fp32_anchor_passes`` the log-prob passes, head included, are fp32 anyway; on-policy
    u = 0 exactly); an explicit ``True`` raises.

    Raises:
        ValueError: ``cast_lm_head_to_fp32=True`` set explicitly, LoRA, tied embeddings."""
    if not getattr(_model_config(model), "tie_word_embeddings", False):
        return
    if getattr(args, "_cast_lm_head_by_default", False):
        args.cast_lm_head_to_fp32 = False
        logger.warning(
            "cast_lm_head_to_fp32 off: TRL cannot cast the LM head of a LoRA model with tied embeddings; the "
            "head's logits are in the autocast dtype except in fp32_anchor_passes (docs/numerics.md)"
        )
        return
    raise ValueError(
        "cast_lm_head_to_fp32=true with LoRA on a model whose LM head is tied to its embedding: TRL 1.16 cannot "
        "cast that head (it looks for the embedding one level too high in the PEFT wrapper); set "
        "cast_lm_head_to_fp32=false"
    )


def _loss_mask(inputs: dict[str, Any]) -> Tensor:
    """The ``[N, T]`` mask of the completion tokens a loss sees: ``completion_mask``, times ``tool_mask`` (0 on
    tokens a tool wrote) when TRL's tool calling provides one."""
    mask_NT = inputs["completion_mask"]
    return mask_NT if "tool_mask" not in inputs else mask_NT * inputs["tool_mask"]


class APOTrainer(GRPOTrainer):
    """``GRPOTrainer`` running ``args.algorithm`` (``apo``, ``adpo``, ``grpo``, ``gspo``) on whole groups.

    Same constructor as ``GRPOTrainer`` (``model``, ``reward_funcs``, ``args``, ``train_dataset``,
    ``processing_class``, ...); ``args`` is an :class:`apo.APOConfig`, ``None`` for ``APOConfig("<model>-APO")``
    (TRL builds ``GRPOConfig("<model>-GRPO")``), or a TRL ``GRPOConfig``, run as ``algorithm="grpo"`` with its
    settings (:meth:`apo.APOConfig.from_grpo_config`; a warning says so). The alpha schedule in force is
    ``trainer.alpha_schedule`` (``None`` unless ``algorithm="apo"``). See the module docstring for what differs from
    TRL and from the paper.
    """

    _tag_names = ["trl", "grpo", "apo"]

    def __init__(self, model, reward_funcs=None, args: APOConfig | None = None, *args_, **kwargs):
        if args is None:  # as GRPOTrainer does, with this trainer's config (algorithm="apo")
            name = model if isinstance(model, str) else get_config_model_id(model.config)
            args = APOConfig(f"{name.split('/')[-1]}-APO")
        elif isinstance(args, GRPOConfig) and not isinstance(args, APOConfig):
            args = APOConfig.from_grpo_config(args)
            logger.warning(
                "args is a GRPOConfig: running algorithm='grpo' with its settings (loss_type=%r), as GRPOTrainer "
                "would; pass APOConfig(algorithm=...) for APO or another algorithm",
                args.loss_type,
            )
        if not isinstance(args, APOConfig):
            raise TypeError(f"APOTrainer needs args=APOConfig(...), a GRPOConfig or None, got {type(args).__name__}")
        if args.cast_lm_head_to_fp32 and (kwargs.get("peft_config") is not None or _is_peft(model)):
            _lm_head_cast_with_lora(args, model)
        if args.use_vllm:  # before TRL loads any weights
            require_vllm()
            if args.vllm_mode == "colocate":
                check_model_length(args.max_completion_length, args.vllm_max_model_length, _model_config(model))
            with vllm_generation(engine_dtype(args.vllm_dtype, args.bf16, args.fp16)):
                super().__init__(model, reward_funcs, args, *args_, **kwargs)
        else:
            super().__init__(model, reward_funcs, args, *args_, **kwargs)
        warn_if_updates_lost(self.model, args.learning_rate, self.optimizer)  # bf16 weights without master copy
        self.algorithm = args.algorithm
        self._algorithm = get_algorithm(args.algorithm)  # the registry's entry, or a user's group objective
        low_precision, steps = bool(args.bf16 or args.fp16), args.optimizer_steps_per_rollout
        weights = {p.dtype for p in self.model.parameters() if p.requires_grad and p.is_floating_point()}
        self.fp32_anchor_passes, note = resolve_fp32_anchor_passes(
            args.fp32_anchor_passes, self._algorithm.kind, weights, low_precision, steps
        )
        if note is not None:
            logger.warning(note)
        else:  # the anchor's passes in bf16 off-policy, by request
            warn_offpolicy_anchor(args.algorithm, low_precision, steps, self.fp32_anchor_passes)
        self._objective = self._algorithm.batch_objective() if self._algorithm.kind == GROUP else None
        self.alpha_schedule = (
            make_alpha_schedule(args.alpha_schedule, **args.schedule_params())
            if self._algorithm.has_alpha_schedule
            else None
        )
        self._whole_groups = {
            "train": args.per_device_train_batch_size % self.num_generations == 0,
            "eval": args.per_device_eval_batch_size % self.num_generations_eval == 0,
        }
        if self._objective is not None and not self._whole_groups["train"]:  # APOConfig already rejects this
            raise ValueError("per_device_train_batch_size must be a multiple of num_generations for group objectives")
        self._alpha_step: int | None = None  # global_step at which alpha last advanced
        self._generated_at_step: int | None = None  # global_step of the rollout being trained on
        self._generation_count = 0
        self._rewards_per_func: Tensor | None = None
        self._graded_rewards_per_func: Tensor | None = None  # before truncated_completions="zero"
        self._warned_all_truncated: set[str] = set()  # modes ("train", "eval") already warned about

    # ------------------------------------------------------------------------------------------------------------
    # Rollout: raw rewards and group ids travel with the batch.

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        rewards_per_func = self._apply_truncation_policy(rewards_per_func, completion_ids_list)
        self._rewards_per_func = rewards_per_func  # [N_global, F], gathered over processes by TRL
        return rewards_per_func

    def _apply_truncation_policy(self, rewards_per_func: Tensor, completion_ids_list: list) -> Tensor:
        """``args.truncated_completions`` on the gathered ``[N_global, F]`` rewards: with ``"zero"``, every reward
        function's score of a truncated completion becomes 0 (NaN, "unscorable", included). Truncated means TRL's
        ``completions/clipped_ratio`` rule: the last completion token is neither an EOS nor the pad token, i.e.
        generation stopped at ``max_completion_length``. Logs ``completions/truncated_graded_reward``: the mean
        weighted reward the functions gave the truncated completions before the policy (only when there are some).
        Keeps the graded rewards in ``self._graded_rewards_per_func`` (``None`` under ``"grade"``), from which
        :meth:`_log_graded_reward` restores TRL's ``reward`` metrics. Warns once per mode (train, eval) when every
        completion of a batch was cut."""
        mode = "train" if self.model.training else "eval"
        eos_and_pad = {*self.eos_token_ids, self._tokenizer.pad_token_id}
        device = rewards_per_func.device
        truncated_n = torch.tensor(
            [len(ids) > 0 and int(ids[-1]) not in eos_and_pad for ids in completion_ids_list], device=device
        )
        truncated_N = self.accelerator.gather(truncated_n)  # same order as TRL's gather of the rewards
        if truncated_N.any():
            weights_F = self.reward_weights.to(device)
            graded_N = (rewards_per_func[truncated_N] * weights_F.unsqueeze(0)).nansum(dim=1)
            self._metrics[mode]["completions/truncated_graded_reward"].append(graded_N.mean().item())
        if truncated_N.all() and mode not in self._warned_all_truncated and self.accelerator.is_main_process:
            self._warned_all_truncated.add(mode)
            effect = (
                "every reward is 0 (truncated_completions='zero') and nothing is learned"
                if self.args.truncated_completions == "zero"
                else "every reward grades cut text"
            )
            logger.warning(
                "all %d %s completions were cut at max_completion_length=%d without EOS: %s; raise "
                "max_completion_length%s",
                truncated_N.numel(),
                mode,
                self.max_completion_length,
                effect,
                " or use truncated_completions='grade'" if self.args.truncated_completions == "zero" else "",
            )
        self._graded_rewards_per_func = None
        if self.args.truncated_completions == "zero":
            self._graded_rewards_per_func = rewards_per_func
            rewards_per_func = rewards_per_func.clone()
            rewards_per_func[truncated_N] = 0.0
        return rewards_per_func

    def _log_graded_reward(self, mode: str, num_completions: int) -> None:
        """Under ``truncated_completions="zero"``, give TRL's reward metrics (``reward``, ``reward_std``,
        ``rewards/<func>/mean|std``) and completion table back their meaning, the graded reward, and log the mean
        reward trained on (cut completions at 0) as ``reward_zeroed``. TRL computed them from the rewards
        :meth:`_calculate_rewards` returned, the zeroed ones; its advantages keep those."""
        graded_NF, self._graded_rewards_per_func = self._graded_rewards_per_func, None  # this batch's, once
        if graded_NF is None:
            return
        metrics = self._metrics[mode]
        metrics["reward_zeroed"].append(metrics["reward"][-1])
        for i, name in enumerate(self.reward_func_names):
            metrics[f"rewards/{name}/mean"][-1] = torch.nanmean(graded_NF[:, i]).item()
            metrics[f"rewards/{name}/std"][-1] = nanstd(graded_NF[:, i]).item()
            table, values = self._logs["rewards"][name], graded_NF[:, i].tolist()
            k = min(len(table), num_completions)  # the table is a bounded deque
            for j in range(1, k + 1):
                table[-j] = values[-j]
        rewards_N = (graded_NF * self.reward_weights.to(graded_NF.device).unsqueeze(0)).nansum(dim=1)
        rewards_N[torch.isnan(graded_NF).all(dim=1)] = torch.nan  # unscorable rows, as TRL leaves them out
        metrics["reward"][-1] = torch.nanmean(rewards_N).item()
        metrics["reward_std"][-1] = nanstd(rewards_N).item()

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        mode = "train" if self.model.training else "eval"
        G = self.num_generations if mode == "train" else self.num_generations_eval
        group_ids_N = None
        if self._whole_groups[mode]:
            n = len(inputs)
            groups_per_process = n // G if n % G == 0 else 0
            first = (self._generation_count * self.accelerator.num_processes + self.accelerator.process_index) * (
                groups_per_process
            )
            group_ids_N = local_group_ids([x.get("prompt") for x in inputs], G, first_group=first, hint=GROUP_HINT)
            self._generation_count += 1
        output = super()._generate_and_score_completions(inputs)
        self._log_graded_reward(mode, len(self._rewards_per_func))
        if self.use_vllm and not self.vllm_importance_sampling_correction:
            self._log_sampling_mismatch(mode, output)
        if mode == "train":
            self._generated_at_step = self.state.global_step
        if group_ids_N is None:
            return output
        device = output["completion_ids"].device
        rewards_per_func = self._rewards_per_func
        rewards_N = (rewards_per_func * self.reward_weights.to(rewards_per_func.device).unsqueeze(0)).nansum(dim=1)
        rewards_N[torch.isnan(rewards_per_func).all(dim=1)] = torch.nan  # unscorable, as TRL marks them
        rewards_N = fill_unscorable(rewards_N.view(-1, G)).reshape(-1)
        n = len(inputs)
        local = slice(self.accelerator.process_index * n, (self.accelerator.process_index + 1) * n)
        output["rewards"] = rewards_N[local].to(device=device, dtype=torch.float32)
        output["group_ids"] = group_ids_N.to(device)
        if mode == "train" and self._alpha_from_rollout and self._alpha_step != self.state.global_step:
            self._advance_alpha_at_rollout(rewards_N.view(-1, G))
            self._alpha_step = self.state.global_step
        return output

    @torch.no_grad()
    def _log_sampling_mismatch(self, mode: str, output: dict[str, Any]) -> None:
        """TRL's ``sampling/sampling_logp_difference/mean|max`` and ``sampling/importance_sampling_ratio/min|mean|max``
        (:func:`.vllm_engine.sampling_mismatch_metrics`) where TRL's correction is off (``apo``/``adpo``, or a user's
        choice): the engine's per-token log-probs of its samples against the trainer's, under TRL's names, nothing
        applied to the loss. The trainer's are ``old_per_token_logps`` when TRL computed them, else one no-grad
        forward of the rollout (what TRL spends when its correction is on)."""
        sampling_NT = output.get("sampling_per_token_logps")
        if sampling_NT is None:
            return
        trainer_NT = output.get("old_per_token_logps")
        if trainer_NT is None:
            completion_ids, completion_mask = output["completion_ids"], output["completion_mask"]
            batch_size = (
                self.args.per_device_train_batch_size if mode == "train" else self.args.per_device_eval_batch_size
            )
            with disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs):
                trainer_NT, _, _ = self._get_per_token_logps_and_entropies(
                    self.model,
                    torch.cat([output["prompt_ids"], completion_ids], dim=1),
                    torch.cat([output["prompt_mask"], completion_mask], dim=1),
                    completion_ids.size(1),
                    batch_size=batch_size,
                )
        local = sampling_mismatch_metrics(
            trainer_NT,
            sampling_NT,
            _loss_mask(output),
            mode=self.vllm_importance_sampling_mode,
            clip_min=self.vllm_importance_sampling_clip_min,
            clip_max=self.vllm_importance_sampling_clip_max,
        )
        for key, value in local.items():
            gathered = self.accelerator.gather(value.reshape(1).float())
            if key.endswith("/max"):
                reduced = gathered.max()
            elif key.endswith("/min"):
                reduced = gathered.min()
            else:
                reduced = gathered.mean()
            self._metrics[mode][key].append(reduced.item())

    @profiling_decorator
    def _prepare_inputs(self, generation_batch):
        # TRL's training branch with a group-preserving shuffle in place of `shuffle_sequence_dict`, where the
        # generation batch is cut into several micro-batches; as one micro-batch it keeps every group whole anyway,
        # and TRL's own row shuffle keeps the run identical to GRPOTrainer's.
        if not self.model.training or not self._whole_groups["train"] or self.args.steps_per_generation == 1:
            return super()._prepare_inputs(generation_batch)
        generate_every = self.args.steps_per_generation * self.num_iterations
        if self._step % generate_every == 0 or self._buffered_inputs is None:
            batch = self._generate_and_score_completions(generation_batch)
            batch = split_pixel_values_by_grid(batch)
            batch = shuffle_whole_groups(batch, self.num_generations, hint=GROUP_HINT)
            chunks = split_tensor_dict(batch, self.args.steps_per_generation)
            self._buffered_inputs = [unsplit_pixel_values_by_grid(chunk) for chunk in chunks]
        return self._buffered_inputs[self._step % self.args.steps_per_generation]

    # ------------------------------------------------------------------------------------------------------------
    # Fast generation hook (args.fast_generation): static KV cache + compiled decoding; see .generation.

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        stock = super()._generate_single_turn
        return generate_single_turn(
            self, stock, prompt_ids, images, multimodal_fields, num_generations, has_tool_images
        )

    # ------------------------------------------------------------------------------------------------------------
    # Per-token log-probs: on CPU only the completion positions go through the LM head (see .scoring).

    def _get_per_token_logps_and_entropies(self, model, input_ids, *args, **kwargs):
        # every whole-completion pass (pi_old's at the rollout, the policy's in the loss) comes through here, never a
        # decode step: with fp32_anchor_passes they run in fp32 and generation keeps its low precision
        precision = fp32_forward(model, self.accelerator) if self.fp32_anchor_passes else contextlib.nullcontext()
        with score_completions_only(input_ids.device), precision:
            return super()._get_per_token_logps_and_entropies(model, input_ids, *args, **kwargs)

    # ------------------------------------------------------------------------------------------------------------
    # Loss.

    def _compute_loss(self, model, inputs):
        if self._objective is None:
            return self._compute_trl_loss(model, inputs)
        mode = "train" if self.model.training else "eval"
        G = self.num_generations if mode == "train" else self.num_generations_eval
        if "group_ids" not in inputs:
            raise ValueError(
                f"{mode} batch carries no group ids: its batch size is not a multiple of G={G}. {GROUP_HINT}"
            )
        group_ids_N, rewards_N = inputs["group_ids"], inputs["rewards"]
        groups = make_groups(group_ids_N, G, hint=GROUP_HINT)  # verified before any compute

        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        input_ids = torch.cat([inputs["prompt_ids"], completion_ids], dim=1)
        attention_mask = torch.cat([inputs["prompt_mask"], completion_mask], dim=1)
        mask_NT = _loss_mask(inputs)
        logp_NT, entropy_NT, aux_loss = self._get_per_token_logps_and_entropies(
            model,
            input_ids,
            attention_mask,
            completion_ids.size(1),
            compute_entropy=True,
            compute_aux_loss=self.aux_loss_enabled,
            **{
                k: inputs.get(k)
                for k in (
                    "pixel_values",
                    "image_grid_thw",
                    "num_images",
                    "pixel_attention_mask",
                    "spatial_shapes",
                    "num_tiles",
                    "image_sizes",
                    "token_type_ids",
                    "mm_token_type_ids",
                    "image_position_ids",
                )
            },
        )
        old_logp_NT = inputs.get("old_per_token_logps")
        if old_logp_NT is None:
            if mode == "train" and self._generated_at_step != self.state.global_step:
                raise RuntimeError(
                    "old_per_token_logps are missing although an optimizer step has passed since the rollout "
                    f"(rollout at step {self._generated_at_step}, now {self.state.global_step}): pi_old is unknown. "
                    "This TRL version's condition for computing them no longer matches the batching."
                )
            old_logp_NT = logp_NT.detach()

        if mode == "train" and self.alpha_schedule is not None and self._alpha_step != self.state.global_step:
            self._advance_alpha(groups, logp_NT.detach(), old_logp_NT, mask_NT, rewards_N, entropy_NT)
            self._alpha_step = self.state.global_step
        alpha = self.alpha_schedule.alpha if self.alpha_schedule is not None else 1.0
        args = self.args
        loss, metrics = self._objective(
            logp_NT,
            old_logp_NT,
            mask_NT,
            rewards_N,
            group_ids_N,
            sequence_score=args.sequence_score,
            group_size=G,
            group_hint=GROUP_HINT,
            **self._algorithm.objective_kwargs(args, alpha),
        )
        prefix = self._algorithm.metric_prefix
        if prefix is not None:  # a user's objective: its metrics under its name
            metrics = {f"{prefix}/{k}": torch.as_tensor(v) for k, v in metrics.items()}
        if self._algorithm.logs_alpha:
            metrics["apo/alpha"] = torch.tensor(alpha, dtype=torch.float64)  # the alpha used, not a float32 copy
        normalizer = self.current_gradient_accumulation_steps if mode == "train" else 1.0
        loss = loss / normalizer
        if self.aux_loss_enabled:
            loss = loss + self.router_aux_loss_coef * aux_loss / normalizer
            self._metrics[mode]["aux_loss"].append(self.accelerator.gather_for_metrics(aux_loss).mean().item())
        self._log_objective_metrics(mode, metrics, entropy_NT, mask_NT)
        if mode == "train":
            self._log_offpolicy_metrics(logp_NT, old_logp_NT, mask_NT)
        return loss

    def _compute_trl_loss(self, model, inputs):
        """TRL's own ``_compute_loss``, with the per-token log-probs it computes captured (not recomputed) for the
        off-policy metrics of :meth:`_log_offpolicy_metrics`."""
        captured: list[Tensor] = []
        name = "_get_per_token_logps_and_entropies"
        shadowed = self.__dict__.get(name)
        inner = getattr(self, name)

        def capture(*a, **kw):
            out = inner(*a, **kw)
            captured.append(out[0])
            return out

        setattr(self, name, capture)
        try:
            loss = super()._compute_loss(model, inputs)
        finally:
            if shadowed is None:
                delattr(self, name)
            else:
                setattr(self, name, shadowed)
        if self.model.training and captured:
            logp_NT = captured[0]
            old_logp_NT = inputs.get("old_per_token_logps")
            self._log_offpolicy_metrics(logp_NT, logp_NT if old_logp_NT is None else old_logp_NT, _loss_mask(inputs))
        return loss

    @torch.no_grad()
    def _log_offpolicy_metrics(self, logp_NT: Tensor, old_logp_NT: Tensor, mask_NT: Tensor) -> None:
        """How far the policy has moved from the one that sampled the micro-batch, for every algorithm.

        With token ratios ``r_t = pi_theta(y_t | .) / pi_old(y_t | .)`` over the completion tokens (``mask_NT``) and
        sequence log-ratios ``d_i = sum_t log r_t = l_theta(y_i) - l_old(y_i)`` (``d = tau_anc * u`` for APO):

        - ``offpolicy/kl_old``: ``mean_t (r_t log r_t - r_t + 1)``, an unbiased, non-negative per-token estimate of
          ``KL(pi_theta || pi_old)`` from samples of ``pi_old`` (``E_old[r log r] = KL(pi_theta || pi_old)`` and
          ``E_old[r - 1] = 0``); 0 when the policy has not moved;
        - ``offpolicy/seq_log_ratio_abs_max`` / ``_abs_mean``: ``max_i |d_i|`` / ``mean_i |d_i|``;
        - ``offpolicy/staleness``: optimizer steps taken since the rollout was sampled (0 on-policy).

        Token sums and counts are reduced over processes (the maximum for ``_max``)."""
        m = mask_NT.to(torch.float64)
        log_r_NT = (logp_NT.detach().double() - old_logp_NT.detach().double()) * m
        r_NT = log_r_NT.exp()
        kl_sum = ((r_NT * log_r_NT - r_NT + 1.0) * m).sum()
        d_N = log_r_NT.sum(-1).abs()
        totals = torch.stack(
            [kl_sum, m.sum(), d_N.sum(), torch.tensor(float(d_N.numel()), dtype=torch.float64, device=m.device)]
        )
        totals = self.accelerator.reduce(totals.to(self.accelerator.device), reduction="sum")
        d_max = self.accelerator.reduce(d_N.max().reshape(1).to(self.accelerator.device), reduction="max")
        metrics = self._metrics["train"]
        metrics["offpolicy/kl_old"].append((totals[0] / totals[1].clamp(min=1.0)).item())
        metrics["offpolicy/seq_log_ratio_abs_mean"].append((totals[2] / totals[3].clamp(min=1.0)).item())
        metrics["offpolicy/seq_log_ratio_abs_max"].append(d_max.item())
        if self._generated_at_step is not None:
            metrics["offpolicy/staleness"].append(float(self.state.global_step - self._generated_at_step))

    @property
    def _alpha_from_rollout(self) -> bool:
        """Whether the rollout's statistics suffice for a schedule step (see the module docstring)."""
        if self.alpha_schedule is None:
            return False
        return self.alpha_schedule.name != "guarded" or self.args.confidence_source == "anchored"

    def _advance_alpha_at_rollout(self, rewards_BG: Tensor) -> float:
        """One schedule step from all ``[B, G]`` groups of a rollout (every process), where pi_theta = pi_old."""
        rewards_BG = rewards_BG.double()
        zeros_BG = torch.zeros_like(rewards_BG)  # u = (l_theta - l_old) / tau = 0 at generation time
        return self._schedule_step(
            rewards_BG,
            boltzmann_log_target(rewards_BG, self.args.beta_reward, self.args.reward_eps),
            anchored_log_policy(zeros_BG, zeros_BG, self.args.tau_anchor),
            confidence=None,
        )

    def _schedule_step(self, rewards_BG, log_q_BG, log_p_BG, confidence) -> float:
        alpha = self.alpha_schedule.update(
            rewards_BG=rewards_BG, log_q_BG=log_q_BG, log_p_BG=log_p_BG, confidence=confidence
        )
        for key, value in self.alpha_schedule.metrics().items():
            if key != "apo/alpha":  # the alpha used is logged with the loss's metrics, once per micro-batch
                self._metrics["train"][key].append(float(value))
        return alpha

    def _advance_alpha(
        self,
        groups: GroupIndex,
        logp_NT: Tensor,
        old_logp_NT: Tensor,
        mask_NT: Tensor,
        rewards_N: Tensor,
        entropy_NT: Tensor,
    ) -> float:
        """One schedule step from this micro-batch's groups, gathered over processes (every process: same alpha);
        for optimizer steps that no rollout starts, or confidences the rollout cannot compute."""
        args = self.args
        m = mask_NT.to(logp_NT.dtype)
        seq_N = sequence_logprob(logp_NT, mask_NT, args.sequence_score)
        ref_N = sequence_logprob(old_logp_NT, mask_NT, args.sequence_score)
        entropy_sum_N = (entropy_NT.detach() * m).sum(-1)
        stats_N5 = torch.stack([rewards_N.to(seq_N.dtype), seq_N, ref_N, m.sum(-1), entropy_sum_N], dim=-1)
        stats_BG5 = self.accelerator.gather(groups.gather(stats_N5.float()).contiguous()).double()
        rewards_BG, seq_BG, ref_BG, lengths_BG, entropy_sum_BG = stats_BG5.unbind(-1)
        log_q_BG = boltzmann_log_target(rewards_BG, args.beta_reward, args.reward_eps)
        log_p_BG = anchored_log_policy(seq_BG, ref_BG, args.tau_anchor)
        if args.confidence_source == "sequence":
            confidence = sequence_confidence(seq_BG, lengths_BG)
        elif args.confidence_source == "token":
            mean_entropy = float(entropy_sum_BG.sum() / lengths_BG.sum().clamp(min=1.0))
            vocab_size = self.accelerator.unwrap_model(self.model).config.get_text_config().vocab_size
            confidence = token_confidence(mean_entropy, vocab_size)
        else:
            confidence = None  # Eq. 19 on the anchored p, computed by the schedule
        return self._schedule_step(rewards_BG, log_q_BG, log_p_BG, confidence)

    def _log_objective_metrics(self, mode: str, metrics: dict[str, Tensor], entropy_NT: Tensor, mask_NT: Tensor):
        keys = sorted(metrics)
        local_K = torch.stack([metrics[k].detach().double().reshape(()) for k in keys]).to(self.accelerator.device)
        gathered_PK = self.accelerator.gather(local_K).view(-1, len(keys))
        for j, key in enumerate(keys):
            column = gathered_PK[:, j]
            if key in NAN_WHEN_UNDEFINED:  # a statistic with no member on a process (NaN) is left out, not 0 or 1
                column = column[~column.isnan()]
                if column.numel() == 0:
                    continue  # undefined on every process: no value for this micro-batch
            self._metrics[mode][key].append((column.max() if key.endswith("_max") else column.mean()).item())
        m = mask_NT.to(entropy_NT.dtype)
        totals = self.accelerator.reduce(torch.stack([(entropy_NT.detach() * m).sum(), m.sum()]), reduction="sum")
        self._metrics[mode]["entropy"].append((totals[0] / totals[1].clamp(min=1.0)).item())

    # ------------------------------------------------------------------------------------------------------------
    # Checkpoints: the schedule's state next to TRL's files.

    def _save_checkpoint(self, model, trial):
        """Write ``checkpoint-N`` atomically, with the schedule's state inside.

        Transformers writes the folder in place, so a kill mid-write leaves a partial ``checkpoint-N`` that
        ``get_last_checkpoint`` would pick on resume. Here the parent writes into ``<output_dir>/.partial/`` and the
        folder is renamed into place once every process has written its part and the main process has added the
        manifest (:func:`.checkpoints.write_manifest`, the last file written); only then are old checkpoints
        rotated out (``save_total_limit``), so a kill at any moment leaves the previous checkpoint whole."""
        run_dir = self._get_output_dir(trial=trial)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging = os.path.join(run_dir, ".partial")
        if self.args.should_save:  # what a killed process left there is incomplete: start the folder afresh
            shutil.rmtree(staging, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        original_output_dir = self.args.output_dir
        self.args.output_dir = staging  # _get_output_dir(trial=None) reads args.output_dir
        try:
            super()._save_checkpoint(model, trial)
            if self.alpha_schedule is not None and self.args.should_save:
                payload = {
                    "schedule": self.alpha_schedule.name,
                    "global_step": self.state.global_step,
                    "state": self.alpha_schedule.state_dict(),
                }
                _write_json_atomic(os.path.join(staging, name, SCHEDULE_STATE_FILE), payload)
        finally:
            self.args.output_dir = original_output_dir
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            final = os.path.join(run_dir, name)
            write_manifest(os.path.join(staging, name), self.state.global_step)  # last: marks the folder complete
            if os.path.exists(final):  # the same step saved again (e.g. a damaged checkpoint passed over on resume)
                os.replace(final, os.path.join(staging, f"old-{name}"))
            os.replace(os.path.join(staging, name), final)
            fsync_path(run_dir)
            self._rotate_checkpoints_atomically(run_dir, staging)
            shutil.rmtree(staging, ignore_errors=True)
        self.accelerator.wait_for_everyone()

    def _rotate_checkpoints_atomically(self, run_dir: str, staging: str) -> None:
        """``transformers.trainer_utils.rotate_checkpoints`` (keep the newest ``save_total_limit`` checkpoints and
        the best one), except that each old checkpoint is first renamed into ``staging`` and deleted there: a kill
        during the deletion never leaves a half-deleted ``checkpoint-N`` in view."""
        limit = self.args.save_total_limit
        if limit is None or limit <= 0:
            return
        best = self.state.best_model_checkpoint
        found = sort_checkpoints(run_dir, best_model_checkpoint=best)
        protected = {found[-1]} | ({str(Path(best))} if best is not None else set())
        remaining, keep = len(found), max(limit, len(protected))
        for path in found:
            if remaining <= keep:
                break
            if path not in protected:
                os.replace(path, os.path.join(staging, f"old-{os.path.basename(path)}"))
                remaining -= 1

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None or self.alpha_schedule is None:
            return
        path = os.path.join(checkpoint, SCHEDULE_STATE_FILE)
        if not os.path.exists(path):
            warnings.warn(
                f"{path} not found: the alpha schedule restarts from its initial state", RuntimeWarning, stacklevel=2
            )
            return
        with open(path) as f:
            payload = json.load(f)
        if payload["schedule"] != self.alpha_schedule.name:
            raise ValueError(
                f"checkpoint {checkpoint} holds alpha_schedule={payload['schedule']!r} but this run has "
                f"alpha_schedule={self.alpha_schedule.name!r}"
            )
        self.alpha_schedule.load_state_dict(payload["state"])
