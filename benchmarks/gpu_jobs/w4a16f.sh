#!/usr/bin/env bash
# Issue 15, the factored W4A16 GEMV (one H200, <= 7 minutes): GPU kernel tests, a 32-plan
# sweep at 1 row timed inside CUDA graphs (256/512 outputs, 64/128-input steps, 4/8 warps, 4/2
# waves, with and without the half-pair nibble conversion) against bf16 F.linear, then
# gpu-8b-b1 W4A16 with the sweep's best plan, the default plan (with a CUDA-only trace after
# it: where the step's time goes, --timeline), the default plan with half pairs, and bf16, in
# the same run. Needs nothing carried (the tree is installed under /tmp/vcw4, as the engine runs
# import it). W4A16F_TILES=plan skips the sweep and runs that plan as the "best". Writes
# "$OUT/w4a16f/".
set -x
D="${OUT:?OUT must be set}/w4a16f"
mkdir -p "$D"
export PYTHONUNBUFFERED=1
DEADLINE=$(( $(date +%s) + ${W4A16F_BUDGET_S:-420} ))
STEP_TAG=W4A16F STEP_TAIL=15
. "$(dirname "$0")/steps.sh"   # step NAME LIMIT_S COMMAND...
python3 -m pip install -q --no-deps --no-build-isolation --no-compile --target /tmp/vcw4 \
    . platforms/cpu platforms/cuda platforms/triton > "$D/install.log" 2>&1 \
    || echo "=== W4A16F install FAILED (see install.log)"
export PYTHONPATH=/tmp/vcw4${PYTHONPATH:+:$PYTHONPATH}
step tests 70 python3 -m pytest -q -p no:cacheprovider platforms/triton/tests/test_quant_kernels.py \
    -k "factored or 8b_shapes or split_k or past_k or tiles_variable"
if [ -n "${W4A16F_TILES:-}" ]; then
    best=$W4A16F_TILES
else
    step gemv_rows1 120 python3 benchmarks/wna16_gemv_gpu.py --rows 1 --kernels factored \
        --out "$D/gemv.jsonl" --best "$D/best.json"
    best=$(python3 -c "import json; print(json.load(open('$D/best.json')).get('factored', ''))" 2>/dev/null)
fi
echo "=== W4A16F factored best plan: '${best}'"
if [ -n "$best" ]; then
    VLLM_TRITON_WNA16_GEMV_TILES=$best step b1-w4a16-best 55 python3 benchmarks/throughput_gpu.py \
        --workload gpu-8b-b1 --systems vllm-core --quantization gptq --output "$D/throughput.jsonl"
fi
step b1-w4a16-default 55 python3 benchmarks/throughput_gpu.py --workload gpu-8b-b1 \
    --systems vllm-core --quantization gptq --timeline "$D/b1-w4a16-gaps.txt" \
    --output "$D/throughput.jsonl"
if [ "$best" != 256,128,4,1,4,0,1 ]; then
    VLLM_TRITON_WNA16_GEMV_TILES=256,128,4,1,4,0,1 step b1-w4a16-pairs 55 python3 \
        benchmarks/throughput_gpu.py --workload gpu-8b-b1 --systems vllm-core --quantization gptq \
        --output "$D/throughput.jsonl"
fi
step b1-bf16 50 python3 benchmarks/throughput_gpu.py --workload gpu-8b-b1 --systems vllm-core \
    --output "$D/throughput.jsonl"
grep -h 'summary' "$D/gemv.jsonl" 2>/dev/null
grep -h '"kind": "summary"' "$D/throughput.jsonl" 2>/dev/null
exit 0
