#!/usr/bin/env bash
# Issue 18's roofline on one H200 (<= 9 minutes), after the profile showed the decode step at
# 25 ms (MoE GEMMs 15.2, attention 4.7, the torch align_rows ~3) and the prefill MoE GEMMs at
# ~45% of the matmul rate:
#   1. GPU tests of the one-launch align kernel and the fused-MoE kernels;
#   2. decode-attention sweep at batch 256 for the 8B (8 KV heads) and MoE (4 KV heads) shapes;
#   3. wide tile sweep (BLOCK_M up to 128, BLOCK_N up to 256) at 256 / 1024 / 8192 tokens;
#   4. the gpu-moe throughput with the sweep's tiles, then --profile.
# Needs nothing carried. Writes "$OUT/issue18b/".
set -x
out="${OUT:?OUT must be set}/issue18b"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
timeout -k 10 100 python3 -m pytest -q -p no:cacheprovider platforms/triton/tests/test_moe_align.py \
    platforms/triton/tests/test_fused_moe_kernels.py 2>&1 | tail -15 | tee "$out/tests.log"
echo "=== issue18b tests rc=${PIPESTATUS[0]}"
for hkv in 8 4; do
    timeout -k 10 75 python3 benchmarks/kernels_cuda.py --only decode --batches 256 --ctxs 640 \
        --kv-heads $hkv --out "$out/attention.jsonl" > "$out/attention-$hkv.log" 2>&1
    echo "=== issue18b attention kv_heads=$hkv rc=$?"; tail -c 1500 "$out/attention-$hkv.log"
done
timeout -k 10 170 python3 benchmarks/moe_tile_sweep.py --wide --tokens 256,8192,1024 --reps 5 \
    --write "$out/tiles.json" > "$out/tile_sweep.jsonl" 2> "$out/tile_sweep.err"
echo "=== issue18b sweep rc=$?"
grep -E '"moe_tile_(best|entry)"' "$out/tile_sweep.jsonl"; tail -3 "$out/tile_sweep.err"
[ -s "$out/tiles.json" ] && export VLLM_MOE_TILE_CONFIG="$out/tiles.json"
timeout -k 10 130 python3 benchmarks/throughput_moe_gpu.py --systems vllm-core --core-timeout 120 \
    --profile "$out/moe_profile.txt" --output "$out/throughput.jsonl" > "$out/throughput.log" 2>&1
echo "=== issue18b throughput rc=$?"; tail -n 4 "$out/throughput.log"
exit 0
