#!/usr/bin/env bash
# Issue 17 (multi-LoRA) on one H200, from the repository root, <= 8 minutes:
#   bash benchmarks/gpu_jobs/issue17.sh
# Writes every JSON line and log under "$OUT/issue17/". Each step has its own time limit and a
# failed step does not stop the next one. Needs nothing carried: the machine's python holds
# torch, transformers, triton and peft; this tree is installed with --no-deps.
set -x
OUT=${OUT:-/tmp/out}
D="$OUT/issue17"
mkdir -p "$D"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONUNBUFFERED=1
DEADLINE=$(( $(date +%s) + ${ISSUE17_BUDGET_S:-480} ))
STEP_TAG=ISSUE17 STEP_TAIL=30
. "$(dirname "$0")/steps.sh"   # step NAME LIMIT_S COMMAND...
if ! python3 -c 'import vllm_core_triton.kernels.lora' 2>/dev/null; then
    python3 -m pip install -q --no-deps --no-build-isolation --no-compile --target /tmp/issue17-site \
        . platforms/cpu platforms/cuda platforms/triton > "$D/install.log" 2>&1 || tail "$D/install.log"
    export PYTHONPATH=/tmp/issue17-site${PYTHONPATH:+:$PYTHONPATH}
fi
python3 -c 'import torch, peft; print(torch.__version__, peft.__version__)' | tee "$D/versions.log"

# 1. the SGMV kernels on the GPU against a per-token loop (fp32 and bf16)
step kernel_tests 45 python3 -m pytest -x -q -p no:cacheprovider \
    platforms/triton/tests/test_kernels.py -k lora
# 2. throughput, 8B shape, bf16: base gpu-8b vs 256 requests over 8 rank-16 adapters (all
#    resident; bar >= 0.80 of base) vs 16 adapters with --max-loras 4 (swapping), same run
#    (the Triton SGMV kernels; the torch "dense" path for comparison)
step throughput 330 python3 benchmarks/lora_throughput.py --shape gpu-8b \
    --systems base,lora-resident,lora-swap,lora-resident-dense \
    --output "$D/lora_throughput.jsonl"
# 3. engine parity with HF + PEFT on the GPU (CUDA graphs + async scheduling, eager, swapping)
step gpu_tests 100 python3 -m pytest -x -q -m gpu -p no:cacheprovider \
    platforms/cuda/tests/test_gpu_lora.py
echo "=== ISSUE17 DONE"
