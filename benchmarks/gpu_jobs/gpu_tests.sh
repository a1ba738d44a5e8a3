#!/usr/bin/env bash
# Every device test of the CUDA and Triton plugins (-m gpu) on one GPU, without stopping at the
# first failure (the 2-GPU all-reduce tests are left to a two-GPU job). Writes "$OUT/gpu_tests/".
# Carry .whl2 (the gguf wheel: the GGUF kernel tests import it) and
# .bench/models/smollm2-tokenizer (the structured-output test's tokenizer; the default model's
# package is too large to carry).
set -x
out="${OUT:?OUT must be set}/gpu_tests"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
python3 -m pytest -q -m gpu -p no:cacheprovider -rfEX --durations=15 \
    platforms/cuda/tests platforms/triton/tests \
    --deselect platforms/cuda/tests/test_fast_all_reduce_gpu.py 2>&1 | tee "$out/pytest.log"
echo "=== gpu_tests rc=${PIPESTATUS[0]}"
