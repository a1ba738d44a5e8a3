#!/usr/bin/env bash
# Where the GPU waits (one H200, <= 4 minutes): gpu-8b and gpu-8b-b1 W4A16 (GPTQ layout) with
# a CUDA-only trace after the measured run (throughput_gpu.py --timeline: busy share, gaps by
# length, the longest gaps), then the decode-attention plan sweep at batch 256 / 640 tokens
# (kernels_cuda.py --only decode). Needs nothing carried. Writes "$OUT/timeline/".
set -x
out="${OUT:?OUT must be set}/timeline"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
timeout -k 10 90 python3 benchmarks/throughput_gpu.py --workload gpu-8b --systems vllm-core \
    --timeline "$out/8b-gaps.txt" --output "$out/8b.jsonl" > "$out/8b.log" 2>&1
echo "=== timeline gpu-8b rc=$?"; cat "$out/8b-gaps.txt"
timeout -k 10 60 python3 benchmarks/throughput_gpu.py --workload gpu-8b-b1 --systems vllm-core \
    --quantization gptq --timeline "$out/b1-gptq-gaps.txt" --output "$out/b1-gptq.jsonl" \
    > "$out/b1-gptq.log" 2>&1
echo "=== timeline gpu-8b-b1 gptq rc=$?"; head -c 3000 "$out/b1-gptq-gaps.txt"
timeout -k 10 70 python3 benchmarks/kernels_cuda.py --only decode --batches 256 --ctxs 640 \
    --out "$out/attention.jsonl" > "$out/attention.log" 2>&1
echo "=== decode attention sweep rc=$?"; tail -c 1500 "$out/attention.log"
exit 0
