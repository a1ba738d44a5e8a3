#!/usr/bin/env bash
# Issue 14, CUDA graphs per pipeline stage, on the two-H200 host (nvidia-h200-x2), from the
# repository root, <= 6 minutes (later steps are skipped when the budget is spent):
#   bash benchmarks/gpu_jobs/issue14_pp.sh
# In one run: gpu-8b at TP=1, at PP=2 micro-batched (stage graphs) and at PP=2 one step at a
# time (stage graphs); the summary line with the ratios; gpu-8b-b1 at TP=1 and at PP=2 and its
# summary; then the GPU tests of stage graphs (PP=2 greedy parity vs TP=1, both modes); then,
# if time is left, greedy parity PP=2 vs TP=1 on the 8B shape and the eager peer (PP=2
# micro-batched, --enforce-eager) for graphs vs eager in the same run. Each PP result line
# carries "ranks" (graph / eager steps per rank). Writes every JSON line and log under
# "$OUT/issue14_pp/" (results.jsonl; summary.jsonl with the ratios). Each step has its own
# time limit and a failed step does not stop the next one.
# Needs nothing carried: the machine's python holds torch, transformers, triton and pytest;
# this tree is installed with --no-deps into /tmp/issue14pp-site.
set -x
OUT=${OUT:-/tmp/out}
D="$OUT/issue14_pp"
mkdir -p "$D"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONUNBUFFERED=1
DEADLINE=$(( $(date +%s) + ${ISSUE14PP_BUDGET_S:-345} ))   # the whole job within 6 minutes
STEP_TAG=ISSUE14PP
. "$(dirname "$0")/steps.sh"   # step NAME LIMIT_S COMMAND...
rm -rf /tmp/issue14pp-site
python3 -m pip install -q --no-deps --no-build-isolation --no-compile --target /tmp/issue14pp-site \
    . platforms/cpu platforms/cuda platforms/triton > "$D/install.log" 2>&1 || tail "$D/install.log"
export PYTHONPATH=/tmp/issue14pp-site${PYTHONPATH:+:$PYTHONPATH}
python3 -c 'import torch; print(torch.__version__, torch.cuda.device_count())' | tee "$D/torch.log"
git log --oneline -1 2>&1 | tee "$D/commit.log"

B="python3 benchmarks/throughput_gpu.py --systems vllm-core"
# 1. gpu-8b: TP=1, PP=2 micro-batched, PP=2 one step at a time (same run, same prompts)
step 8b-tp1 60 $B --workload gpu-8b -tp 1 --output "$D/8b-tp1.jsonl"
step 8b-pp2-micro 75 $B --workload gpu-8b -pp 2 --pipeline-micro-batching --output "$D/8b-pp2-micro.jsonl"
step 8b-pp2-no-micro 75 $B --workload gpu-8b -pp 2 --no-pipeline-micro-batching \
    --output "$D/8b-pp2-no-micro.jsonl"

summary() {   # kind: the ratios of the result files present (one JSON line)
python3 - "$D" "$1" <<'EOF' | tee -a "$D/summary.jsonl"
import json, os, sys
d, kind = sys.argv[1], sys.argv[2]
def line(name):
    try:
        for ln in open(os.path.join(d, name + ".jsonl")):
            o = json.loads(ln)
            if o.get("system") == "vllm-core" and "output_tok_s" in o:
                return o
    except (OSError, ValueError):
        pass
    return {}
def ratio(a, b, key):
    x, y = line(a).get(key), line(b).get(key)
    return round(x / y, 3) if x and y else None
if kind == "8b":
    names = ("8b-tp1", "8b-pp2-micro", "8b-pp2-no-micro", "8b-pp2-micro-eager")
    out = {"kind": "issue14_pp_graphs_summary",
           **{f"{n}_output_tok_s": line(n).get("output_tok_s") for n in names},
           "pp2_micro_vs_tp1": ratio("8b-pp2-micro", "8b-tp1", "output_tok_s"),
           "pp2_no_micro_vs_tp1": ratio("8b-pp2-no-micro", "8b-tp1", "output_tok_s"),
           "pp2_micro_vs_no_micro": ratio("8b-pp2-micro", "8b-pp2-no-micro", "output_tok_s"),
           "pp2_micro_graphs_vs_eager": ratio("8b-pp2-micro", "8b-pp2-micro-eager",
                                              "output_tok_s"),
           "bar_pp2_vs_tp1": 1.5,
           "ranks_pp2_micro": line("8b-pp2-micro").get("ranks"),
           "ranks_pp2_no_micro": line("8b-pp2-no-micro").get("ranks")}
else:
    a, b = line("b1-tp1"), line("b1-pp2")
    out = {"kind": "issue14_pp_graphs_b1_summary", "tp1_tpot_ms": a.get("tpot_ms"),
           "pp2_tpot_ms": b.get("tpot_ms"), "tp1_decode_tok_s": a.get("decode_tok_s"),
           "pp2_decode_tok_s": b.get("decode_tok_s"),
           "pp2_vs_tp1_decode": ratio("b1-pp2", "b1-tp1", "decode_tok_s"),
           "ranks_pp2": b.get("ranks")}
print(json.dumps(out))
EOF
}
summary 8b

# 2. batch-1 decode: TP=1 vs PP=2 (one step at a time: one request has nothing to overlap)
step b1-tp1 50 $B --workload gpu-8b-b1 -tp 1 --output "$D/b1-tp1.jsonl"
step b1-pp2 60 $B --workload gpu-8b-b1 -pp 2 --no-pipeline-micro-batching --output "$D/b1-pp2.jsonl"
summary b1

# 3. the GPU tests of stage graphs: PP=2 greedy parity vs TP=1, graphs on every stage
step gpu-tests 100 python3 -m pytest -q -m gpu -p no:cacheprovider -rfEs \
    platforms/cuda/tests/test_pipeline_graphs_gpu.py

# 4. if time is left: greedy parity PP=2 (stage graphs, one step at a time) vs TP=1 on the 8B
#    shape (bf16 random weights written once), then the eager peer of the micro-batched PP=2 run, and the summary again
step parity-pp2 110 python3 benchmarks/parallel_parity.py --layouts pp2 \
    --model-dir /tmp/issue14-8b --requests 8 --max-tokens 32
step 8b-pp2-micro-eager 75 $B --workload gpu-8b -pp 2 --pipeline-micro-batching --enforce-eager \
    --output "$D/8b-pp2-micro-eager.jsonl"
[ -s "$D/8b-pp2-micro-eager.jsonl" ] && summary 8b
echo "=== ISSUE14PP DONE $(date -u +%T)"
