#!/usr/bin/env bash
# Issue 15, the tensor-core W4A16 GEMV (VLLM_TRITON_WNA16_GEMV=tc, kernels/wna16.py) on one H200
# (nvidia-h200), from the repository root, <= 6 minutes:
#   bash benchmarks/gpu_jobs/w4a16tc.sh
# Writes every JSON line and log under "$OUT/w4a16tc/" (results.jsonl collects them). Each step
# has its own time limit, shrunk to what is left of the budget, and a failed step does not stop
# the next one. Needs nothing carried: the machine's python holds torch, transformers and triton;
# this tree is installed with --no-deps into /tmp/w4a16tc-site.
# Steps (all A/Bs in this one run, random weights of the Llama-3.1-8B shape, GPTQ layout, g128):
#   1. tests: tc against the reference in bf16 and fp16 at the 8B projections (1/5/16 rows),
#      rows alone == rows in the batch, CUDA-graph capture; the factored kernel's graph test
#   2. GEMV micro-benchmark at 1 row: tc over 18 plans vs the factored kernel's default plan vs
#      bf16 F.linear (summary: tc_vs_bf16, factored_vs_bf16, tc_vs_factored); best.json
#   3. the same at 16 rows: tc (default plan) vs the routed default (the GEMM at 16 rows)
#   4. gpu-8b-b1 decode: W4A16 default (factored), W4A16 tc with the step-2 best plan, bf16
set -x
OUT=${OUT:-/tmp/out}
D="$OUT/w4a16tc"
mkdir -p "$D"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONUNBUFFERED=1
DEADLINE=$(( $(date +%s) + ${W4A16TC_BUDGET_S:-345} ))   # the whole job stays within 6 minutes
STEP_TAG=W4A16TC
. "$(dirname "$0")/steps.sh"   # step NAME LIMIT_S COMMAND...
rm -rf /tmp/w4a16tc-site
python3 -m pip install -q --no-deps --no-build-isolation --no-compile --target /tmp/w4a16tc-site \
    . platforms/cpu platforms/cuda platforms/triton > "$D/install.log" 2>&1 || tail "$D/install.log"
export PYTHONPATH=/tmp/w4a16tc-site${PYTHONPATH:+:$PYTHONPATH}
python3 -c 'import torch, triton; print(torch.__version__, triton.__version__,
            torch.cuda.get_device_name(0))' | tee "$D/torch.log"

# 1. correctness on the device (bf16 is not run by the CPU interpreter)
step tests 75 python3 -m pytest -q -p no:cacheprovider platforms/triton/tests/test_quant_kernels.py \
    -k "test_tc_ or 8b_shapes or split_k or tiles_variable"
# 2. batch-1 GEMV sweep: tc plans vs the factored default vs bf16 F.linear, one process
step gemv_rows1 110 python3 benchmarks/wna16_gemv_gpu.py --rows 1 --kernels factored,tc \
    --quick-kernels factored --out "$D/gemv.jsonl" --best "$D/best.json"
# 3. 16 rows: tc vs what serves 16 rows today (the GEMM)
step gemv_rows16 40 python3 benchmarks/wna16_gemv_gpu.py --rows 16 --kernels tc,routed --quick \
    --out "$D/gemv.jsonl"
# 4. gpu-8b-b1 decode, the same run: W4A16 factored (default), W4A16 tc (best plan), bf16
tc_tiles=$(python3 -c "import json; print(json.load(open('$D/best.json')).get('tc', ''))" 2>/dev/null)
echo "=== W4A16TC tc best plan: '${tc_tiles}' (empty: the default plan)"
step b1-w4a16-factored 60 python3 benchmarks/throughput_gpu.py --workload gpu-8b-b1 \
    --systems vllm-core --quantization gptq --output "$D/throughput.jsonl"
VLLM_TRITON_WNA16_GEMV=tc VLLM_TRITON_WNA16_GEMV_TILES=$tc_tiles \
    step b1-w4a16-tc 60 python3 benchmarks/throughput_gpu.py --workload gpu-8b-b1 \
    --systems vllm-core --quantization gptq --output "$D/throughput.jsonl"
step b1-bf16 55 python3 benchmarks/throughput_gpu.py --workload gpu-8b-b1 --systems vllm-core \
    --output "$D/throughput.jsonl"
echo "=== W4A16TC DONE $(date -u +%T)"
grep -h 'summary' "$D/gemv.jsonl" 2>/dev/null
grep -h '"kind": "summary"' "$D/throughput.jsonl" 2>/dev/null
exit 0
