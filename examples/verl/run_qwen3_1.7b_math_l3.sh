#!/usr/bin/env bash
# APO on Qwen3-1.7B, MATH level 3, with verl 0.9.1 (the paper's Sec. 7.1 setup). See examples/verl/README.md.
#
#   MODE=group bash examples/verl/run_qwen3_1.7b_math_l3.sh   # exact APO group loss (default)
#   MODE=adv   bash examples/verl/run_qwen3_1.7b_math_l3.sh   # on-policy APO advantages + verl's PPO loss
#
# Needs: pip install 'apo[verl]' (verl==0.9.1) plus verl's rollout engine (vllm) on the GPU machines, and the data
# from examples/verl/prepare_math_l3.py. Every process (driver and Ray workers) must see the same environment: the
# plug-in is loaded through the `verl.plugins` entry point of the installed apo package.
set -euo pipefail

MODE=${MODE:-group}                     # group | adv
MODEL=${MODEL:-Qwen/Qwen3-1.7B}
DATA_DIR=${DATA_DIR:-$HOME/data/math_l3}
N_GPUS=${N_GPUS:-8}
ALPHA_SCHEDULE=${ALPHA_SCHEDULE:-guarded}  # guarded (Eq. 19-23) | ess (Eq. 21) | fixed (alpha=ALPHA)
ALPHA=${ALPHA:-0.6}

# Paper: batch 8 prompts, gradient accumulation 16, P = 8 completions per prompt.
N=8                                     # completions per prompt (P, verl's rollout.n)
PROMPTS_PER_MICRO=8                     # prompts in one accumulation step, over all GPUs
GRAD_ACCUM=16
PROMPTS_PER_STEP=$((PROMPTS_PER_MICRO * GRAD_ACCUM))   # 128 prompts = 1024 completions per optimizer step
MICRO_PER_GPU=$((PROMPTS_PER_MICRO * N / N_GPUS))       # sequences per GPU per forward/backward
if (( MICRO_PER_GPU == 0 || MICRO_PER_GPU % N != 0 )) && [[ $MODE == group ]]; then
  echo "MODE=group needs ppo_micro_batch_size_per_gpu ($MICRO_PER_GPU) to be a multiple of n=$N: use N_GPUS in 1,2,4,8" >&2
  exit 1
fi

# The APO settings live in the actor's policy_loss section (class selected by _target_); the estimators read the
# same section through algorithm.apo, so each value is written once.
PL=actor_rollout_ref.actor.policy_loss
APO_ARGS=(
  "$PL._target_=apo.integrations.verl.config.APOPolicyLossConfig"
  "+$PL.alpha_schedule=$ALPHA_SCHEDULE"
  "+$PL.alpha=$ALPHA"
  "+$PL.alpha_min=0.35"
  "+$PL.alpha_max=0.9"
  "+$PL.alpha_ema=0.1"                  # rho
  "+$PL.baseline_ema=0.1"               # lambda
  "+$PL.reward_scale=0.5"               # s_R (initial; then running std)
  "+$PL.ess_target=0.5"                 # gamma (ess schedule)
  "+$PL.tau_anchor=0.8"
  "+$PL.beta_reward=1.0"
  "+$PL.sequence_score=sum"
  "+algorithm.apo=\${actor_rollout_ref.actor}"
  "trainer.use_v1=false"                # the v1 trainer always re-balances and re-packs advantages per token
)

if [[ $MODE == group ]]; then
  # Exact APO loss: every micro-batch holds whole groups, in rollout order (checked at every step).
  MODE_ARGS=(
    "algorithm.adv_estimator=apo_group"
    "$PL.loss_mode=apo"
    "trainer.balance_batch=false"
    "actor_rollout_ref.actor.shuffle=false"
    "actor_rollout_ref.actor.use_dynamic_bsz=false"
    "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=$MICRO_PER_GPU"
  )
elif [[ $MODE == adv ]]; then
  # On-policy APO weights as advantages, verl's own PPO loss; any batching. Exact while ratio = 1, i.e. with one
  # optimizer step per rollout (ppo_mini_batch_size = train_batch_size, ppo_epochs = 1, as here).
  MODE_ARGS=(
    "algorithm.adv_estimator=apo"
    "$PL.loss_mode=vanilla"
    "actor_rollout_ref.actor.loss_agg_mode=seq-mean-token-sum"
    "trainer.balance_batch=true"
    "actor_rollout_ref.actor.use_dynamic_bsz=true"
    "actor_rollout_ref.actor.ppo_max_token_len_per_gpu=16384"
  )
else
  echo "MODE must be group or adv, got $MODE" >&2
  exit 1
fi

python3 -m verl.trainer.main_ppo \
  data.train_files="$DATA_DIR/train.parquet" \
  data.val_files="$DATA_DIR/test.parquet" \
  data.train_batch_size=$PROMPTS_PER_STEP \
  data.max_prompt_length=512 \
  data.max_response_length=1024 \
  data.filter_overlong_prompts=true \
  data.truncation=error \
  actor_rollout_ref.model.path="$MODEL" \
  actor_rollout_ref.model.use_remove_padding=true \
  actor_rollout_ref.model.enable_gradient_checkpointing=true \
  actor_rollout_ref.actor.optim.lr=1.5e-5 \
  actor_rollout_ref.actor.optim.lr_scheduler_type=cosine \
  actor_rollout_ref.actor.optim.lr_warmup_steps=0 \
  actor_rollout_ref.actor.ppo_mini_batch_size=$PROMPTS_PER_STEP \
  actor_rollout_ref.actor.ppo_epochs=1 \
  actor_rollout_ref.actor.use_kl_loss=false \
  actor_rollout_ref.actor.entropy_coeff=0 \
  actor_rollout_ref.actor.fsdp_config.param_offload=false \
  actor_rollout_ref.actor.fsdp_config.optimizer_offload=false \
  actor_rollout_ref.rollout.name=vllm \
  actor_rollout_ref.rollout.n=$N \
  actor_rollout_ref.rollout.temperature=1.0 \
  actor_rollout_ref.rollout.tensor_model_parallel_size=1 \
  actor_rollout_ref.rollout.gpu_memory_utilization=0.6 \
  actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=$MICRO_PER_GPU \
  algorithm.use_kl_in_reward=false \
  trainer.critic_warmup=0 \
  trainer.logger='["console"]' \
  trainer.project_name=apo \
  trainer.experiment_name="qwen3_1.7b_math_l3_apo_${MODE}_${ALPHA_SCHEDULE}" \
  trainer.n_gpus_per_node=$N_GPUS \
  trainer.nnodes=1 \
  trainer.total_epochs=2 \
  trainer.save_freq=-1 \
  trainer.test_freq=10 \
  "${APO_ARGS[@]}" \
  "${MODE_ARGS[@]}" \
  "$@"
