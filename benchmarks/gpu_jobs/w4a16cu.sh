#!/usr/bin/env bash
# Issue 15, the CUDA plugin's tensor-core W4A16 GEMV (one H200, <= 9 minutes): build the
# plugin's CUDA kernels (JIT, nvcc, sm_90) and run their GPU tests; the graph-timed GEMV
# micro-benchmark (both layouts, every launch plan, the Triton default and bf16 F.linear at the
# four 8B projections, 1 row); then gpu-8b-b1 W4A16 with the default (the CUDA GEMV on the
# GPTQ tensors as loaded; a CUDA-only trace after it: --timeline), with VLLM_CUDA_WNA16_PACK=1,
# with VLLM_CUDA_WNA16_KERNEL=triton, and bf16, in the same run. All logs come back as
# $OUT/w4a16cu.tgz.
# Needs nothing carried (the tree is installed under /tmp/vccu; the kernel build is cached under
# VLLM_CACHE_ROOT=/tmp/vccache, shared by the tests, the benchmark and the engines).
# Knobs: W4A16CU_PHASES (default "kernel e2e"; "tests" instead of "kernel" skips the
# micro-benchmark), W4A16CU_ROWS (default 1), W4A16CU_BUDGET_S. Writes "$OUT/w4a16cu/".
set -x
D="${OUT:?OUT must be set}/w4a16cu"
mkdir -p "$D"
export PYTHONUNBUFFERED=1 VLLM_CACHE_ROOT=/tmp/vccache
DEADLINE=$(( $(date +%s) + ${W4A16CU_BUDGET_S:-540} ))
STEP_TAG=W4A16CU STEP_TAIL=20
. "$(dirname "$0")/steps.sh"   # step NAME LIMIT_S COMMAND...; install_tree DIR
install_tree /tmp/vccu
phases=" ${W4A16CU_PHASES:-kernel e2e} "
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu --format=csv > "$D/gpu.txt" 2>&1
if [[ $phases == *" kernel "* || $phases == *" tests "* ]]; then
    step build 240 python3 -c "
import time; t = time.perf_counter()
from vllm_core_cuda.kernels import build_error
print('build_error:', build_error(), 'seconds:', round(time.perf_counter() - t, 1))"
    step tests 240 python3 -m pytest -q -p no:cacheprovider platforms/cuda/tests/test_wna16_mma.py \
        platforms/cuda/tests/test_gpu_quantization.py -k "mma or w4a16"
fi
if [[ $phases == *" kernel "* ]]; then
    step micro 150 python3 benchmarks/wna16_mma_gpu.py --rows "${W4A16CU_ROWS:-1}" \
        --out "$D/mma.jsonl"
fi
if [[ $phases == *" e2e "* ]]; then
    # the default (the CUDA GEMV on the GPTQ tensors as loaded), its packed layout, Triton, bf16
    step b1-w4a16-default 70 python3 benchmarks/throughput_gpu.py --workload gpu-8b-b1 \
        --systems vllm-core --quantization gptq --timeline "$D/b1-w4a16-default-gaps.txt" \
        --output "$D/throughput.jsonl"
    VLLM_CUDA_WNA16_PACK=1 step b1-w4a16-packed 60 python3 benchmarks/throughput_gpu.py \
        --workload gpu-8b-b1 --systems vllm-core --quantization gptq --output "$D/throughput.jsonl"
    VLLM_CUDA_WNA16_KERNEL=triton step b1-w4a16-triton 60 python3 benchmarks/throughput_gpu.py \
        --workload gpu-8b-b1 --systems vllm-core --quantization gptq --output "$D/throughput.jsonl"
    step b1-bf16 55 python3 benchmarks/throughput_gpu.py --workload gpu-8b-b1 \
        --systems vllm-core --output "$D/throughput.jsonl"
fi
tail -n 3 "$D/tests.log" 2>/dev/null
grep -h 'summary' "$D/mma.jsonl" 2>/dev/null
grep -h '"kind": "summary"' "$D/throughput.jsonl" 2>/dev/null
# everything back as one file (the device returns at most 8)
tar czf "$OUT/w4a16cu.tgz" -C "$OUT" w4a16cu && rm -rf "$D"
exit 0
