#!/usr/bin/env bash
# Issue 12: unconstrained vs json_schema alternated over 2 rounds in one process (warm A/B).
set -x
out="$OUT/issue12r"; mkdir -p "$out"
timeout -k 10 170 python3 benchmarks/structured_outputs.py --workload gpu-8b --async-scheduling \
    --schema shared --rounds 2 --output "$out/bench.jsonl" 2>&1 | tail -20 | tee "$out/bench.log"
