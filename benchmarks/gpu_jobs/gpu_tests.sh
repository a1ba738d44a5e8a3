#!/usr/bin/env bash
# What `nox -s tests-cuda` runs, on one GPU, without stopping at the first failure: the
# platform and plugin tests, the CUDA plugin's tests and the portable Triton kernels' tests (on
# the GPU they run at GPU shapes), every test but other devices' (the 2-GPU all-reduce tests are
# left to a two-GPU job). GPU_TESTS_MARK="gpu" narrows it to the device-marked tests only.
#
# The whole selection (481 tests) takes about 9.3 minutes of pytest on an H200 (2026-12-02:
# ~280 s for the platform, plugin and CUDA tests, ~275 s for the Triton kernel tests, most of it
# Triton compiles), which with the machine's start and the install does not fit in one 10-minute
# device command. GPU_TESTS_PART=1 runs the first half (tests/platforms, tests/plugins,
# platforms/cuda/tests), GPU_TESTS_PART=2 the second (platforms/triton/tests); unset runs all.
# Each test has a 200 s limit (pytest-timeout, on the image); GPU_TESTS_LIMIT_S (default 540)
# stops pytest with SIGINT, so the summary of what ran is still printed.
#
# Run it through run_all.sh, which installs the carried wheels and our distributions into
# /tmp/site: GPU_TESTS_PART=1 bash benchmarks/gpu_jobs/run_all.sh gpu_tests:560, then PART=2.
# Carry .bench/models/smollm2-tokenizer (the structured-output test's tokenizer; the default
# model's package is too large to carry; make it with
#   python -c "from vllm_core.model_executor.loader import get_tokenizer, resolve_model;
#   get_tokenizer(resolve_model(None), None).save_pretrained('.bench/models/smollm2-tokenizer')")
# and .whl2 with the wheels the image lacks (cp312, manylinux, --no-deps; ~9 MB): gguf (the
# GGUF kernel tests), xgrammar + apache-tvm-ffi + pydantic + pydantic-core + annotated-types +
# typing-inspection + typing-extensions (the structured-output test's default backend),
# jsonschema + jsonschema-specifications + referencing + rpds-py (structured outputs' schema
# check), msgspec + pyzmq (engine-core processes: the two-GPU data-parallel tests).
# Writes "$OUT/gpu_tests/".
set -x
out="${OUT:?OUT must be set}/gpu_tests"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
mark=${GPU_TESTS_MARK:-not rocm_device and not xpu_device and not tpu_device and not docker}
part=${GPU_TESTS_PART:-all}
case "$part" in
    1) paths=(tests/platforms tests/plugins platforms/cuda/tests) ;;
    2) paths=(platforms/triton/tests) ;;
    *) paths=(tests/platforms tests/plugins platforms/cuda/tests platforms/triton/tests) ;;
esac
timeout -s INT -k 20 "${GPU_TESTS_LIMIT_S:-540}" \
    python3 -m pytest -q -m "$mark" -p no:cacheprovider -rfEXs --durations=15 --timeout 200 \
    --junitxml="$out/junit_$part.xml" "${paths[@]}" \
    --deselect platforms/cuda/tests/test_fast_all_reduce_gpu.py 2>&1 | tee "$out/pytest_$part.log"
echo "=== gpu_tests part=$part rc=${PIPESTATUS[0]}"
