#!/usr/bin/env bash
# Issue 15's W4A16 bar on one H200: the GEMV kernels' tests on the device, the GEMV plan sweep
# (wna16_gemv_gpu.py: exact, factored and tc kernels over launch plans vs bf16 F.linear at the 8B
# projections), then gpu-8b-b1 decode, bf16 vs W4A16 (GPTQ layout, group 128, random weights),
# one after the other in one device command (bar >= 2.5x). Writes "$OUT/w4a16b1/*.jsonl".
# Needs nothing carried.
# W4A16B1_QUANT lists the engine variants: a quantization method, optionally ":exact",
# ":factored", ":tc" (VLLM_TRITON_WNA16_GEMV; none: the default kernel and plan) and "+best" (the
# sweep's fastest plan of that kernel through VLLM_TRITON_WNA16_GEMV_TILES). W4A16B1_SWEEP=quick runs the default plans only.
set -x
out="${OUT:?OUT must be set}/w4a16b1"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
# shellcheck disable=SC2086   # W4A16B1_TESTS is a list of pytest arguments
timeout -k 10 150 python3 -m pytest -q -p no:cacheprovider \
    ${W4A16B1_TESTS:-platforms/triton/tests/test_quant_kernels.py} > "$out/tests.log" 2>&1
echo "=== w4a16b1 tests rc=$?"; tail -n 3 "$out/tests.log"
if [ "${W4A16B1_SWEEP:-}" != none ]; then
    sweep=(); [ "${W4A16B1_SWEEP:-}" = quick ] && sweep=(--quick)
    timeout -k 10 220 python3 benchmarks/wna16_gemv_gpu.py "${sweep[@]}" \
        --out "$out/gemv.jsonl" --best "$out/best.json" > "$out/gemv.log" 2>&1
    echo "=== w4a16b1 gemv rc=$?"; grep summary "$out/gemv.log"
fi
best() { python3 -c "import json,sys; print(json.load(open('$out/best.json')).get(sys.argv[1], ''))" "$1" 2>/dev/null; }
for v in ${W4A16B1_QUANT-none gptq gptq:factored+best gptq:tc+best gptq:exact+best}; do
    q=${v%%:*}; rest=${v#"$q"}; rest=${rest#:}; gemv=${rest%%+*}   # empty: the default kernel
    tiles=""; [[ "$rest" == *+best ]] && tiles=$(best "${gemv:-factored}")
    args=(); [ "$q" != none ] && args=(--quantization "$q")
    log="$out/$q${gemv:+-$gemv}${tiles:+-best}.log"
    VLLM_TRITON_WNA16_GEMV=$gemv VLLM_TRITON_WNA16_GEMV_TILES=$tiles timeout -k 10 80 \
        python3 benchmarks/throughput_gpu.py --workload gpu-8b-b1 --systems vllm-core \
        "${args[@]}" --output "$out/throughput.jsonl" > "$log" 2>&1
    echo "=== w4a16b1 $v tiles=$tiles rc=$?"; tail -n 3 "$log"
done
grep -h '"kind": "summary"' "$out/throughput.jsonl"
exit 0
