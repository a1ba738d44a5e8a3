#!/usr/bin/env bash
# Issue 11 (one H200, <= 6 minutes): gpu-8b with the start-up heap frozen out of the garbage
# collector's reach (the default) against VLLM_FREEZE_GC_HEAP=0, each with a CUDA-only trace
# after its measured run (throughput_gpu.py --timeline: GPU busy share, gaps, top kernels),
# then gpu-8b-long once. Needs nothing carried. Writes "$OUT/gcfreeze/".
set -x
out="${OUT:?OUT must be set}/gcfreeze"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
timeout -k 10 95 python3 benchmarks/throughput_gpu.py --workload gpu-8b --systems vllm-core \
    --timeline "$out/8b-freeze-gaps.txt" --output "$out/8b.jsonl" > "$out/8b-freeze.log" 2>&1
echo "=== gpu-8b freeze rc=$?"; head -c 2500 "$out/8b-freeze-gaps.txt"
VLLM_FREEZE_GC_HEAP=0 timeout -k 10 95 python3 benchmarks/throughput_gpu.py --workload gpu-8b \
    --systems vllm-core --timeline "$out/8b-nofreeze-gaps.txt" --output "$out/8b.jsonl" \
    > "$out/8b-nofreeze.log" 2>&1
echo "=== gpu-8b no freeze rc=$?"; head -c 1500 "$out/8b-nofreeze-gaps.txt"
timeout -k 10 170 python3 benchmarks/throughput_gpu.py --workload gpu-8b-long --systems vllm-core \
    --output "$out/8b-long.jsonl" > "$out/8b-long.log" 2>&1
echo "=== gpu-8b-long rc=$?"; tail -n 3 "$out/8b-long.log"
exit 0
