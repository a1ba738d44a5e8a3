#!/usr/bin/env bash
# Issues 15 / 18 remainder (FP8 KV, calibrated KV scales, FP8 W8A8 speed, FP8 experts) on one
# H200 (nvidia-h200), from the repository root, <= 5 minutes:
#   bash benchmarks/gpu_jobs/issue15q.sh
# Writes every JSON line and log under "$OUT/issue15q/". Each step has its own time limit and
# a failed step does not stop the next one. Needs nothing carried: the machine's python holds
# torch, transformers and triton; this tree is installed with --no-deps into /tmp/issue15q-site.
# A/Bs (all in this run, random weights):
#   kernels: per-token FP8 quant (Triton, one launch) vs the torch reference, FP8 _scaled_mm
#            vs bf16 at the Llama-3.1-8B projections; FP8 vs bf16 experts (Qwen3-30B-A3B shape)
#   gpu-8b: bf16 vs online --quantization fp8 (bar >= 1.3x), bf16 KV vs --kv-cache-dtype fp8
#            (kv_blocks x2, cost < 5%)
set -x
OUT=${OUT:-/tmp/out}
D="$OUT/issue15q"
mkdir -p "$D"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONUNBUFFERED=1
DEADLINE=$(( $(date +%s) + ${ISSUE15Q_BUDGET_S:-290} ))   # the whole job stays within 5 minutes
STEP_TAG=ISSUE15Q
. "$(dirname "$0")/steps.sh"   # step NAME LIMIT_S COMMAND...
rm -rf /tmp/issue15q-site
python3 -m pip install -q --no-deps --no-build-isolation --no-compile --target /tmp/issue15q-site \
    . platforms/cpu platforms/cuda platforms/triton > "$D/install.log" 2>&1 || tail "$D/install.log"
export PYTHONPATH=/tmp/issue15q-site${PYTHONPATH:+:$PYTHONPATH}
python3 -c 'import torch; print(torch.__version__, torch.cuda.get_device_name(0))' | tee "$D/torch.log"

# 1. kernel tests on the GPU: fp8 KV write/read (with and without scales), per-token FP8 quant
#    and the FP8 linear through it (_scaled_mm with row-wise scales),
#    FP8 experts against the de-quantize reference (incl. the Qwen3-30B-A3B shape)
step kernel_tests 75 python3 -m pytest -q -p no:cacheprovider \
    platforms/triton/tests/test_kernels.py -k "fp8" \
    platforms/triton/tests/test_quant_kernels.py::test_per_token_quant_fp8_equals_the_reference \
    platforms/triton/tests/test_quant_kernels.py::test_fp8_scaled_mm_matches_reference \
    platforms/triton/tests/test_fused_moe_kernels.py::test_fused_moe_fp8_matches_the_dequantize_reference \
    platforms/triton/tests/test_fp8_kv_model.py
# 2. the engine: FP8 KV greedy tokens (top-5 at the first divergence), W4A16 / AWQ with graphs
step engine_tests 70 python3 -m pytest -q -p no:cacheprovider platforms/cuda/tests/test_gpu_quantization.py
# 3. kernel micro-benchmarks (peers in the same process)
step fp8_kernels 45 python3 benchmarks/fp8_kernels_gpu.py --iters 20
# 4. batch throughput: bf16 vs online FP8 W8A8 (bar >= 1.3x), then the FP8 KV cache
step 8b-bf16 70 python3 benchmarks/throughput_gpu.py --workload gpu-8b --systems vllm-core \
    --output "$D/throughput.jsonl"
step 8b-fp8 75 python3 benchmarks/throughput_gpu.py --workload gpu-8b --systems vllm-core \
    --quantization fp8 --output "$D/throughput.jsonl"
step 8b-kvfp8 70 python3 benchmarks/throughput_gpu.py --workload gpu-8b --systems vllm-core \
    --kv-cache-dtype fp8 --output "$D/throughput.jsonl"
echo "=== ISSUE15Q DONE $(date -u +%T)"
grep -h '"kind": "summary"' "$D/throughput.jsonl" 2>/dev/null
