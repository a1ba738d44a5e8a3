"""FP8 kernel micro-benchmarks on one NVIDIA GPU (sm >= 8.9), JSON lines with their peers
measured in the same run:

- ``fp8_linear``: Llama-3.1-8B projections (K x N), M rows: bf16 ``F.linear`` vs FP8 W8A8 with
  the activation quantized by the torch reference (``quantize_per_token``, eight launches) vs
  by our one-launch Triton kernel (``per_token_quant_fp8``), both then ``torch._scaled_mm``;
  also the quantization alone.
- ``fused_moe``: Qwen3-30B-A3B experts (E=128, H=2048, I=768, top-8), T tokens: bf16 kernels
  vs FP8 experts.

Times are CUDA-event medians over ``--iters`` runs after warm-up (eager launches, no graphs).
Run from the repository root: ``python benchmarks/fp8_kernels_gpu.py``.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics

import torch
import torch.nn.functional as F


def _time_ms(fn, iters: int) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def bench_linear(iters: int) -> None:
    from vllm_core_triton.kernels.quant_fp8 import per_token_quant_fp8

    from vllm_core.model_executor.quantization.quantized_weights import (
        FP8_MAX,
        quantize_per_token,
    )

    shapes = {"qkv": (4096, 6144), "o": (4096, 4096), "gate_up": (4096, 28672),
              "down": (14336, 4096)}
    for m in (1, 64, 256, 2048):
        for name, (k, n) in shapes.items():
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
            ws = (w.float().abs().amax(1, keepdim=True) / FP8_MAX)
            wq = (w.float() / ws).to(torch.float8_e4m3fn)
            sb = ws.view(1, -1).contiguous()

            def torch_quant(x=x):
                return quantize_per_token(x, FP8_MAX, None, torch.float8_e4m3fn)

            def fused_quant(x=x):
                return per_token_quant_fp8(x)

            def fp8_mm(quant, wq=wq, sb=sb):
                xq, sx = quant()
                return torch._scaled_mm(xq, wq.t(), scale_a=sx, scale_b=sb,
                                        out_dtype=torch.bfloat16)

            t = {"bf16": _time_ms(functools.partial(F.linear, x, w), iters),
                 "quant_torch": _time_ms(torch_quant, iters),
                 "quant_triton": _time_ms(fused_quant, iters),
                 "fp8_torch_quant": _time_ms(functools.partial(fp8_mm, torch_quant), iters),
                 "fp8_triton_quant": _time_ms(functools.partial(fp8_mm, fused_quant), iters)}
            print(json.dumps({"kind": "fp8_linear", "proj": name, "m": m, "k": k, "n": n,
                              **{f"{a}_ms": round(v, 4) for a, v in t.items()},
                              "quant_speedup": round(t["quant_torch"] / t["quant_triton"], 2),
                              "fp8_vs_bf16": round(t["bf16"] / t["fp8_triton_quant"], 3),
                              "fp8_old_vs_bf16": round(t["bf16"] / t["fp8_torch_quant"], 3)}),
                  flush=True)


def bench_moe(iters: int) -> None:
    from vllm_core_triton.kernels.fused_moe import fused_moe, fused_moe_fp8

    from vllm_core.model_executor.layers.fused_moe import select_experts
    from vllm_core.model_executor.quantization.fp8_moe import Fp8MoEWeight, quantize_experts

    e, h, i, k = 128, 2048, 768, 8
    w13 = torch.randn(e, 2 * i, h, device="cuda", dtype=torch.bfloat16) * 0.02
    w2 = torch.randn(e, h, i, device="cuda", dtype=torch.bfloat16) * 0.02
    q13, s13 = quantize_experts(w13)
    q2, s2 = quantize_experts(w2)
    w8 = Fp8MoEWeight(q13, s13, q2, s2)
    for t in (1, 16, 256, 2048):
        x = torch.randn(t, h, device="cuda", dtype=torch.bfloat16)
        weights, ids = select_experts(torch.randn(t, e, device="cuda"), k, renormalize=True)
        bf = _time_ms(functools.partial(fused_moe, x, w13, w2, weights, ids), iters)
        f8 = _time_ms(functools.partial(fused_moe_fp8, x, w8, weights, ids), iters)
        print(json.dumps({"kind": "fused_moe", "tokens": t, "experts": e, "hidden": h,
                          "inter": i, "top_k": k, "bf16_ms": round(bf, 4),
                          "fp8_ms": round(f8, 4), "fp8_vs_bf16": round(bf / f8, 3)}),
              flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--only", choices=("linear", "moe"), default=None)
    a = p.parse_args()
    print(json.dumps({"kind": "device", "name": torch.cuda.get_device_name(0),
                      "torch": torch.__version__}), flush=True)
    if a.only in (None, "linear"):
        bench_linear(a.iters)
    if a.only in (None, "moe"):
        bench_moe(a.iters)


if __name__ == "__main__":
    main()
