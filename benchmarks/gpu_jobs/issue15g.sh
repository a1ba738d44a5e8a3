#!/usr/bin/env bash
# Issue 15 (GGUF kept quantized) on the H200, from the repo root, in about 2 minutes:
#   1. platforms/triton/tests/test_gguf_wna16.py on the GPU: Q4_1 / Q4_K (group 32, float zero
#      points) and Q6_K (group 16, 8-bit storage) repacked by gguf_blocks through the Triton
#      WNA16 kernel against gguf.quants.dequantize + matmul;
#   2. a GEMV micro-benchmark at the 8B shapes (batch 1 and 16): a Q4_1-style int4 group-32
#      weight with float zeros through the Triton WNA16 kernel vs the same weight in bf16
#      (F.linear), JSON lines (CUDA events, median of 50).
# Needs nothing carried (the gguf package is a core dependency). Writes under "$OUT/issue15g/".
# A failing step does not stop the next one.
set -x
out="${OUT:?OUT must be set}/issue15g"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
echo "=== issue15g: environment"
python3 -c "import torch, gguf; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" 2>&1 | tee "$out/env.txt"
nvidia-smi --query-gpu=name,memory.total --format=csv 2>&1 | tee -a "$out/env.txt"

echo "=== issue15g: GPU tests"
timeout -k 10 120 python3 -m pytest -q -p no:cacheprovider platforms/triton/tests/test_gguf_wna16.py \
    2>&1 | tail -30 | tee "$out/tests.log"
echo "=== issue15g: GPU tests rc=${PIPESTATUS[0]}"

echo "=== issue15g: GEMV micro-benchmark"
timeout -k 10 150 python3 - <<'PY' 2>&1 | tee "$out/gemv.jsonl"
import json, statistics, torch
from vllm_core_triton.kernels.wna16 import wna16_linear
from vllm_core.model_executor.quantization.quantized_weights import pack_int32

dev = torch.device("cuda")
torch.manual_seed(0)
def timed(fn, n=50):
    for _ in range(5):
        fn()
    times = []
    for _ in range(n):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); fn(); b.record(); torch.cuda.synchronize()
        times.append(a.elapsed_time(b) * 1e3)
    return statistics.median(times)
for (k, n) in [(4096, 6144), (4096, 4096), (4096, 28672), (14336, 4096)]:
    q = torch.randint(0, 16, (k, n), device=dev)
    qweight = pack_int32(q, 4, 0)
    scales = (torch.rand(k // 32, n, device=dev) * 0.01).bfloat16()
    zeros = (torch.rand(k // 32, n, device=dev) * 16).bfloat16()    # float zeros (Q4_1: -m/d)
    w = ((q.float() - zeros.float().repeat_interleave(32, 0)) * scales.float().repeat_interleave(32, 0)).t().contiguous().bfloat16()
    for m in (1, 16):
        x = torch.randn(m, k, device=dev).bfloat16()
        tq = timed(lambda: wna16_linear(x, qweight, scales, zeros, None, 4, 32, None))
        tb = timed(lambda: torch.nn.functional.linear(x, w))
        print(json.dumps({"bench": "gguf_q4_gemv", "k": k, "n": n, "rows": m, "group": 32,
                          "triton_wna16_us": round(tq, 2), "bf16_linear_us": round(tb, 2),
                          "speedup_vs_bf16": round(tb / tq, 3)}), flush=True)
PY
echo "=== issue15g: GEMV rc=${PIPESTATUS[0]}"
echo "=== issue15g: done"
