#!/usr/bin/env bash
# Where a speculative-decoding step's time goes on one H200 (gpu-8b-b1 shape, random bf16
# weights): the replay self-draft and no speculation, each once under torch.profiler (host and
# device op tables, chrome traces) with the runner's per-step timing. Writes "$OUT/specprof/".
set -x
out="${OUT:?OUT must be set}/specprof"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
timeout -k 10 140 python3 benchmarks/spec_decode_gpu.py --part profile \
    --output "$out/spec.jsonl" > "$out/profile.log" 2>&1
echo "=== specprof rc=$?"
grep '^{' "$out/profile.log"
exit 0
