#!/usr/bin/env bash
# Issue 16, EAGLE-3 proposer, on one H200: the EAGLE-3 GPU test (greedy identity with a
# random-weight head, CUDA graphs on), then gpu-8b-b1 (Llama-3.1-8B shape, random bf16
# weights) at k=4 and k=2 with a random-weight EAGLE-3 head of the published layout (draft vocabulary 32000) against no
# speculation, same engine, same run (acceptance ~0: the line is the head's overhead).
# Run from the repo root:
#   OUT=/some/dir bash benchmarks/gpu_jobs/issue16e3.sh
# Everything lands in "$OUT/issue16e3/". Each step is bounded (<= 6 min in all) and a failed
# step does not stop the rest. Needs nothing carried (no extra wheels).
set -x
OUT=${OUT:-/tmp/out}
dir="$OUT/issue16e3"
mkdir -p "$dir"
export PYTHONUNBUFFERED=1
if ! python3 -c "import vllm_core, vllm_core_cuda" 2>/dev/null; then
    python3 -m pip install -q --no-deps --no-build-isolation --no-compile \
        --target /tmp/issue16e3-site . platforms/cpu platforms/cuda platforms/triton \
        > "$dir/install.log" 2>&1 || echo "=== INSTALL FAILED (see install.log)"
    export PYTHONPATH=/tmp/issue16e3-site${PYTHONPATH:+:$PYTHONPATH}
fi
nvidia-smi > "$dir/nvidia-smi.txt" 2>&1

echo "=== 1/3 GPU test: EAGLE-3 greedy identity on the device (tiny random Llama + head)"
timeout 60 python3 -m pytest -x -q -m gpu platforms/cuda/tests/test_gpu_eagle3.py \
    > "$dir/gpu_test.log" 2>&1
echo "=== gpu test rc=$?" | tee -a "$dir/gpu_test.log"

echo "=== 2/3 gpu-8b-b1, k=4, random EAGLE-3 head vs no speculation"
timeout 110 python3 benchmarks/spec_decode_gpu.py --part eagle3 --k 4 \
    --output "$dir/spec.jsonl" > "$dir/eagle3_k4.log" 2>&1
echo "=== eagle3 k4 rc=$?" | tee -a "$dir/eagle3_k4.log"

echo "=== 3/3 gpu-8b-b1, k=2, random EAGLE-3 head vs no speculation"
timeout 70 python3 benchmarks/spec_decode_gpu.py --part eagle3 --k 2 \
    --output "$dir/spec.jsonl" > "$dir/eagle3_k2.log" 2>&1
echo "=== eagle3 k2 rc=$?" | tee -a "$dir/eagle3_k2.log"

grep -h '^{' "$dir"/*.log > "$dir/all_lines.jsonl" 2>/dev/null
echo "=== done; JSON lines in $dir/spec.jsonl"
