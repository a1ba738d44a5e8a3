#!/usr/bin/env bash
# Issue 15, the factored W4A16 GEMV with its K loop software-pipelined (one H200, <= 8 minutes):
# the GPU kernel tests of the GEMVs (a pipelined plan bit-identical to the unpipelined one), a
# graph-timed sweep at 1 row over the default plan and the pipelined plans (2-4 stages, 1/2/4
# waves, 128/256/512 outputs) against bf16 F.linear, then gpu-8b-b1 W4A16 with the sweep's best
# plan, with the default plan, and bf16, in the same run. Needs nothing carried (the tree is
# installed under /tmp/vcw4, as the engine runs import it). W4A16P_PLANS overrides the swept
# plans ("bn,bk,w,s,waves,early,pairs;..."). Writes "$OUT/w4a16p/".
set -x
D="${OUT:?OUT must be set}/w4a16p"
mkdir -p "$D"
export PYTHONUNBUFFERED=1
DEADLINE=$(( $(date +%s) + ${W4A16P_BUDGET_S:-480} ))
STEP_TAG=W4A16P STEP_TAIL=15
. "$(dirname "$0")/steps.sh"   # step NAME LIMIT_S COMMAND...
python3 -m pip install -q --no-deps --no-build-isolation --no-compile --target /tmp/vcw4 \
    . platforms/cpu platforms/cuda platforms/triton > "$D/install.log" 2>&1 \
    || echo "=== W4A16P install FAILED (see install.log)"
export PYTHONPATH=/tmp/vcw4${PYTHONPATH:+:$PYTHONPATH}
step tests 120 python3 -m pytest -q -p no:cacheprovider platforms/triton/tests/test_quant_kernels.py \
    -k "${W4A16P_TESTS:-factored or 8b_shapes or split_k or past_k or tiles_variable or pipelined}"
default=256,128,4,1,4,0,1
plans=$default
for bn in 128 256; do for wv in 1 2; do for st in 2 3 4; do plans="$plans;$bn,128,4,$st,$wv,0,1"; done; done; done
plans="$plans;256,128,4,2,4,0,1;256,128,4,3,4,0,1;512,128,8,3,1,0,1;512,128,8,3,2,0,1"
plans=${W4A16P_PLANS:-$plans}
step gemv_rows1 ${W4A16P_SWEEP_S:-170} python3 benchmarks/wna16_gemv_gpu.py --rows 1 --kernels factored \
    --plans "$plans" --out "$D/gemv.jsonl" --best "$D/best.json"
best=$(python3 -c "import json; print(json.load(open('$D/best.json')).get('factored', ''))" 2>/dev/null)
echo "=== W4A16P factored best plan: '${best}'"
if [ -n "$best" ] && [ "$best" != "$default" ]; then
    VLLM_TRITON_WNA16_GEMV_TILES=$best step b1-w4a16-best 55 python3 benchmarks/throughput_gpu.py \
        --workload gpu-8b-b1 --systems vllm-core --quantization gptq --output "$D/throughput.jsonl"
fi
step b1-w4a16-default 55 python3 benchmarks/throughput_gpu.py --workload gpu-8b-b1 \
    --systems vllm-core --quantization gptq --output "$D/throughput.jsonl"
step b1-bf16 50 python3 benchmarks/throughput_gpu.py --workload gpu-8b-b1 --systems vllm-core \
    --output "$D/throughput.jsonl"
grep -h 'summary' "$D/gemv.jsonl" 2>/dev/null
grep -h '"kind": "summary"' "$D/throughput.jsonl" 2>/dev/null
exit 0
