#!/usr/bin/env bash
# Re-run named GPU tests after a fix (one H200, from the repo root): RETEST="path::test ...".
set -x
out="${OUT:?OUT must be set}/retest"
mkdir -p "$out"
python3 -m pytest -q -p no:cacheprovider -rfEX ${RETEST:?RETEST must name the tests} 2>&1 \
    | tee "$out/pytest.log" | tail -15
