#!/usr/bin/env bash
# Re-run, on one GPU, the device tests that failed in the last full gpu_tests run: the FP8
# kernel tests (per-token quantization scales bit for bit, the FP8 cache write) and the
# structured-output two-phase test (carry .bench/models/smollm2-tokenizer). "$OUT/fixcheck/".
set -x
out="${OUT:?OUT must be set}/fixcheck"
mkdir -p "$out"
python3 -m pytest -q -p no:cacheprovider -rfE \
    platforms/triton/tests/test_kernels.py -k "fp8" \
    platforms/triton/tests/test_quant_kernels.py::test_per_token_quant_fp8_equals_the_reference \
    platforms/triton/tests/test_quant_kernels.py::test_fp8_scaled_mm_matches_reference \
    2>&1 | tee "$out/pytest_fp8.log" | tail -5
python3 -m pytest -q -p no:cacheprovider -rfE platforms/cuda/tests/test_gpu_structured.py \
    2>&1 | tee "$out/pytest_structured.log" | tail -5
exit 0
