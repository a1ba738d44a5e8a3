#!/usr/bin/env bash
# Same-run A/B of two source trees on one GPU machine (no package index needed).
#
#   bash benchmarks/ab_gpu.sh BASE_TREE OUT_DIR [WORKLOAD ...]
#
# BASE_TREE: another checkout of this repository (e.g. `git archive <rev> | tar -x -C .ab_base`).
# Each tree's distributions are installed without dependencies into their own --target folder
# (the machine's python already holds torch, transformers, triton); each workload then runs
# base and new alternately with each tree's own benchmarks/throughput_gpu.py (vllm-core only),
# appending the JSON lines to OUT_DIR/ab.jsonl with "tree": "base" / "new".
set -euo pipefail
base=$(cd "$1" && pwd); out=$2; shift 2
workloads=("${@:-gpu-8b gpu-8b-b1}")
new=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out"
install() {   # tree target
    local dists=("$1" "$1/platforms/cpu" "$1/platforms/cuda")
    [ -d "$1/platforms/triton" ] && dists+=("$1/platforms/triton")
    python3 -m pip install -q --no-deps --no-build-isolation --no-compile --target "$2" "${dists[@]}"
}
install "$base" /tmp/ab-base
install "$new" /tmp/ab-new
for w in ${workloads[@]}; do
    for tree in base new; do
        root=$base; [ $tree = new ] && root=$new
        PYTHONPATH=/tmp/ab-$tree python3 "$root/benchmarks/throughput_gpu.py" --workload "$w" \
            --systems vllm-core --output "$out/ab-$tree.jsonl" 2>&1 | grep -E '^\{' \
            | sed "s/^{/{\"tree\": \"$tree\", /" | tee -a "$out/ab.jsonl"
    done
done
