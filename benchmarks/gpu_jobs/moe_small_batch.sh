#!/usr/bin/env bash
# Qwen3-30B-A3B shape at small batches on one H200 (<= 3 minutes): 1 and 16 requests of
# 512 / 256 tokens, vllm-core only, against the active-parameter roofline (at batch 1 the
# touched experts are the active ones). Needs nothing carried. Writes "$OUT/moe_small_batch/".
set -x
out="${OUT:?OUT must be set}/moe_small_batch"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
for n in 1 16; do
    timeout -k 10 80 python3 benchmarks/throughput_moe_gpu.py --systems vllm-core --requests $n \
        --core-timeout 75 --output "$out/throughput.jsonl" > "$out/b$n.log" 2>&1
    echo "=== moe_small_batch requests=$n rc=$?"; tail -n 3 "$out/b$n.log"
done
exit 0
