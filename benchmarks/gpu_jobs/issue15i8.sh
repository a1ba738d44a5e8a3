#!/usr/bin/env bash
# Issue 15 (online INT8, --quantization int8) on one H200 (nvidia-h200), from the repository
# root, <= 6 minutes:
#   bash benchmarks/gpu_jobs/issue15i8.sh
# Writes every JSON line and log under "$OUT/issue15i8/". Each step has its own time limit and a
# failed step does not stop the next one. Needs nothing carried: the machine's python holds
# torch, transformers and triton; this tree is installed with --no-deps into /tmp/issue15i8-site.
# A/Bs (all in this run, vllm-core only, random weights of the Llama-3.1-8B shape):
#   gpu-8b: bf16 vs online INT8 W8A8 (--quantization int8: per-channel int8 weights made at
#   load, dynamic per-token activations, torch._int_mm); gpu-8b-b1 decode: bf16 vs INT8.
set -x
OUT=${OUT:-/tmp/out}
D="$OUT/issue15i8"
mkdir -p "$D"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONUNBUFFERED=1
DEADLINE=$(( $(date +%s) + ${ISSUE15I8_BUDGET_S:-340} ))   # the whole job within 6 minutes
STEP_TAG=ISSUE15I8
. "$(dirname "$0")/steps.sh"   # step NAME LIMIT_S COMMAND...
rm -rf /tmp/issue15i8-site
python3 -m pip install -q --no-deps --no-build-isolation --no-compile --target /tmp/issue15i8-site \
    . platforms/cpu platforms/cuda platforms/triton > "$D/install.log" 2>&1 || tail "$D/install.log"
export PYTHONPATH=/tmp/issue15i8-site${PYTHONPATH:+:$PYTHONPATH}
python3 -c 'import torch; print(torch.__version__, torch.cuda.get_device_name(0))' | tee "$D/torch.log"

# 1. torch._int_mm against the INT8 reference on the GPU (the kernel online int8 runs)
step kernel_tests 60 python3 -m pytest -q -p no:cacheprovider platforms/triton/tests/test_quant_kernels.py -k "int_mm"
# 2. batch throughput: bf16 vs online INT8 W8A8
step 8b-bf16 80 python3 benchmarks/throughput_gpu.py --workload gpu-8b --systems vllm-core \
    --output "$D/throughput.jsonl"
step 8b-int8 90 python3 benchmarks/throughput_gpu.py --workload gpu-8b --systems vllm-core \
    --quantization int8 --output "$D/throughput.jsonl"
# 3. batch-1 decode: bf16 vs online INT8
step b1-bf16 50 python3 benchmarks/throughput_gpu.py --workload gpu-8b-b1 --systems vllm-core \
    --output "$D/throughput.jsonl"
step b1-int8 60 python3 benchmarks/throughput_gpu.py --workload gpu-8b-b1 --systems vllm-core \
    --quantization int8 --output "$D/throughput.jsonl"
echo "=== ISSUE15I8 DONE $(date -u +%T)"
grep -h '"kind": "summary"' "$D/throughput.jsonl" 2>/dev/null
