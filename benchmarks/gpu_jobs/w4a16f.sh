#!/usr/bin/env bash
# Issue 15, the factored W4A16 GEMV (one H200, <= 8 minutes): GPU kernel tests of the GEMVs,
# a sweep of launch plans at 1 row timed inside CUDA graphs against bf16 F.linear, then
# gpu-8b-b1 W4A16 with the sweep's best plan (when it is not the default), with the default plan
# (a CUDA-only trace after it: where the step's time goes, --timeline), and bf16, in the same run.
# Needs nothing carried (the tree is installed under /tmp/vcw4, as the engine runs import it).
# Knobs: W4A16F_PLANS="bn,bk,w,s,waves,early,pairs;..." sweeps those plans instead of the
# script's grid (e.g. the pipelined ones: "256,128,4,3,2,0,1;128,128,4,2,1,0,1"); W4A16F_TILES=plan
# skips the sweep and runs that plan as the "best"; W4A16F_TESTS picks the tests (-k);
# W4A16F_BUDGET_S / W4A16F_SWEEP_S the time limits. Writes "$OUT/w4a16f/".
set -x
D="${OUT:?OUT must be set}/w4a16f"
mkdir -p "$D"
export PYTHONUNBUFFERED=1
DEADLINE=$(( $(date +%s) + ${W4A16F_BUDGET_S:-480} ))
STEP_TAG=W4A16F STEP_TAIL=15
. "$(dirname "$0")/steps.sh"   # step NAME LIMIT_S COMMAND...; install_tree DIR
install_tree /tmp/vcw4
step tests 120 python3 -m pytest -q -p no:cacheprovider platforms/triton/tests/test_quant_kernels.py \
    -k "${W4A16F_TESTS:-factored or 8b_shapes or split_k or past_k or tiles_variable or pipelined}"
default=256,128,4,1,4,0,1
if [ -n "${W4A16F_TILES:-}" ]; then
    best=$W4A16F_TILES
else
    step gemv_rows1 "${W4A16F_SWEEP_S:-170}" python3 benchmarks/wna16_gemv_gpu.py --rows 1 \
        --kernels factored ${W4A16F_PLANS:+--plans "$W4A16F_PLANS"} --out "$D/gemv.jsonl" \
        --best "$D/best.json"
    best=$(python3 -c "import json; print(json.load(open('$D/best.json')).get('factored', ''))" 2>/dev/null)
fi
echo "=== W4A16F factored best plan: '${best}'"
if [ -n "$best" ] && [ "$best" != "$default" ]; then
    VLLM_TRITON_WNA16_GEMV_TILES=$best step b1-w4a16-best 55 python3 benchmarks/throughput_gpu.py \
        --workload gpu-8b-b1 --systems vllm-core --quantization gptq --output "$D/throughput.jsonl"
fi
step b1-w4a16-default 55 python3 benchmarks/throughput_gpu.py --workload gpu-8b-b1 \
    --systems vllm-core --quantization gptq --timeline "$D/b1-w4a16-gaps.txt" \
    --output "$D/throughput.jsonl"
step b1-bf16 50 python3 benchmarks/throughput_gpu.py --workload gpu-8b-b1 --systems vllm-core \
    --output "$D/throughput.jsonl"
grep -h 'summary' "$D/gemv.jsonl" 2>/dev/null
grep -h '"kind": "summary"' "$D/throughput.jsonl" 2>/dev/null
exit 0
