#!/usr/bin/env bash
# Issue 15 (quantization) on one H200 (nvidia-h200), from the repository root, <= 8 minutes:
#   bash benchmarks/gpu_jobs/issue15.sh
# Writes every JSON line and log under "$OUT/issue15/". Each step has its own time limit and a
# failed step does not stop the next one. Needs nothing carried: the machine's python holds
# torch, transformers and triton; this tree is installed with --no-deps into /tmp/issue15-site.
# A/Bs (all in this run, vllm-core only, random weights of the Llama-3.1-8B shape):
#   gpu-8b-b1 decode: bf16 vs W4A16 (GPTQ layout, group 128; Triton fused-dequant GEMV)
#   gpu-8b: bf16 vs FP8 W8A8 (online --quantization fp8; torch._scaled_mm), and bf16 KV vs
#   --kv-cache-dtype fp8 (kv_blocks and throughput)
set -x
OUT=${OUT:-/tmp/out}
D="$OUT/issue15"
mkdir -p "$D"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONUNBUFFERED=1
DEADLINE=$(( $(date +%s) + ${ISSUE15_BUDGET_S:-470} ))   # the whole job stays within 8 minutes
STEP_TAG=ISSUE15
. "$(dirname "$0")/steps.sh"   # step NAME LIMIT_S COMMAND...
rm -rf /tmp/issue15-site
python3 -m pip install -q --no-deps --no-build-isolation --no-compile --target /tmp/issue15-site \
    . platforms/cpu platforms/cuda platforms/triton > "$D/install.log" 2>&1 || tail "$D/install.log"
export PYTHONPATH=/tmp/issue15-site${PYTHONPATH:+:$PYTHONPATH}
python3 -c 'import torch; print(torch.__version__, torch.cuda.get_device_name(0))' | tee "$D/torch.log"

# 1. kernels: Triton W4A16/W8A16 against the reference (GPU shapes, bf16), the 8B projections,
#    CUDA-graph replay; FP8 torch._scaled_mm and INT8 torch._int_mm against their references
step kernel_tests 80 python3 -m pytest -q -p no:cacheprovider platforms/triton/tests/test_quant_kernels.py \
    "platforms/triton/tests/test_kernels.py::test_paged_attention_reads_an_fp8_cache"
# 2. batch-1 decode: bf16 vs W4A16 (bar: >= 2.5x decode tok/s)
step b1-bf16 60 python3 benchmarks/throughput_gpu.py --workload gpu-8b-b1 --systems vllm-core \
    --output "$D/throughput.jsonl"
step b1-w4a16 70 python3 benchmarks/throughput_gpu.py --workload gpu-8b-b1 --systems vllm-core \
    --quantization gptq --output "$D/throughput.jsonl"
# 3. batch throughput: bf16 vs FP8 W8A8 (bar: >= 1.3x), then FP8 KV cache (2x kv_blocks, < 5% cost)
step 8b-bf16 80 python3 benchmarks/throughput_gpu.py --workload gpu-8b --systems vllm-core \
    --output "$D/throughput.jsonl"
step 8b-fp8 90 python3 benchmarks/throughput_gpu.py --workload gpu-8b --systems vllm-core \
    --quantization fp8 --output "$D/throughput.jsonl"
step 8b-kvfp8 80 python3 benchmarks/throughput_gpu.py --workload gpu-8b --systems vllm-core \
    --kv-cache-dtype fp8 --output "$D/throughput.jsonl"
# 4. whole engine with quantized checkpoints (CUDA graphs) and FP8 KV, if budget remains
step engine_tests 90 python3 -m pytest -q -p no:cacheprovider platforms/cuda/tests/test_gpu_quantization.py
echo "=== ISSUE15 DONE $(date -u +%T)"
grep -h '"kind": "summary"' "$D/throughput.jsonl" 2>/dev/null
