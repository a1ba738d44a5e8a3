#!/usr/bin/env bash
# Same-run A/B of this tree against the base tree in .ab_base (carry it: made with
# `git archive <rev> | tar -x -C .ab_base`), gpu-8b and gpu-8b-b1, vllm-core only.
set -x
out="${OUT:?OUT must be set}/ab"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
bash benchmarks/ab_gpu.sh .ab_base "$out" gpu-8b gpu-8b-b1 2>&1 | tail -30
