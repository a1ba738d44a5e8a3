#!/usr/bin/env bash
# Issue 11 GPU job (H200, no network): the serving split and FlashInfer, same run.
#
#   OUT=/some/dir bash benchmarks/gpu_jobs/issue11.sh      (from the repository root)
#
# Needs carried: the wheels in .whl3/, or .whl3a/ and .whl3b/ (the same, split to fit the
# 64 MiB carry limit: carry .whl3a in one call, .whl3b in the next, then run this) --
# flashinfer-python 0.7.4 and the small dependencies it
# imports: apache-tvm-ffi, ninja, nvidia-ml-py, einops, tabulate, click, cuda-python,
# cuda-bindings, cuda-pathfinder); without them the FlashInfer steps report the failure and the
# rest runs. Writes everything under "$OUT/issue11/" (JSON lines in *.jsonl, logs in *.log).
# Each step has its own timeout and a failed step never stops the next; a step that would
# start late is skipped (marked SKIP): the worst case stays under 8 minutes.
#
# Steps:
#  1. offline gpu-8b (vllm-core only, its own cache root): the peer figure for the serving
#     ratio.
#  2. `vllm-core bench serve`, 1000 prompts 512/256 at an unlimited rate, the 8B shape, engine
#     core process, started twice with the same, initially empty, VLLM_CACHE_ROOT: run 0 is the
#     fresh start (startup_s, and its throughput: kernels compile inside the warm-up), run 1 the
#     warm one (Triton / inductor caches filled); ratio of each vs step 1 (target >= 0.95) and
#     run 1 vs run 0 (target: the fresh run within 3%).
#  3. the engine core process at 32 then 64 req/s on one server (median / p99 TPOT, max
#     running; targets at 32: <= 14 / 20 ms, running bounded).
#  4. FlashInfer: install the wheels into /tmp/fi, gpu-8b-b1 and gpu-8b with
#     --attention-backend triton vs flashinfer; then its parity test if time is left.
#
# ISSUE11_STEPS picks the parts: "serve" (steps 1-3), "fi" (step 4); both by default. The
# serving wheels are in .whl2 and .whl4. The FlashInfer wheel is over the carry limit: one call
# carries .whl3a and copies it to /tmp/fiparts, the next (at once, while the machine is warm)
# carries .whl3b and runs "fi".
set -x
STEPS=" ${ISSUE11_STEPS:-serve fi} "
want() { [[ "$STEPS" == *" $1 "* ]]; }
OUT=${OUT:-/tmp/out}
D="$OUT/issue11"
mkdir -p "$D"
cd "$(dirname "$0")/../.." || exit 1
ROOT=$(pwd)
mark() { echo "=== ISSUE11 $* ($(date +%T), ${SECONDS}s)" | tee -a "$D/marks.log"; }
# A step starts only while this much of the budget is left (the job must end within 10 min).
budget() { if [ "$SECONDS" -gt "$1" ]; then mark "SKIP $2: ${SECONDS}s used"; return 1; fi; }

mark "0 install"
python3 -m pip install -q --no-deps --no-build-isolation --no-compile --target /tmp/vc11 \
    . platforms/cpu platforms/cuda platforms/triton > "$D/install.log" 2>&1 \
    || mark "0 install FAILED (see install.log)"
export PYTHONPATH=/tmp/vc11${PYTHONPATH:+:$PYTHONPATH}   # after the carried wheels run_all.sh installed
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv > "$D/gpu.txt" 2>&1
MODEL=$(python3 -c "import sys; sys.path.insert(0, 'benchmarks'); from throughput_gpu import \
DEFAULT_MODEL_DIR, ensure_model_dir; print(ensure_model_dir(DEFAULT_MODEL_DIR))" 2>>"$D/install.log")
echo "model dir: $MODEL"

if want serve; then
mark "1 offline gpu-8b"
VLLM_CACHE_ROOT="$D/cache-offline" timeout 90 python3 benchmarks/throughput_gpu.py \
    --workload gpu-8b --systems vllm-core \
    --output "$D/offline.jsonl" > "$D/offline.log" 2>&1 || mark "1 offline FAILED rc=$?"
OFFLINE=$(python3 -c "
import json
for line in open('$D/offline.jsonl'):
    d = json.loads(line)
    if d.get('system') == 'vllm-core' and 'output_tok_s' in d:
        print(d['output_tok_s'])
" 2>/dev/null | tail -1)
echo "offline gpu-8b output tok/s: ${OFFLINE:-unknown}"
OFFARG=()
[ -n "$OFFLINE" ] && OFFARG=(--offline-tok-s "$OFFLINE")

SERVE="$MODEL --load-format dummy --dtype bfloat16 --max-model-len 1024 \
--max-num-batched-tokens 8192 --max-num-seqs 256 --disable-log-stats --shutdown-timeout 5"
mark "2 bench serve inf: core-process fresh start, then warm start"
rm -rf "$D/cache-serve"; mkdir -p "$D/cache-serve"
budget 130 "2 serve inf" && VLLM_CACHE_ROOT="$D/cache-serve" timeout 150 \
    python3 benchmarks/serve_split.py --modes core-process,core-process \
    --serve-args "$SERVE" --num-prompts 1000 --input-len 512 --output-len 256 \
    --request-rate inf "${OFFARG[@]}" --startup-timeout 60 --bench-timeout 55 \
    --log-dir "$D/serve-inf" --output "$D/serve.jsonl" > "$D/serve-inf.log" 2>&1 \
    || mark "2 serve inf FAILED rc=$?"
grep -h "start-up phases" "$D"/serve-inf/server-*.log 2>/dev/null

mark "3 bench serve 32 and 64 req/s: core-process"
budget 290 "3 serve 32,64" && VLLM_CACHE_ROOT="$D/cache-serve" timeout 100 \
    python3 benchmarks/serve_split.py --modes core-process --serve-args "$SERVE" \
    --num-prompts 1000 --input-len 512 --output-len 256 --request-rate 32,64 \
    --startup-timeout 40 --bench-timeout 45 --log-dir "$D/serve-rates" \
    --output "$D/serve.jsonl" > "$D/serve-rates.log" 2>&1 || mark "3 serve rates FAILED rc=$?"
fi
want fi || { mark "done (no fi)"; grep -h '^{' "$D"/*.jsonl 2>/dev/null; exit 0; }

mark "4 flashinfer install"
# The wheels come in .whl3/ or, split under the 64 MiB carry limit, in .whl3a/ + .whl3b/ (each
# carried by its own call; the flashinfer wheel is cut in two parts, joined here).
WHL=/tmp/whl3; mkdir -p "$WHL"
# A carried folder does not stay for the next call, /tmp does: a call carrying .whl3a can
# leave its part in /tmp/fiparts (mkdir -p /tmp/fiparts && cp .whl3a/* /tmp/fiparts/) for the
# call that carries .whl3b.
P=/tmp/fiparts; mkdir -p "$P"
cp "$ROOT"/.whl3a/* "$ROOT"/.whl3b/* "$P"/ 2>/dev/null
cp "$ROOT"/.whl3/*.whl "$P"/*.whl "$WHL"/ 2>/dev/null
if ls "$P"/*.part.aa "$P"/*.part.ab > /dev/null 2>&1; then
    cat "$P"/flashinfer_python-*.whl.part.aa "$P"/flashinfer_python-*.whl.part.ab \
        > "$WHL/flashinfer_python-0.7.4-py3-none-any.whl"
fi
if ls "$WHL"/flashinfer_python-*.whl > /dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --target /tmp/fi "$WHL"/*.whl \
        > "$D/fi-install.log" 2>&1 || mark "4 flashinfer install FAILED"
else
    mark "4 no wheels in .whl3: flashinfer steps will report it missing"
fi
export PYTHONPATH=/tmp/vc11:/tmp/fi:${PYTHONPATH#/tmp/vc11:}
export PATH="/tmp/fi/bin:$PATH"
export FLASHINFER_WORKSPACE_BASE=${FLASHINFER_WORKSPACE_BASE:-$D/fi-cache}   # its JIT cache
export VLLM_CACHE_ROOT="$D/cache-offline"           # warm: step 1 compiled the Triton kernels
python3 -c "import flashinfer; print('flashinfer', flashinfer.__version__)" \
    > "$D/fi-import.log" 2>&1 || mark "4 flashinfer import FAILED (fi-import.log)"
mark "4a gpu-8b-b1 and gpu-8b: triton vs flashinfer"
# FlashInfer JIT-compiles its kernels with nvcc on first use ("several minutes": 50 s was not
# enough on the H200): ISSUE11_FI_TIMEOUT gives each of its workloads longer;
# ISSUE11_FI_BACKENDS / ISSUE11_FI_WORKLOADS narrow the comparison.
fi_timeout=${ISSUE11_FI_TIMEOUT:-50}
fi_workloads=${ISSUE11_FI_WORKLOADS:-gpu-8b-b1,gpu-8b}
n_workloads=$(( $(tr -cd , <<< "$fi_workloads" | wc -c) + 1 ))
if budget 350 "4a backends"; then
    for backend in ${ISSUE11_FI_BACKENDS:-triton flashinfer}; do
        t=50; [ "$backend" = flashinfer ] && t=$fi_timeout
        timeout $(( t * n_workloads + 15 )) python3 benchmarks/throughput_gpu.py \
            --workload "$fi_workloads" --systems vllm-core --attention-backend "$backend" \
            --timeout "$t" --output "$D/backends.jsonl" > "$D/backend-$backend.log" 2>&1 \
            || mark "4a $backend FAILED rc=$?"
    done
fi
find "$FLASHINFER_WORKSPACE_BASE" -name flashinfer_jit.log -exec tail -n 5 {} + 2>/dev/null
mark "4b flashinfer parity test"
budget 410 "4b flashinfer tests" && timeout 55 python3 -m pytest -q -x -p no:cacheprovider \
    platforms/cuda/tests/test_gpu_engine.py -k "flashinfer or selection_explains" \
    > "$D/fi-tests.log" 2>&1 || mark "4b flashinfer tests FAILED rc=$?"
tail -3 "$D/fi-tests.log"
mark "done"
grep -h '^{' "$D"/*.jsonl 2>/dev/null
