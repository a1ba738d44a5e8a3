#!/usr/bin/env bash
# Issue 20: the Llama-3.1-70B shape (random bf16 weights) over several H200s, from the repo root.
#
#   four-GPU host (the issue's run):   ISSUE20_LAYOUTS="4x1 2x2" bash benchmarks/gpu_jobs/issue20.sh
#   two-GPU host (what it allows):     ISSUE20_LAYOUTS="2x1 1x2" bash benchmarks/gpu_jobs/issue20.sh
#
# Each layout TPxPP runs gpu-70b (256 x 512/256); the first layout also runs the HF peer in the
# same driver run (device_map="auto" over every visible GPU, static generate on
# ISSUE20_HF_REQUESTS requests, so its summary line has ratio_vs_hf-static) and gpu-70b-b1. The summary lines carry the roofline of all the GPUs of the layout
# (bandwidth and matmul rate measured on one, times their number), KV blocks and start-up time.
# Everything lands under "$OUT/issue20/" (results.jsonl, one log per step).
set -x
out="${OUT:?OUT must be set}/issue20"
mkdir -p "$out"
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
layouts=${ISSUE20_LAYOUTS:-2x1}
hf_requests=${ISSUE20_HF_REQUESTS:-16}
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$out/gpus.txt"
first=1
for layout in $layouts; do
    tp=${layout%x*}; pp=${layout#*x}
    systems=vllm-core; [ $first = 1 ] && [ "$hf_requests" -gt 0 ] && systems=vllm-core,hf-static
    echo "=== ISSUE20 tp=$tp pp=$pp gpu-70b $systems"
    timeout -k 10 ${ISSUE20_STEP_S:-300} python3 benchmarks/throughput_gpu.py --workload gpu-70b \
        --systems "$systems" --peer-requests "$hf_requests" --hf-batch-size "$hf_requests" \
        --timeout 240 -tp "$tp" -pp "$pp" --output "$out/results.jsonl" \
        > "$out/tp${tp}_pp${pp}.log" 2>&1
    echo "=== ISSUE20 tp=$tp pp=$pp rc=$?"; tail -5 "$out/tp${tp}_pp${pp}.log"
    if [ $first = 1 ]; then
        echo "=== ISSUE20 tp=$tp pp=$pp gpu-70b-b1"
        timeout -k 10 ${ISSUE20_STEP_S:-300} python3 benchmarks/throughput_gpu.py \
            --workload gpu-70b-b1 --systems vllm-core -tp "$tp" -pp "$pp" \
            --output "$out/results.jsonl" > "$out/tp${tp}_pp${pp}_b1.log" 2>&1
        echo "=== ISSUE20 b1 rc=$?"; tail -5 "$out/tp${tp}_pp${pp}_b1.log"
    fi
    first=0
done
cat "$out/results.jsonl"
exit 0
