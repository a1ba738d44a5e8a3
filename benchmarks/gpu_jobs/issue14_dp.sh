#!/usr/bin/env bash
# Issue 14, item 5 GPU job (host with two H200s, no network): data parallelism.
#
#   OUT=/some/dir bash benchmarks/gpu_jobs/issue14_dp.sh      (from the repository root)
#
# Needs carried: nothing (the repository only). Writes everything under "$OUT/issue14_dp/"
# (JSON lines in *.jsonl, logs in *.log, step markers in marks.log). Each step has its own
# timeout and a failed step never stops the next; a step that would start late is skipped
# (marked SKIP). Expected about 4 minutes, at most 6.
#
# Steps:
#  1. gpu-8b (256 x 512/256, the 8B shape, dummy bf16 weights) on one GPU: vllm-core only.
#  2. the same at --data-parallel-size 2 (one engine core per GPU), same run.
#     Then one summary line: {"kind": "dp_summary", "ratio_dp2_vs_1gpu": ..., "bar": 1.85}.
#  3. the GPU tests of data parallelism (platforms/cuda/tests/test_data_parallel_gpu.py:
#     one GPU per core via CUDA_VISIBLE_DEVICES, greedy parity DP=2 vs one GPU, refusal).
#  4. the CPU-suite DP tests run on the GPUs (tests/distributed/test_data_parallel.py:
#     parity, load balancing, aborts, a killed core), if time is left.
set -x
OUT=${OUT:-/tmp/out}
D="$OUT/issue14_dp"
mkdir -p "$D"
cd "$(dirname "$0")/../.." || exit 1
mark() { echo "=== ISSUE14DP $* ($(date +%T), ${SECONDS}s)" | tee -a "$D/marks.log"; }
budget() { if [ "$SECONDS" -gt "$1" ]; then mark "SKIP $2: ${SECONDS}s used"; return 1; fi; }

mark "0 install"
python3 -m pip install -q --no-deps --no-build-isolation --no-compile --target /tmp/vc14dp \
    . platforms/cpu platforms/cuda platforms/triton > "$D/install.log" 2>&1 \
    || mark "0 install FAILED (see install.log)"
export PYTHONPATH=/tmp/vc14dp${PYTHONPATH:+:$PYTHONPATH}   # after the carried wheels run_all.sh installed
nvidia-smi --query-gpu=index,name,memory.used,memory.total --format=csv > "$D/gpu.txt" 2>&1
cat "$D/gpu.txt"

mark "1 gpu-8b one GPU"
CUDA_VISIBLE_DEVICES=0 timeout 120 python3 benchmarks/throughput_gpu.py --workload gpu-8b \
    --systems vllm-core --output "$D/dp.jsonl" > "$D/dp1.log" 2>&1 || mark "1 dp1 FAILED rc=$?"

mark "2 gpu-8b data-parallel-size 2"
budget 170 "2 dp2" && CUDA_VISIBLE_DEVICES=0,1 timeout 140 python3 benchmarks/throughput_gpu.py \
    --workload gpu-8b --systems vllm-core --data-parallel-size 2 --output "$D/dp.jsonl" \
    > "$D/dp2.log" 2>&1 || mark "2 dp2 FAILED rc=$?"

python3 - "$D/dp.jsonl" <<'PY' | tee -a "$D/dp.jsonl"
import json, sys
one = two = None
for line in open(sys.argv[1]):
    d = json.loads(line)
    if d.get("system") != "vllm-core" or "output_tok_s" not in d:
        continue
    if d.get("data_parallel_size", 1) == 2:
        two = d
    else:
        one = d
s = {"kind": "dp_summary", "workload": "gpu-8b", "bar": 1.85,
     "one_gpu_output_tok_s": one and one["output_tok_s"],
     "dp2_output_tok_s": two and two["output_tok_s"]}
if one and two:
    s["ratio_dp2_vs_1gpu"] = round(two["output_tok_s"] / one["output_tok_s"], 3)
    s["meets_bar"] = s["ratio_dp2_vs_1gpu"] >= 1.85
print(json.dumps(s))
PY

mark "3 GPU tests of data parallelism"
budget 260 "3 gpu tests" && timeout 90 python3 -m pytest -q -x -m gpu -p no:cacheprovider \
    platforms/cuda/tests/test_data_parallel_gpu.py > "$D/test_gpu.log" 2>&1 \
    || mark "3 gpu tests FAILED rc=$?"
tail -3 "$D/test_gpu.log"

mark "4 DP suite on the GPUs"
budget 290 "4 dp suite" && timeout 60 python3 -m pytest -q -x -p no:cacheprovider \
    tests/distributed/test_data_parallel.py > "$D/test_dp_suite.log" 2>&1 \
    || mark "4 dp suite FAILED rc=$?"
tail -3 "$D/test_dp_suite.log"
mark "done"
