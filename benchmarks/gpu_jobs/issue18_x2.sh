#!/usr/bin/env bash
# Issue 18 (mixture-of-experts) on the two-GPU host, from the repo root, worst case ~7 minutes:
# Qwen3-30B-A3B shape (random bf16 weights), 256 x 512/256, vllm-core only:
#   1. TP=2 (every expert's intermediate dimension split over the two GPUs);
#   2. EP=2 (--enable-expert-parallel: 64 whole experts per GPU).
# Same prompts, one JSON line each plus a summary with the roofline of one GPU (for scale).
# Needs nothing carried. Writes everything under "$OUT/issue18_x2/".
set -x
out="${OUT:?OUT must be set}/issue18_x2"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv 2>&1 | tee "$out/env.txt"

echo "=== issue18_x2: TP=2"
timeout -k 10 200 python3 benchmarks/throughput_moe_gpu.py --systems vllm-core -tp 2 \
    --core-timeout 190 --output "$out/throughput.jsonl" 2>&1 | tail -30 | tee "$out/tp2.log"
echo "=== issue18_x2: TP=2 rc=${PIPESTATUS[0]}"

echo "=== issue18_x2: EP=2"
timeout -k 10 200 python3 benchmarks/throughput_moe_gpu.py --systems vllm-core -tp 2 \
    --enable-expert-parallel --core-timeout 190 --output "$out/throughput.jsonl" 2>&1 | tail -30 \
    | tee "$out/ep2.log"
echo "=== issue18_x2: EP=2 rc=${PIPESTATUS[0]}"

echo "=== issue18_x2: done"
cat "$out"/throughput.jsonl 2>/dev/null
exit 0
