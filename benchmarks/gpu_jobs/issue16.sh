#!/usr/bin/env bash
# Issue 16 (speculative decoding) on one H200: GPU tests, then the same-run A/B benchmarks of
# benchmarks/spec_decode_gpu.py (8B shape, random bf16 weights). Run from the repo root:
#   OUT=/some/dir bash benchmarks/gpu_jobs/issue16.sh
# Everything lands in "$OUT/issue16/". Each step is bounded and failures do not stop the rest.
set -x
OUT=${OUT:-/tmp/out}
dir="$OUT/issue16"
mkdir -p "$dir"
export PYTHONUNBUFFERED=1
if ! python3 -c "import vllm_core, vllm_core_cuda" 2>/dev/null; then
    python3 -m pip install -q --no-deps --no-build-isolation --no-compile \
        --target /tmp/issue16-site . platforms/cpu platforms/cuda platforms/triton \
        > "$dir/install.log" 2>&1 || echo "=== INSTALL FAILED (see install.log)"
    export PYTHONPATH=/tmp/issue16-site${PYTHONPATH:+:$PYTHONPATH}
fi
nvidia-smi > "$dir/nvidia-smi.txt" 2>&1

echo "=== 1/4 GPU tests (rejection sampler on the device)"
timeout 75 python3 -m pytest -x -q -m gpu platforms/cuda/tests/test_gpu_spec_decode.py \
    > "$dir/tests_gpu.log" 2>&1; echo "=== tests rc=$?" | tee -a "$dir/tests_gpu.log"

echo "=== 2/4 gpu-8b-b1: replay draft (= target), half-corrupted replay, n-gram"
timeout 100 python3 benchmarks/spec_decode_gpu.py --part b1 --output "$dir/spec.jsonl" \
    > "$dir/b1.log" 2>&1; echo "=== b1 rc=$?" | tee -a "$dir/b1.log"

echo "=== 3/4 batch sweep (speculation forced on): where it stops paying"
timeout 110 python3 benchmarks/spec_decode_gpu.py --part sweep --output "$dir/spec.jsonl" \
    > "$dir/sweep.log" 2>&1; echo "=== sweep rc=$?" | tee -a "$dir/sweep.log"

echo "=== 4/4 gpu-8b batch 256 with the default auto-off threshold"
timeout 90 python3 benchmarks/spec_decode_gpu.py --part b256 --output "$dir/spec.jsonl" \
    > "$dir/b256.log" 2>&1; echo "=== b256 rc=$?" | tee -a "$dir/b256.log"

grep -h '^{' "$dir"/*.log > "$dir/all_lines.jsonl" 2>/dev/null
echo "=== done; JSON lines in $dir/spec.jsonl"
