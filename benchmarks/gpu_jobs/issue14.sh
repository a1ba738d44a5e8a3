#!/usr/bin/env bash
# Issue 14 on the two-H200 host (nvidia-h200-x2), from the repository root, <= 8 minutes:
#   bash benchmarks/gpu_jobs/issue14.sh
# Writes every JSON line and log under "$OUT/issue14/". Each step has its own time limit and a
# failed step does not stop the next one. Needs nothing carried: the machine's python holds
# torch, transformers and triton; this tree is installed with --no-deps into /tmp/issue14-site.
set -x
OUT=${OUT:-/tmp/out}
D="$OUT/issue14"
mkdir -p "$D"
# NVLink multicast stays off (the host's rule); the graph-safe all-reduce never uses it.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
DEADLINE=$(( $(date +%s) + ${ISSUE14_BUDGET_S:-470} ))   # the whole job stays within 8 minutes
STEP_TAG=ISSUE14
. "$(dirname "$0")/steps.sh"   # step NAME LIMIT_S COMMAND...
rm -rf /tmp/issue14-site
python3 -m pip install -q --no-deps --no-build-isolation --no-compile --target /tmp/issue14-site \
    . platforms/cpu platforms/cuda platforms/triton > "$D/install.log" 2>&1 || tail "$D/install.log"
export PYTHONPATH=/tmp/issue14-site${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi topo -m > "$D/topo.log" 2>&1
python3 -c 'import torch; print(torch.__version__, torch.cuda.device_count())' | tee "$D/torch.log"

# 1. the graph-safe all-reduce: latency against NCCL (eager and in graphs), then the GPU tests
step allreduce 40 python3 benchmarks/allreduce_gpu.py
step gpu_tests 110 python3 -m pytest -x -q -m gpu -p no:cacheprovider \
    platforms/cuda/tests/test_fast_all_reduce_gpu.py -s
# 2. batch-1 decode (the TP bar: >= 1.6x TP=1 with graphs + the fast all-reduce)
for layout in "-tp 1" "-tp 2"; do
    name="b1${layout// /}"
    step "$name" 55 python3 benchmarks/throughput_gpu.py --workload gpu-8b-b1 \
        --systems vllm-core $layout --output "$D/throughput.jsonl"
done
# 3. greedy parity on the 8B shape (writes ~16 GB of random safetensors once)
step parity 120 python3 benchmarks/parallel_parity.py --layouts tp2,pp2 \
    --model-dir /tmp/issue14-8b --requests 4 --max-tokens 32
# 4. throughput of the batch workload, and batch-1 with two pipeline stages
for layout in "-tp 1" "-tp 2" "-pp 2"; do
    name="8b${layout// /}"
    step "$name" 50 python3 benchmarks/throughput_gpu.py --workload gpu-8b \
        --systems vllm-core $layout --output "$D/throughput.jsonl"
done
step b1-pp2 50 python3 benchmarks/throughput_gpu.py --workload gpu-8b-b1 \
    --systems vllm-core -pp 2 --output "$D/throughput.jsonl"
echo "=== ISSUE14 DONE $(date -u +%T)"
