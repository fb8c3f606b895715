#!/usr/bin/env bash
# Seconds per optimizer step on one H100/H200: stock TRL GRPOTrainer vs APOTrainer (apo, grpo; fast generation on/off)
# on the Qwen3-1.7B and SmolLM2-135M shapes, 64 completions x 256 tokens per step, bf16. Ends within 8 minutes.
#
# Needs the wheels the GPU image lacks (trl, datasets, dill, multiprocess) in .whl/ at the repository root and the
# device run's $OUT; see docs/performance.md ("Measuring on a GPU") for the download command and the call.
# Output: $OUT/step_time.txt (everything), $OUT/step_time.jsonl (one JSON line per run), $OUT/env.txt.
set -uo pipefail
OUT=${OUT:-/tmp/step_time_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
LOG="$OUT/step_time.txt"
start=$(date +%s)

# 1. Packages: the carried wheels into /tmp/site, this repository without its dependencies (torch, transformers,
#    accelerate are the image's: torch 2.11, transformers 5.17 when last read).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed: are the wheels in .whl/ and was .whl carried?" | tee "$LOG"; exit 1; }
export PYTHONPATH=/tmp/site
python3 -m pip install -q --no-deps --no-build-isolation --no-index --target /tmp/site . >/dev/null 2>&1 \
    || export PYTHONPATH="/tmp/site:$PWD/src"

{
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
    python3 - <<'EOF'
import importlib
for name in ("torch", "transformers", "trl", "accelerate", "datasets", "pyarrow", "huggingface_hub", "apo"):
    try:
        m = importlib.import_module(name)
        print(name, getattr(m, "__version__", "?"), getattr(m, "__file__", ""))
    except Exception as err:  # report and go on: the step-time run says what is fatal
        print(name, "IMPORT FAILED:", type(err).__name__, err)
import torch
print("cuda", torch.version.cuda, torch.cuda.get_device_name(), "capability", torch.cuda.get_device_capability())
from apo import APOTrainer  # noqa: F401  (the trainer module checks the trl version)
from transformers import CompileConfig, GenerationConfig
g = GenerationConfig(max_new_tokens=4, cache_implementation="static", max_cache_len=64, disable_compile=False,
                     compile_config=CompileConfig())
print("generation config fields ok:", g.cache_implementation, g.max_cache_len, g.disable_compile)
EOF
} 2>&1 | tee "$OUT/env.txt" | tee "$LOG"
echo "setup took $(( $(date +%s) - start )) s" | tee -a "$LOG"

# 2. The runs. Each prints one JSON line per variant as it finishes, then a table; `timeout` keeps the total under
#    8 minutes even if compilation is slower than expected (what finished is already in the log).
COMMON=(--completions 64 --max-tokens 256 --prompt-tokens 64 --num-generations 8 --micro-batch 16 --warmup 1
        --json "$OUT/step_time.jsonl")
run() {  # run SECONDS ARGS...: one step_time.py invocation, its output appended to the log
    local limit=$1; shift
    echo; echo "=== step_time.py $* (limit ${limit} s, $(( $(date +%s) - start )) s elapsed)"
    timeout --signal=INT --kill-after=15 "$limit" python3 benchmarks/step_time.py "${COMMON[@]}" "$@" 2>&1 \
        | grep -v -E "FutureWarning|warnings.warn|^\s*$"
    echo "=== exit ${PIPESTATUS[0]} after $(( $(date +%s) - start )) s"
}
{
    # The targets: Qwen3-1.7B shape, all five variants (about 4.5 minutes expected: 3 eager variants x 3 steps x ~11 s,
    # 2 fast variants x (~45 s compile + 3 steps)).
    run 290 --shape qwen3-1.7b --steps 2 --variants stock,grpo,grpo-fast,apo,apo-fast
    # SmolLM2-135M shape: stock vs apo, fast on/off (the decode loop dominates even more at this size).
    left=$(( 465 - ($(date +%s) - start) ))
    if [ "$left" -gt 60 ]; then
        run "$left" --shape smollm2-135m --steps 2 --variants stock,apo,apo-fast
    else
        echo "skipped smollm2-135m: ${left} s left"
    fi
} 2>&1 | tee -a "$LOG"
echo "total $(( $(date +%s) - start )) s" | tee -a "$LOG"
