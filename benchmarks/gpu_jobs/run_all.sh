#!/usr/bin/env bash
# Run several issues' GPU jobs in one device call (the device tool returns at most 8 files, so the
# jobs write under a staging folder that is packed into "$OUT/results.tar.gz" at the end).
#
#   bash benchmarks/gpu_jobs/run_all.sh issue12:360 issue16:300 ...   # name[:time limit in s]
#   bash benchmarks/gpu_jobs/run_all.sh --lanes 0:gpu_tests:300,ab:240 1:issue18:300
#
# With --lanes, each argument is GPU:spec[,spec...]: the lanes run at the same time, each lane's
# jobs one after another with CUDA_VISIBLE_DEVICES=GPU (one-GPU jobs side by side on a 2-GPU host).
#
# Installs the carried wheels (.whl, .whl2, .whl3: the GPU machine has no package index) and our
# distributions (no dependencies) into /tmp/site, keeps NVLink multicast off, then runs each
# benchmarks/gpu_jobs/<name>.sh with OUT pointing at the staging folder. A failing or timed-out
# job does not stop the others; each job's exit status is in summary.txt and printed at the end,
# followed by every JSON line the jobs wrote, so the call's output tail holds the figures.
set -uo pipefail
final=${OUT:?OUT must be set}
stage=/tmp/gpu_jobs_out
rm -rf "$stage" && mkdir -p "$stage"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONUNBUFFERED=1
wheels=()
for d in .whl .whl2 .whl3 .whl4; do [ -d "$d" ] && wheels+=("$d"/*.whl); done
if [ ${#wheels[@]} -gt 0 ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "${wheels[@]}"
fi
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target /tmp/site \
    . platforms/cpu platforms/cuda platforms/triton
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$stage/gpus.txt"
run_spec() {   # name[:limit]
    local spec=$1 name limit start rc
    name=${spec%%:*}; limit=${spec#*:}; [ "$limit" = "$spec" ] && limit=360
    start=$(date +%s)
    OUT=$stage timeout -k 15 "$limit" bash "benchmarks/gpu_jobs/$name.sh" >"$stage/$name.log" 2>&1
    rc=$?
    echo "$name rc=$rc wall_s=$(( $(date +%s) - start ))${CUDA_VISIBLE_DEVICES:+ gpu=$CUDA_VISIBLE_DEVICES}" \
        | tee -a "$stage/summary.txt"
}
if [ "${1:-}" = "--lanes" ]; then
    shift
    for lane in "$@"; do
        gpu=${lane%%:*}; specs=${lane#*:}
        ( export CUDA_VISIBLE_DEVICES=$gpu; IFS=,; for spec in $specs; do run_spec "$spec"; done ) &
    done
    wait
else
    for spec in "$@"; do run_spec "$spec"; done
fi
tar czf "$final/results.tar.gz" -C "$stage" .
echo "=== summary"; cat "$stage/summary.txt"
echo "=== JSON lines"; find "$stage" -name '*.jsonl' -print0 | xargs -0 -r grep -H '' | cut -c1-700
