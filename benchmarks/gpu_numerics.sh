#!/usr/bin/env bash
# The numerics measurements that need a GPU (docs/numerics.md, "Left for a GPU"), about 10 minutes on one H100:
#   bash benchmarks/gpu_numerics.sh [MODEL]     # MODEL: smollm2 (default) or a local Qwen3-1.7B folder
# 1. anchor: the error of u, GSPO's and GRPO's ratios against fp64 for 16 completions of 1,024 tokens, 1, 2 and 4
#    steps after the rollout, through TRL's fused LM head, which on a GPU folds bf16 logit tiles with its Triton
#    kernel (the CPU path folds them in torch), in bf16 and in fp16 autocast, with and without the fp32 LM head;
# 2. cost: forward + backward time of the fp32 LM head against the bf16 one (paired ratio) and peak GPU memory;
# 3. weights: the fraction of weights moved per step, bf16 and fp16 (fp16 without a gradient scaler here);
# 4. passes: forward + backward time of the fp32 log-prob passes (fp32_anchor_passes) against autocast.
set -euo pipefail
MODEL=${1:-smollm2}
cd "$(dirname "$0")/.."
for LOW in bf16 fp16; do
  python benchmarks/numerics.py --model "$MODEL" --device cuda --low-dtype "$LOW" --tables anchor,cost,passes \
    --n 16 --length 1024 --ks 1,2,4 --repeats 10
done
python benchmarks/numerics.py --model "$MODEL" --device cuda --tables weights --steps 20 --batch 8 --batch-length 256
