"""``APOConfig``: TRL's ``GRPOConfig`` plus the settings of APO, ADPO and the GSPO preset.

One flat dataclass. Every APO field has one ``help`` line; contradictory settings raise ``ValueError`` at
construction, naming the settings to change. Defaults are the paper's (Sec. 7 "Configuration": ``tau_anc = 0.8``,
``beta_r = 1.0``, ``alpha_max = 0.9``, ``alpha_min = 0.35``, ``rho = lambda = 0.1``, ``s_R`` initialised to 0.5).

Departures from TRL's ``GRPOConfig`` defaults:

- ``loss_type``, ``importance_sampling_level``, ``epsilon`` (and ``epsilon_high``) default to ``None`` = "the
  algorithm's value" (:data:`TRL_ALGORITHMS`): ``grpo`` -> ``loss_type="grpo"`` (the GRPO paper's per-sequence
  mean; TRL's default is ``"dapo"``), token-level ratios, ``epsilon=0.2``; ``gspo`` -> ``loss_type="grpo"``,
  ``importance_sampling_level="sequence"``, ``epsilon=3e-4``, ``epsilon_high=4e-4`` (the GSPO paper's settings);
  ``dapo``, ``dr_grpo``, ``cispo``, ``sapo`` -> TRL's loss of that name with its paper's clip range, unless set
  explicitly. ``grpo`` is TRL's ``GRPOTrainer`` loss as configured: it takes any TRL ``loss_type`` at either
  ``importance_sampling_level`` (sequence-level DAPO, BNPO, Dr. GRPO, CISPO, SAPO, LUSPO: ``algorithm="grpo",
  loss_type=..., importance_sampling_level="sequence"``), except ``vespo`` at sequence level, which TRL does not
  support (VESPO forms its own sequence weights and ignores the level). The named algorithms are their paper's
  setting and reject a different ``loss_type`` or level, naming the ``grpo`` spelling to use instead.
- ``updates_per_rollout = k`` is the off-policy knob: ``steps_per_generation = k * gradient_accumulation_steps``
  (TRL's own mini-batching of a rollout), with groups whole in every mini-batch; ``num_iterations`` (TRL's) repeats
  each rollout's mini-batches (epochs). A rollout lag (generation by a policy ``d`` steps old, as asynchronous
  pipelines do) is not offered: TRL 1.16 generates synchronously with the current weights, and a lag would need a
  second copy of the policy; mini-batches already train on rollouts 0 .. k - 1 steps stale.
- ``truncated_completions`` (every algorithm) decides the reward of a completion that reaches
  ``max_completion_length`` without EOS. ``"grade"`` (the default here, TRL's behaviour) scores it like any other,
  so ``APOTrainer(algorithm="grpo")`` gets TRL's rewards. ``"zero"`` gives it reward 0 whatever the reward functions
  say: with a binary rule-based reward (the paper's), a cut reasoning trace that happens to end on the right number
  would otherwise be paid. ``apo train`` / ``apo compare`` default to ``"zero"`` (:mod:`apo.cli.config`), and state
  it in the run's config; a default of ``"zero"`` here would turn a TRL script whose completions rarely end (a large
  vocabulary, short ``max_completion_length``) into one where every reward and advantage is 0. Either way the
  logged ``reward`` is the graded reward, as TRL logs it. This is not TRL's ``mask_truncated_completions``, which
  keeps the graded reward (and the cut completion's place in the group baseline) but removes its tokens from the
  loss; ``apo``/``adpo`` reject that one, and for ``grpo``/``gspo`` the two compose (the cut completion then scores
  0 in the baseline and adds no tokens to the loss).
- ``cast_lm_head_to_fp32`` defaults to ``None`` = on for ``apo`` / ``adpo`` under ``bf16`` / ``fp16`` (TRL: off):
  the anchor ``u = (l - l_ref) / tau`` is a difference of two log-probability sums over the completion, and bf16
  logits put rounding noise of the size of ``u`` into it (docs/numerics.md). Off for the TRL-run algorithms, which
  may set it.
- ``fp32_anchor_passes`` (new) defaults to ``None`` = on for the group objectives under ``bf16`` / ``fp16`` when a
  rollout feeds more than one optimizer step: the two passes that form ``u`` (pi_old's log-probs at the rollout, the
  policy's in the loss) run with autocast off on the fp32 master weights, generation stays in bf16. Off-policy,
  bf16 rounding is most of ``u`` otherwise (docs/numerics.md); on-policy ``u = 0`` exactly and nothing changes.
- ``apo`` / ``adpo`` switch ``vllm_importance_sampling_correction`` off: APO's objective is a divergence over the
  explicit candidate set, whose anchor is the trainer-side log-probability of the rollout parameters
  (``pi_ref = pi_old``, Eq. 1); there is no expectation under the sampler to correct, so vLLM's sampling log-probs
  never enter the loss. A note is logged when vLLM is on. TRL's ``sampling/...`` metrics of the engine/trainer
  mismatch are still logged, for every algorithm (:mod:`.vllm_engine`).
- ``vllm_dtype`` (new): the colocated vLLM engine generates in the trainer's compute dtype by default, where TRL
  leaves vLLM's ``auto`` rule (bf16 for an fp32 checkpoint); see :mod:`.vllm_engine`.
- ``apo`` / ``adpo`` reject TRL options that act on a token-level surrogate and would otherwise be ignored silently:
  ``beta != 0`` (KL to a reference model), ``top_entropy_quantile < 1``, ``off_policy_mask_threshold``,
  entropy bonuses, ``multi_objective_aggregation="normalize_then_sum"``, ``scale_rewards != "group"`` (APO's target
  standardises rewards within each group itself, Eq. 4).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field

from trl import GRPOConfig

from apo.algorithms import (
    GROUP,
    REGISTRY,
    TRL,
    APOSettings,
    config_field,
    get_algorithm,
    names,
    objective_path,
    readers,
    weight_clip_of,
)
from apo.core.schedules import schedule_params

from .vllm_engine import check_vllm_settings

logger = logging.getLogger(__name__)

GROUP_ALGORITHMS = names(GROUP)
TRL_ALGORITHMS: dict[str, dict] = {name: dict(REGISTRY[name].trl) for name in names(TRL)}
"""Algorithms that run TRL's own ``_compute_loss``: the ``loss_type``, ratio level and clip range each implies when
left unset (``None``), read from :data:`apo.algorithms.REGISTRY` (with the sources). Settings that are not ``None``
by default in TRL (``scale_rewards`` for Dr. GRPO, ``mask_truncated_completions`` for DAPO) are set by the
``apo compare`` presets, not here."""
ALGORITHMS = names()
SEQUENCE_SCORES = ("sum", "mean")
TRUNCATION_POLICIES = ("grade", "zero")
TRL_LOSS_TYPES = ("grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo")
"""``loss_type`` values of trl 1.16's ``GRPOTrainer``; every one runs at either ``importance_sampling_level``
except ``vespo`` (token level only: it forms its own sequence weights)."""
IMPORTANCE_SAMPLING_LEVELS = ("token", "sequence")


@dataclass
class APOConfig(GRPOConfig):
    r"""Configuration of :class:`apo.APOTrainer`: every ``GRPOConfig`` field plus the APO settings below.

    ``algorithm`` picks the objective: ``apo`` (alpha-divergence to the Boltzmann target over each candidate set,
    Eq. 7), ``adpo`` (ADPO-Softmax, APO's alpha = 1 gradient), or the peers in :data:`TRL_ALGORITHMS` (``grpo``,
    ``gspo``, ``dapo``, ``dr_grpo``, ``cispo``, ``sapo``), which run TRL's own
    loss unchanged. ``apo`` and ``adpo`` need whole groups in every micro-batch:
    ``per_device_train_batch_size % num_generations == 0``, whatever ``steps_per_generation``, ``num_iterations``,
    gradient accumulation and world size (the trainer shuffles whole groups; see :mod:`apo.integrations.trl.trainer`).
    The alpha schedule advances once per optimizer step, from all groups of the rollout when a rollout starts the
    step (u = 0 there), else from the first micro-batch of the step gathered over all processes; that alpha serves
    every micro-batch of the step and is logged as ``apo/alpha``.

    Example::

        APOConfig(output_dir="out", algorithm="apo", alpha_schedule="guarded", num_generations=8,
                  per_device_train_batch_size=16, steps_per_generation=4)
    """

    algorithm: str = field(
        default="apo",
        metadata={
            "help": f"Objective: one of {ALGORITHMS} (all but apo/adpo run TRL's own loss), or a group objective "
            "'module:function' called fn(logp_BG, old_logp_BG, rewards_BG, **objective_kwargs) -> (loss, metrics)."
        },
    )
    objective_kwargs: dict | None = field(
        default=None,
        metadata={
            "help": "Keyword settings of a group objective given by import path ('module:function'); each must be "
            "accepted by the function. Built-in algorithms take their settings as keys of their own."
        },
    )
    # The group algorithms' settings: defined (default, help, range) in apo.algorithms.
    alpha_schedule: str = config_field("alpha_schedule")
    alpha: float = config_field("alpha")
    alpha_min: float = config_field("alpha_min")
    alpha_max: float = config_field("alpha_max")
    tau_anchor: float = config_field("tau_anchor")
    beta_reward: float = config_field("beta_reward")
    reward_eps: float = config_field("reward_eps")
    alpha_ema: float = config_field("alpha_ema")
    baseline_ema: float = config_field("baseline_ema")
    reward_scale: float = config_field("reward_scale")
    ess_target: float = config_field("ess_target")
    weight_clip_min: float | None = config_field("weight_clip_min")
    weight_clip_max: float | None = config_field("weight_clip_max")
    sequence_score: str = config_field("sequence_score")
    confidence_source: str = config_field("confidence_source")
    updates_per_rollout: int | None = field(
        default=None,
        metadata={
            "help": "Optimizer steps fed by each rollout (PPO-style mini-batches of whole groups): sets "
            "steps_per_generation = updates_per_rollout x gradient_accumulation_steps. None: TRL's "
            "steps_per_generation (default: one step per rollout). Epochs over a rollout: num_iterations."
        },
    )
    truncated_completions: str = field(
        default="grade",
        metadata={
            "help": f"Reward of a completion cut at max_completion_length without EOS: one of {TRUNCATION_POLICIES}. "
            "'grade' (default): the reward functions' score, as TRL does; 'zero': 0 whatever the reward functions "
            "return (a cut trace has no final answer; counted in completions/clipped_ratio, the trained-on mean "
            "logged as reward_zeroed). `apo train` defaults to 'zero'."
        },
    )
    # --- fast generation hook (apo.integrations.trl.generation) ---
    fast_generation: bool = field(
        default=False,
        metadata={"help": "Without vLLM on CUDA: static KV cache + torch.compile'd decoding (falls back to TRL's)."},
    )
    # --- end of fast generation hook ---
    vllm_dtype: str | None = field(
        default=None,
        metadata={
            "help": "dtype of the colocated vLLM engine: None = the trainer's compute dtype (float32; bfloat16 under "
            "bf16), 'auto' = vLLM's rule (TRL's behaviour: an fp32 checkpoint runs in bf16), or "
            "'float32'/'bfloat16'/'float16'. Only with use_vllm=True in colocate mode."
        },
    )
    # GRPOConfig fields whose default depends on `algorithm` (None = the algorithm's value; see the module docstring).
    loss_type: str | None = field(
        default=None,
        metadata={
            "help": "TRL loss of TRL-run algorithms; None = the algorithm's (TRL_ALGORITHMS). Unused by apo/adpo."
        },
    )
    importance_sampling_level: str | None = field(
        default=None,
        metadata={"help": "TRL ratio level of TRL-run algorithms; None = 'sequence' for gspo, else 'token'."},
    )
    epsilon: float | None = field(
        default=None,
        metadata={"help": "Lower clip range of TRL-run algorithms; None = the algorithm's (0.2; 3e-4 for gspo)."},
    )

    cast_lm_head_to_fp32: bool | None = field(
        default=None,
        metadata={
            "help": "LM head and log-softmax in fp32 (TRL's option); None = on for apo/adpo under bf16/fp16 (their "
            "anchor is a difference of long log-prob sums, docs/numerics.md), off otherwise."
        },
    )

    fp32_anchor_passes: bool | None = field(
        default=None,
        metadata={
            "help": "The whole-completion log-prob passes (pi_old's at the rollout, the policy's in the loss) in "
            "fp32 under bf16/fp16: autocast off, on the fp32 master weights; generation stays low precision. None = "
            "on for group objectives (apo, adpo, ...) when a rollout feeds more than one optimizer step (off-policy, "
            "where bf16 rounding is most of the anchor u, docs/numerics.md), off otherwise."
        },
    )

    def __post_init__(self):
        if callable(self.algorithm):  # a group objective passed as a function: named by its import path
            self.algorithm = objective_path(self.algorithm)
        self._check_apo_fields()
        self._apply_updates_per_rollout()
        algo = self.algorithm
        kind = get_algorithm(algo).kind
        if kind == TRL:
            implied = TRL_ALGORITHMS[algo]
            for key in ("loss_type", "importance_sampling_level") if algo != "grpo" else ():
                if getattr(self, key) not in (None, implied[key]):
                    raise ValueError(
                        f"algorithm={algo!r} is TRL's loss_type={implied['loss_type']!r} with "
                        f"{implied['importance_sampling_level']}-level ratios, but {key}={getattr(self, key)!r}: "
                        f"leave {key} unset, or use algorithm='grpo' (TRL's loss as configured) with "
                        f"loss_type={self.loss_type or implied['loss_type']!r}, importance_sampling_level="
                        f"{self.importance_sampling_level or implied['importance_sampling_level']!r}"
                    )
            for key, value in implied.items():
                if getattr(self, key) is None:
                    setattr(self, key, value)
            self._check_trl_loss()
        else:
            # unused by the group objectives, but a misspelt value is a mistake all the same
            trl_names = {"loss_type": TRL_LOSS_TYPES, "importance_sampling_level": IMPORTANCE_SAMPLING_LEVELS}
            for key, valid in trl_names.items():
                if getattr(self, key) not in (None, *valid):
                    raise ValueError(
                        f"{key}={getattr(self, key)!r} is none of TRL's {valid}; algorithm={algo!r} does not use "
                        f"it: leave {key} unset"
                    )
            self.loss_type = "grpo" if self.loss_type is None else self.loss_type
            self.importance_sampling_level = self.importance_sampling_level or "token"
            self.epsilon = 0.2 if self.epsilon is None else self.epsilon
        if kind == GROUP:
            self._check_group_objective_settings()
            self._check_whole_groups()
        super().__post_init__()
        check_vllm_settings(self)
        if self.fp32_anchor_passes:  # None: the trainer's rule (fp32_anchor_passes_default), by the weights it gets
            if kind != GROUP:
                raise ValueError(
                    f"fp32_anchor_passes=true applies to the group objectives, whose anchor u is a difference of "
                    f"log-prob sums; algorithm={algo!r} has none: unset fp32_anchor_passes"
                )
            if not (self.bf16 or self.fp16):
                raise ValueError(
                    "fp32_anchor_passes=true without bf16/fp16: every pass is fp32 already; unset fp32_anchor_passes"
                )
        if self.cast_lm_head_to_fp32 is None:  # after TRL resolved bf16's default
            self.cast_lm_head_to_fp32 = kind == GROUP and bool(self.bf16 or self.fp16)
            self._cast_lm_head_by_default = True  # the trainer may turn a default off (LoRA on tied embeddings)
        if self.use_transformers_continuous_batching and (self.bf16 or self.fp16):
            # TRL 1.16 casts the whole model to bf16/fp16 in place before continuous-batching generation and never
            # back: the fp32 master weights would be lost and most AdamW updates rounded away (docs/numerics.md).
            raise ValueError(
                "use_transformers_continuous_batching=True with bf16/fp16: TRL casts the model's weights to "
                "bf16/fp16 in place for that generation and never back, losing the fp32 master weights; set "
                "use_transformers_continuous_batching=False (fast_generation or use_vllm for fast sampling)"
            )

    @classmethod
    def from_grpo_config(cls, config: GRPOConfig, **overrides) -> APOConfig:
        """An ``APOConfig`` holding every setting of a TRL ``GRPOConfig`` as it stands (``loss_type``,
        ``importance_sampling_level`` and ``epsilon`` included, so TRL's defaults, not :data:`TRL_ALGORITHMS`'),
        with ``algorithm="grpo"`` unless ``overrides`` say otherwise: ``APOTrainer(args=GRPOConfig(...))`` then runs
        as ``GRPOTrainer`` does. ``generation_batch_size`` is left to be derived again from ``steps_per_generation``
        (TRL's ``__post_init__`` has set both, and refuses both when given)."""
        values = {f.name: getattr(config, f.name) for f in dataclasses.fields(GRPOConfig) if f.init}
        values["generation_batch_size"] = None
        # TRL's False is its default, not a choice: left to APOConfig's rule (on for apo/adpo under bf16/fp16)
        values["cast_lm_head_to_fp32"] = config.cast_lm_head_to_fp32 or None
        return cls(**{**values, "algorithm": "grpo", **overrides})

    @property
    def optimizer_steps_per_rollout(self) -> int:
        """Optimizer steps each rollout feeds: ``steps_per_generation / gradient_accumulation_steps`` mini-batch steps
        per pass, times ``num_iterations`` passes (at least 1: a step may also span several rollouts)."""
        per_pass = max(1, self.steps_per_generation // self.gradient_accumulation_steps)
        return per_pass * self.num_iterations

    def _apply_updates_per_rollout(self) -> None:
        """``updates_per_rollout = k`` -> ``steps_per_generation = k * gradient_accumulation_steps``: TRL generates
        ``k`` optimizer steps' worth of completions at once and cuts them into ``k`` mini-batches of whole groups,
        so the policy that takes step ``j`` (0-based) of a rollout is ``j`` optimizer steps newer than the one that
        sampled it. ``num_iterations = m`` repeats the ``k`` mini-batches ``m`` times (epochs)."""
        for name in ("num_iterations", "gradient_accumulation_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        k = self.updates_per_rollout
        if k is not None:
            if isinstance(k, bool) or not isinstance(k, int) or k < 1:
                raise ValueError(f"updates_per_rollout must be an integer >= 1 or None, got {k!r}")
            want = k * self.gradient_accumulation_steps
            if self.steps_per_generation not in (None, want):
                raise ValueError(
                    f"updates_per_rollout={k} means steps_per_generation={want} (k x gradient_accumulation_steps="
                    f"{self.gradient_accumulation_steps}), but steps_per_generation={self.steps_per_generation}: "
                    "set only one of them"
                )
            if self.generation_batch_size is not None:
                raise ValueError(
                    f"updates_per_rollout={k} sets the rollout size; unset generation_batch_size "
                    f"({self.generation_batch_size})"
                )
            self.steps_per_generation = want
        spg = self.steps_per_generation or self.gradient_accumulation_steps
        off_policy = self.num_iterations > 1 or spg > self.gradient_accumulation_steps
        G = self.num_generations
        # With updates_per_rollout every algorithm keeps groups whole (so that algorithms compared in one study see
        # the same mini-batches); TRL's own steps_per_generation keeps TRL's behaviour for its losses (apo/adpo
        # always need whole groups: _check_whole_groups).
        if k is not None and off_policy and G and self.per_device_train_batch_size % G != 0:
            raise ValueError(
                f"several optimizer steps per rollout (updates_per_rollout={k}, steps_per_generation={spg}, "
                f"num_iterations={self.num_iterations}) need whole groups in every mini-batch: "
                f"per_device_train_batch_size ({self.per_device_train_batch_size}) must be a multiple of "
                f"num_generations ({G}): use per_device_train_batch_size="
                f"{_next_multiple(self.per_device_train_batch_size, G)}"
            )

    @property
    def weight_clip(self) -> tuple[float, float] | None:
        """``(w_min, w_max)`` of Eq. 24 (:func:`apo.algorithms.weight_clip_of`)."""
        return weight_clip_of(self.weight_clip_min, self.weight_clip_max)

    def schedule_params(self) -> dict:
        """Keyword arguments of :func:`apo.make_alpha_schedule` for ``alpha_schedule``."""
        return schedule_params(self)

    def _check_trl_loss(self) -> None:
        """The ``loss_type`` / ``importance_sampling_level`` pair of a TRL-run algorithm is one TRL runs (TRL itself
        finds an unknown name only inside the first loss)."""
        if self.loss_type not in TRL_LOSS_TYPES:
            raise ValueError(f"unknown loss_type {self.loss_type!r}; valid: {list(TRL_LOSS_TYPES)}")
        if self.importance_sampling_level not in IMPORTANCE_SAMPLING_LEVELS:
            raise ValueError(
                f"unknown importance_sampling_level {self.importance_sampling_level!r}; "
                f"valid: {list(IMPORTANCE_SAMPLING_LEVELS)}"
            )
        if self.loss_type == "vespo" and self.importance_sampling_level == "sequence":
            raise ValueError(
                "loss_type='vespo' forms its own sequence-level weights and ignores importance_sampling_level="
                "'sequence': use importance_sampling_level='token'"
            )

    def _check_apo_fields(self) -> None:
        def choice(name, valid):
            if getattr(self, name) not in valid:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}; valid: {list(valid)}")

        algorithm = get_algorithm(self.algorithm)  # an unknown name, or a path that does not import, raises
        choice("truncated_completions", TRUNCATION_POLICIES)
        APOSettings(**{f.name: getattr(self, f.name) for f in dataclasses.fields(APOSettings)}).validate()
        if self.weight_clip is not None and "weight_clip_min" not in algorithm.keys:
            raise ValueError(
                f"weight_clip_min/weight_clip_max apply to algorithm={_either(readers('weight_clip_min'))} only, "
                f"not {self.algorithm!r}: unset them"
            )
        if self.alpha_schedule != "fixed" and not algorithm.has_alpha_schedule:
            raise ValueError(
                f"alpha_schedule={self.alpha_schedule!r} needs algorithm={_either(readers('alpha_schedule'))} "
                f"(algorithm={self.algorithm!r} has no alpha); use alpha_schedule='fixed'"
            )
        if algorithm.settings is None:  # a group objective by import path: its settings are objective_kwargs
            if self.objective_kwargs is not None and not isinstance(self.objective_kwargs, dict):
                raise ValueError(f"objective_kwargs must be a mapping, got {self.objective_kwargs!r}")
            algorithm.check_objective_kwargs(self.objective_kwargs or {})
        elif self.objective_kwargs:
            raise ValueError(
                f"objective_kwargs is read for a group objective given by import path, not algorithm="
                f"{self.algorithm!r}, whose settings are keys of their own ({', '.join(algorithm.keys)}): unset it"
            )
        if self.num_generations is None or self.num_generations < 2:
            raise ValueError(
                f"num_generations must be >= 2 (a group of completions per prompt), got {self.num_generations}: "
                "use num_generations=2 or more"
            )

    def _check_group_objective_settings(self) -> None:
        algo = self.algorithm
        rejected = {
            "beta": (
                self.beta != 0.0,
                "APO/ADPO anchor to pi_old; a KL penalty to a reference model is not part of "
                "the objective: set beta=0",
            ),
            "top_entropy_quantile": (
                self.top_entropy_quantile < 1.0,
                "token masking has no meaning for a sequence-level objective: set top_entropy_quantile=1.0",
            ),
            "off_policy_mask_threshold": (self.off_policy_mask_threshold is not None, "unset it"),
            "entropy_coef": (
                self.entropy_coef != 0.0 or self.use_adaptive_entropy,
                "set entropy_coef=0 and use_adaptive_entropy=False",
            ),
            "multi_objective_aggregation": (
                self.multi_objective_aggregation != "sum_then_normalize",
                "APO's target is built from the weighted reward sum: use 'sum_then_normalize'",
            ),
            "mask_truncated_completions": (
                self.mask_truncated_completions,
                "a masked completion keeps u = 0 but stays in the candidate set and the target; it is not dropped: "
                "set mask_truncated_completions=False",
            ),
            "load_best_model_at_end": (
                self.load_best_model_at_end,
                "checkpoints are staged and renamed, which best-checkpoint tracking does not follow: set it False",
            ),
            "scale_rewards": (
                self.scale_rewards not in ("group", True),
                "APO standardises rewards within each group (Eq. 4): use scale_rewards='group'",
            ),
        }
        for name, (bad, fix) in rejected.items():
            if bad:
                raise ValueError(f"algorithm={algo!r} does not support {name}={getattr(self, name)!r}: {fix}")
        if self.vllm_importance_sampling_correction:
            if self.use_vllm:
                logger.warning(
                    "algorithm=%r: vllm_importance_sampling_correction is switched off. APO's divergence is over the "
                    "explicit candidate set and anchors to trainer-side log-probs of the rollout parameters, so no "
                    "importance-sampling correction applies.",
                    algo,
                )
            self.vllm_importance_sampling_correction = False

    def _check_whole_groups(self) -> None:
        """Whole groups in every train and evaluation micro-batch, and groups of at least 2 in evaluation (checked
        whenever evaluation is configured: ``eval_strategy``, ``do_eval`` or ``eval_on_start``)."""
        G = self.num_generations
        algo = self.algorithm
        if self.per_device_train_batch_size % G != 0:
            raise ValueError(
                f"algorithm={algo!r} needs whole groups in every micro-batch on every process: "
                f"per_device_train_batch_size ({self.per_device_train_batch_size}) must be a multiple of "
                f"num_generations ({G}), whatever the world size, steps_per_generation and gradient accumulation: "
                f"use per_device_train_batch_size={_next_multiple(self.per_device_train_batch_size, G)}"
            )
        G_eval = self.num_generations_eval
        if G_eval is not None and G_eval < 2:
            raise ValueError(
                f"algorithm={algo!r} scores each prompt's group against itself, also in evaluation: "
                f"num_generations_eval must be >= 2, got {G_eval}; unset it (= num_generations) or use 2 or more"
            )
        if self.do_eval or self.eval_strategy != "no" or self.eval_on_start:
            G_eval = G_eval or G
            if self.per_device_eval_batch_size % G_eval != 0:
                raise ValueError(
                    f"algorithm={algo!r} needs whole groups in every evaluation batch: per_device_eval_batch_size "
                    f"({self.per_device_eval_batch_size}) must be a multiple of num_generations_eval ({G_eval}): "
                    f"use per_device_eval_batch_size={_next_multiple(self.per_device_eval_batch_size, G_eval)}"
                )


def _either(names: tuple[str, ...]) -> str:
    """``'apo'``, or ``'apo' or 'adpo'``: the algorithms that read a setting, as a message names them."""
    return " or ".join(repr(n) for n in names)


def _next_multiple(n: int, k: int) -> int:
    """The smallest multiple of ``k`` that is ``>= n`` (and ``>= k``)."""
    return max(k, -(-n // k) * k)
