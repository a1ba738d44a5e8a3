# Sourced by the GPU jobs: ``step NAME LIMIT_S COMMAND...`` runs COMMAND with its output in
# "$D/NAME.log", its time limit shrunk to what is left until "$DEADLINE" (epoch seconds; a step
# with under 20 s left is skipped), then appends the log's JSON lines to "$D/results.jsonl",
# prints them and the log's tail, and never stops the job (a failed step is only reported).
# Markers read "=== $STEP_TAG STEP NAME: ...".
step() {
    local name=$1 limit=$2; shift 2
    local left=$(( DEADLINE - $(date +%s) ))
    if [ "$left" -lt 20 ]; then echo "=== $STEP_TAG STEP $name: SKIPPED (budget spent)"; return; fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "=== $STEP_TAG STEP $name: start $(date -u +%T)"
    timeout -k 10 "$limit" "$@" > "$D/$name.log" 2>&1
    local rc=$?
    grep -E '^\{' "$D/$name.log" | tee -a "$D/results.jsonl"
    tail -n "${STEP_TAIL:-25}" "$D/$name.log"
    echo "=== $STEP_TAG STEP $name: rc=$rc end $(date -u +%T)"
}
# ``install_tree DIR``: the checkout's core and GPU plugins installed under DIR (no deps, no
# build isolation) and DIR put first on PYTHONPATH, so that engine subprocesses import them.
install_tree() {
    python3 -m pip install -q --no-deps --no-build-isolation --no-compile --target "$1" \
        . platforms/cpu platforms/cuda platforms/triton > "$D/install.log" 2>&1 \
        || echo "=== $STEP_TAG install FAILED (see install.log)"
    export PYTHONPATH=$1${PYTHONPATH:+:$PYTHONPATH}
}
