#!/usr/bin/env bash
# Issue 15's W4A16 bar on one H200: gpu-8b-b1 decode, bf16 vs W4A16 (GPTQ layout, group 128,
# random weights; the Triton fused-dequant GEMV), one after the other in one device command
# (bar >= 2.5x). Writes "$OUT/w4a16b1/throughput.jsonl". Needs nothing carried.
set -x
out="${OUT:?OUT must be set}/w4a16b1"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
for q in ${W4A16B1_QUANT:-none gptq}; do
    args=(); [ "$q" != none ] && args=(--quantization "$q")
    timeout -k 10 80 python3 benchmarks/throughput_gpu.py --workload gpu-8b-b1 --systems vllm-core \
        "${args[@]}" --output "$out/throughput.jsonl" > "$out/$q.log" 2>&1
    echo "=== w4a16b1 $q rc=$?"; tail -n 5 "$out/$q.log"
done
grep -h '"kind": "summary"' "$out/throughput.jsonl"
exit 0
