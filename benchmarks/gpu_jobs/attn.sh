#!/usr/bin/env bash
# Decode attention launch plans on one H200 (<= 4 minutes): the kernel sweep at batch 256 for
# the 8B (8 KV heads) and MoE (4 KV heads) shapes, then gpu-8b with the heuristic plan against
# the sweep's best 8B plan (VLLM_TRITON_DECODE_ATTENTION_TILES), same run. Needs nothing
# carried. Writes "$OUT/attn/".
set -x
out="${OUT:?OUT must be set}/attn"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
for hkv in 8 4; do
    timeout -k 10 70 python3 benchmarks/kernels_cuda.py --only decode --batches 256 --ctxs 640 \
        --kv-heads $hkv --out "$out/attention-$hkv.jsonl" > "$out/attention-$hkv.log" 2>&1
    echo "=== attn sweep kv_heads=$hkv rc=$?"; tail -c 600 "$out/attention-$hkv.log"
done
best=$(python3 - "$out/attention-8.jsonl" <<'PY'
import json, re, sys
for line in open(sys.argv[1]):
    d = json.loads(line)
    if d.get("bench") == "decode_attention":
        ones = {k: v for k, v in d["sweep_ms"].items() if k.endswith("k1")}
        k = min(ones, key=ones.get)
        t, w, s = re.match(r"t(\d+)w(\d+)s(\d+)k1$", k).groups()
        print(f"{t},{w},{s}")
PY
)
echo "best one-split 8B plan: ${best:-none}"
timeout -k 10 60 python3 benchmarks/throughput_gpu.py --workload gpu-8b --systems vllm-core \
    --output "$out/8b.jsonl" > "$out/8b-heuristic.log" 2>&1
echo "=== attn gpu-8b heuristic rc=$?"
if [ -n "$best" ]; then
    VLLM_TRITON_DECODE_ATTENTION_TILES=$best timeout -k 10 60 python3 benchmarks/throughput_gpu.py \
        --workload gpu-8b --systems vllm-core --output "$out/8b.jsonl" > "$out/8b-best.log" 2>&1
    echo "=== attn gpu-8b tiles=$best rc=$?"
fi
grep -h '"kind": "summary"' "$out/8b.jsonl"
exit 0
