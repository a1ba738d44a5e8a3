#!/usr/bin/env bash
# Issue 19 item 3 (Qwen2.5-VL) on one H200; run from the repo root; <= 5 min; no network.
#   0. pillow (hands images to the engine): installed from the wheels carried in
#      .bench/wheels19vl/ (no package index there) only when `import PIL` fails;
#   1. GPU parity test (-m gpu): tiny random fp32 Qwen2.5-VL, greedy tokens of a batch mixing
#      text-only, one-image and two-image requests = HF generate; CUDA graphs on; prefix caching
#      and chunked prefill (a 64-token budget splits image runs);
#   2. Qwen2.5-VL-7B shape, random bf16 weights, 64 requests x (64 text tokens + one 448x448
#      image = 256 image tokens) -> 128 output tokens each: vllm-core vs HF generate (static
#      batches of 16) in the same run, output tok/s and time to first token
#      (benchmarks/vl_throughput.py).
# Everything lands under "$OUT/issue19vl/" (JSON lines in issue19vl.jsonl, logs *.log).
set -x
out="${OUT:-/tmp/out}/issue19vl"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import torch, transformers, triton; print(torch.__version__, transformers.__version__, triton.__version__)" | tee -a "$out/gpu.txt"

echo "=== ISSUE19VL STEP 0: our distributions and pillow"
# run_all.sh installs our distributions into /tmp/site; run alone, this script does it
if ! python3 -c "import vllm_core, vllm_core_cuda" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile \
        --target /tmp/site19vl . platforms/cpu platforms/cuda platforms/triton 2>&1 | tail -3
    export PYTHONPATH=/tmp/site19vl${PYTHONPATH:+:$PYTHONPATH}
fi
# pillow hands images to the engine; its wheels (cp310-cp313) are carried in
# .bench/wheels19vl (not in .whl*, whose every wheel run_all.sh installs)
if ! python3 -c "import PIL" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --find-links .bench/wheels19vl \
        --target /tmp/pil19vl pillow 2>&1 | tail -3
    export PYTHONPATH=/tmp/pil19vl${PYTHONPATH:+:$PYTHONPATH}
fi
python3 -c "import PIL, vllm_core; print('pillow', PIL.__version__, vllm_core.__file__)" \
    2>&1 | tee -a "$out/gpu.txt"
echo "=== ISSUE19VL STEP 0 done"

echo "=== ISSUE19VL STEP 1: GPU parity test"
timeout -k 10 100 python3 -m pytest -q -m gpu -p no:cacheprovider \
    platforms/cuda/tests/test_gpu_qwen2_5_vl.py -x -rA 2>&1 | tail -40 | tee "$out/parity_tests.log"
echo "=== ISSUE19VL STEP 1 rc=${PIPESTATUS[0]}"

echo "=== ISSUE19VL STEP 2: Qwen2.5-VL 7B shape, 64 requests x one 448x448 image"
timeout -k 10 250 python3 benchmarks/vl_throughput.py --shape 7b --requests 64 \
    --image-size 448 --text-len 64 --output-len 128 --hf-batch-size 16 --timeout 120 \
    --output "$out/issue19vl.jsonl" 2>&1 | tee "$out/vl_7b.log"
echo "=== ISSUE19VL STEP 2 rc=${PIPESTATUS[0]}"
echo "=== ISSUE19VL JSON"
cat "$out/issue19vl.jsonl" 2>/dev/null
echo "=== ISSUE19VL DONE"
