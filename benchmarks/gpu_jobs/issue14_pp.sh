#!/usr/bin/env bash
# Issue 14, pipeline micro-batching, on the two-H200 host (nvidia-h200-x2), from the repository
# root, <= 6 minutes (later steps are skipped when the budget is spent):
#   bash benchmarks/gpu_jobs/issue14_pp.sh
# gpu-8b at TP=1, at PP=2 with micro-batching (one batch in flight per stage) and at PP=2
# without it, all in this run; gpu-8b-b1 at PP=2; gpu-8b-b1 at TP=1 and TP=2 (the worker's
# launch-before-answer order); then greedy parity PP=2 (micro-batched) vs TP=1 on the 8B shape
# if time is left. Writes every JSON line and log under "$OUT/issue14_pp/"
# (results.jsonl, and summary.jsonl with the ratios). Each step has its own time limit and a
# failed step does not stop the next one. Needs nothing carried: the machine's python holds
# torch, transformers and triton; this tree is installed with --no-deps into
# /tmp/issue14pp-site.
set -x
OUT=${OUT:-/tmp/out}
D="$OUT/issue14_pp"
mkdir -p "$D"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
DEADLINE=$(( $(date +%s) + ${ISSUE14PP_BUDGET_S:-350} ))   # the whole job within 6 minutes
step() {   # name timeout_s command...  (the limit shrinks to what is left of the budget)
    local name=$1 limit=$2; shift 2
    local left=$(( DEADLINE - $(date +%s) ))
    if [ "$left" -lt 25 ]; then echo "=== ISSUE14PP STEP $name: SKIPPED (budget spent)"; return; fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "=== ISSUE14PP STEP $name: start $(date -u +%T)"
    timeout -k 10 "$limit" "$@" > "$D/$name.log" 2>&1
    local rc=$?
    grep -E '^\{' "$D/$name.log" | tee -a "$D/results.jsonl"
    tail -n 20 "$D/$name.log"
    echo "=== ISSUE14PP STEP $name: rc=$rc end $(date -u +%T)"
}
rm -rf /tmp/issue14pp-site
python3 -m pip install -q --no-deps --no-build-isolation --no-compile --target /tmp/issue14pp-site \
    . platforms/cpu platforms/cuda platforms/triton > "$D/install.log" 2>&1 || tail "$D/install.log"
export PYTHONPATH=/tmp/issue14pp-site${PYTHONPATH:+:$PYTHONPATH}
python3 -c 'import torch; print(torch.__version__, torch.cuda.device_count())' | tee "$D/torch.log"

B="python3 benchmarks/throughput_gpu.py --systems vllm-core"
# 1. gpu-8b: TP=1, PP=2 micro-batched, PP=2 one step at a time (same run, same prompts)
step 8b-tp1 60 $B --workload gpu-8b -tp 1 --output "$D/8b-tp1.jsonl"
step 8b-pp2-micro 70 $B --workload gpu-8b -pp 2 --pipeline-micro-batching --output "$D/8b-pp2-micro.jsonl"
step 8b-pp2-no-micro 70 $B --workload gpu-8b -pp 2 --no-pipeline-micro-batching \
    --output "$D/8b-pp2-no-micro.jsonl"

# ratios (one JSON line), before the optional parity step
python3 - "$D" <<'EOF' | tee -a "$D/summary.jsonl"
import json, os, sys
d = sys.argv[1]
def tok_s(name):
    try:
        for line in open(os.path.join(d, name + ".jsonl")):
            o = json.loads(line)
            if o.get("system") == "vllm-core" and "output_tok_s" in o:
                return o["output_tok_s"]
    except OSError:
        return None
r = {k: tok_s(k) for k in ("8b-tp1", "8b-pp2-micro", "8b-pp2-no-micro")}
out = {"kind": "issue14_pp_summary", **{f"{k}_output_tok_s": v for k, v in r.items()}}
def ratio(a, b):
    return round(r[a] / r[b], 3) if r[a] and r[b] else None
out["pp2_micro_vs_tp1"] = ratio("8b-pp2-micro", "8b-tp1")
out["pp2_no_micro_vs_tp1"] = ratio("8b-pp2-no-micro", "8b-tp1")
out["pp2_micro_vs_no_micro"] = ratio("8b-pp2-micro", "8b-pp2-no-micro")
print(json.dumps(out))
EOF

# 3. batch-1 decode TP=1 vs TP=2 (the mp worker now launches step N+1 before it answers step N
#    when N+1 arrives first; issue 14 measured TPOT 3.72 ms at TP=2 before)
step b1-tp1 50 $B --workload gpu-8b-b1 -tp 1 --output "$D/b1-tp1.jsonl"
step b1-tp2 60 $B --workload gpu-8b-b1 -tp 2 --output "$D/b1-tp2.jsonl"
python3 - "$D" <<'EOF' | tee -a "$D/summary.jsonl"
import json, os, sys
d = sys.argv[1]
def line(name):
    try:
        for ln in open(os.path.join(d, name + ".jsonl")):
            o = json.loads(ln)
            if o.get("system") == "vllm-core" and "output_tok_s" in o:
                return o
    except OSError:
        pass
    return {}
a, b = line("b1-tp1"), line("b1-tp2")
out = {"kind": "issue14_b1_tp_summary", "tp1_tpot_ms": a.get("tpot_ms"),
       "tp2_tpot_ms": b.get("tpot_ms"), "tp1_decode_tok_s": a.get("decode_tok_s"),
       "tp2_decode_tok_s": b.get("decode_tok_s")}
if a.get("decode_tok_s") and b.get("decode_tok_s"):
    out["tp2_vs_tp1_decode"] = round(b["decode_tok_s"] / a["decode_tok_s"], 3)
print(json.dumps(out))
EOF

# 4. batch 1 at PP=2 (one request: nothing to overlap; the micro-batching overhead shows here)
step b1-pp2 50 $B --workload gpu-8b-b1 -pp 2 --pipeline-micro-batching --output "$D/b1-pp2.jsonl"

# 5. greedy parity PP=2 (micro-batched: the default) vs TP=1 on the 8B shape, if time is left
step parity-pp2 110 python3 benchmarks/parallel_parity.py --layouts pp2 \
    --model-dir /tmp/issue14-8b --requests 8 --max-tokens 32
echo "=== ISSUE14PP DONE $(date -u +%T)"
