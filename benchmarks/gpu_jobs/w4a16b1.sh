#!/usr/bin/env bash
# Issue 15's W4A16 bar on one H200: the GEMV micro-benchmark (wna16_gemv_gpu.py: exact vs
# factored vs bf16 F.linear at the 8B projections), then gpu-8b-b1 decode, bf16 vs W4A16 (GPTQ
# layout, group 128, random weights; the Triton fused-dequant GEMV), one after the other in
# one device command (bar >= 2.5x). Writes "$OUT/w4a16b1/throughput.jsonl". Needs nothing carried.
# W4A16B1_QUANT lists the variants: a quantization method, optionally ":factored" for the
# factored batch-1 GEMV (VLLM_TRITON_WNA16_GEMV=factored), e.g. "none gptq gptq:factored".
set -x
out="${OUT:?OUT must be set}/w4a16b1"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
timeout -k 10 60 python3 benchmarks/wna16_gemv_gpu.py --out "$out/gemv.jsonl" > "$out/gemv.log" 2>&1
echo "=== w4a16b1 gemv rc=$?"; tail -n 6 "$out/gemv.log"
for v in ${W4A16B1_QUANT:-none gptq gptq:factored}; do
    q=${v%%:*}; gemv=exact; [ "$v" != "$q" ] && gemv=${v#*:}
    args=(); [ "$q" != none ] && args=(--quantization "$q")
    VLLM_TRITON_WNA16_GEMV=$gemv timeout -k 10 80 python3 benchmarks/throughput_gpu.py \
        --workload gpu-8b-b1 --systems vllm-core "${args[@]}" \
        --output "$out/throughput.jsonl" > "$out/$q-$gemv.log" 2>&1
    echo "=== w4a16b1 $v rc=$?"; tail -n 5 "$out/$q-$gemv.log"
done
grep -h '"kind": "summary"' "$out/throughput.jsonl"
exit 0
