#!/usr/bin/env bash
# Issue 16 (draft-model proposer) on one H200: gpu-8b-b1 (Llama-3.1-8B shape, random bf16
# weights) at k=4 with a truncated-layer draft (the target's first 4 layers; shared weights, own
# KV cache) against no speculation, same engine, same run: once with the target's later layers
# silenced (the draft predicts the target: high acceptance), once as is (acceptance ~0: the
# draft's cost); then the draft-model GPU tests. Run from the repo root:
#   OUT=/some/dir bash benchmarks/gpu_jobs/issue16d.sh
# Everything lands in "$OUT/issue16d/". Each step is bounded (<= 5 min in all) and a failed
# step does not stop the rest.
set -x
OUT=${OUT:-/tmp/out}
dir="$OUT/issue16d"
mkdir -p "$dir"
export PYTHONUNBUFFERED=1
if ! python3 -c "import vllm_core, vllm_core_cuda" 2>/dev/null; then
    python3 -m pip install -q --no-deps --no-build-isolation --no-compile \
        --target /tmp/issue16d-site . platforms/cpu platforms/cuda platforms/triton \
        > "$dir/install.log" 2>&1 || echo "=== INSTALL FAILED (see install.log)"
    export PYTHONPATH=/tmp/issue16d-site${PYTHONPATH:+:$PYTHONPATH}
fi
nvidia-smi > "$dir/nvidia-smi.txt" 2>&1

echo "=== 1/3 gpu-8b-b1, k=4, draft = the target's first 4 layers, the target's later layers silenced (acceptance ~1)"
timeout 120 python3 benchmarks/spec_decode_gpu.py --part draft --draft-layers 4 --target-equals-draft \
    --output "$dir/spec.jsonl" > "$dir/draft_L4_match.log" 2>&1
echo "=== draft L4 match rc=$?" | tee -a "$dir/draft_L4_match.log"

echo "=== 2/3 gpu-8b-b1, k=4, draft = the target's first 4 layers of random weights (acceptance ~0: the overhead)"
timeout 110 python3 benchmarks/spec_decode_gpu.py --part draft --draft-layers 4 \
    --output "$dir/spec.jsonl" > "$dir/draft_L4.log" 2>&1
echo "=== draft L4 rc=$?" | tee -a "$dir/draft_L4.log"

echo "=== 3/3 GPU tests: draft-model greedy identity on the device (tiny random Llamas)"
timeout 70 python3 -m pytest -x -q -m gpu platforms/cuda/tests/test_gpu_draft_model.py \
    > "$dir/tests.log" 2>&1
echo "=== tests rc=$?" | tee -a "$dir/tests.log"

grep -h '^{' "$dir"/*.log > "$dir/all_lines.jsonl" 2>/dev/null
echo "=== done; JSON lines in $dir/spec.jsonl"
