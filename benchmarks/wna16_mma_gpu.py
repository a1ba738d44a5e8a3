"""W4A16 decode GEMV on one GPU: the CUDA plugin's tensor-core kernel (``vllm_core_cuda/
wna16_mma.py``; packed layout: the default plan, with programmatic dependent launch, and every
plan; GPTQ layout as loaded: every plan) against the Triton default (``wna16_linear`` as
``TritonLayerOps`` calls it: the factored GEMV at its default plan) and bf16 ``F.linear``, at
the Llama-3.1-8B projections (GPTQ, group 128, random zero points), 1 row by default. (With
``pdl`` the kernel before each call is the previous call, itself such a launch; in the engine it
is a Triton kernel.)

Timing as the engine runs decode: inside a CUDA graph, and over enough copies of each weight
(at least ``--rotate-mib`` of weights, one call each in turn) that no call finds its weight in
the L2 (60 MB on an H200; a decode step streams 3.5 GB of different layers through it). The
graph holds ``--calls`` calls at least; the time of a call is the median graph replay over the
calls in it, launch gaps included.

One JSON line per (kernel, plan, rows): microseconds and GB/s (packed weights + scales + zeros,
or bf16 weights) per projection, their sum over a decoder layer (``layer_us``) and the worst
relative error against the float32 reference; then a summary per row count: the layer times of
bf16, Triton, the CUDA default plan and the best CUDA plan per projection, and the ratios.

    python benchmarks/wna16_mma_gpu.py [--rows 1,4] [--out FILE]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "platforms" / "triton"), str(REPO / "platforms" / "cuda")]

from jsonl_out import emit  # noqa: E402  (benchmarks/, on sys.path when run as a script)

SHAPES = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336)}


def graph_us(fn: Callable[[], object], calls_per_fn: int, min_calls: int) -> float:
    """Median microseconds of one call, ``fn`` (``calls_per_fn`` calls) captured back to back
    in a CUDA graph until it holds ``min_calls`` calls, over 15 replays."""
    import torch

    reps = max(1, -(-min_calls // calls_per_fn))
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
        fn()
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(reps):
                fn()
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(15):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / (reps * calls_per_fn))
    del graph
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", default="1")
    ap.add_argument("--out", default=None)
    ap.add_argument("--rotate-mib", type=int, default=512)
    ap.add_argument("--calls", type=int, default=64)
    args = ap.parse_args()
    import torch
    import torch.nn.functional as F
    from vllm_core_triton.kernels.wna16 import wna16_linear

    from vllm_core.model_executor.quantization.quantized_weights import (
        WNA16Weight,
        wna16_linear_reference,
    )
    from vllm_core_cuda import wna16_mma
    from vllm_core_cuda.kernels import build_error

    err = build_error()
    if err is not None:
        raise SystemExit(f"the CUDA kernels are not available: {err}")
    dev, bf16 = torch.device("cuda"), torch.bfloat16
    rotate = args.rotate_mib * 2**20
    layers: dict[str, tuple[list[WNA16Weight], int]] = {}
    for name, (n, k) in SHAPES.items():
        nbytes = n * k // 2 + 2 * (k // 128) * n * 2
        copies = []
        for _ in range(max(1, -(-rotate // nbytes))):
            qweight = torch.randint(-2**31, 2**31 - 1, (k // 8, n), device=dev, dtype=torch.int32)
            scales = (torch.rand(k // 128, n, device=dev) * 0.02 + 0.005).to(bf16)
            zeros = torch.randint(0, 16, (k // 128, n), device=dev).to(bf16)
            copies.append(wna16_mma.pack(WNA16Weight(qweight, scales, zeros, None, 4, 128, k,
                                                     n)))
        layers[name] = (copies, nbytes)

    def cuda(plan: wna16_mma.MmaPlan | None, packed: bool = True):
        """The GEMV on the packed copy (``pack``) or on the GPTQ tensors as loaded."""
        if packed:
            return lambda x, w: wna16_mma.wna16_mma_linear(x, w, None, plan)
        return lambda x, w: wna16_mma.wna16_mma_linear(x, gptq_only(w), None, plan)

    def gptq_only(w: WNA16Weight) -> WNA16Weight:
        return WNA16Weight(w.qweight, w.scales, w.zeros, None, 4, 128, w.in_features,
                           w.out_features)

    default_plan = wna16_mma.default_plan
    kernels: list[tuple[str, str, Callable]] = [
        ("triton", "default", lambda x, w: wna16_linear(x, w.qweight, w.scales, w.zeros, None,
                                                        4, 128, None)),
        ("cuda", "default", cuda(None)),
        ("cuda", "default+pdl", lambda x, w: wna16_mma.wna16_mma_linear(
            x, w, None, wna16_mma.MmaPlan(default_plan(w.out_features).warps, True)))]
    kernels += [("cuda", f"{wv}", cuda(wna16_mma.MmaPlan(wv))) for wv in wna16_mma.WARPS]
    kernels += [("cuda-gptq", f"{wv}", cuda(wna16_mma.MmaPlan(wv), packed=False))
                for wv in wna16_mma.WARPS]
    for rows in (int(r) for r in args.rows.split(",")):
        xs = {name: torch.randn(rows, k, device=dev, dtype=bf16)
              for name, (n, k) in SHAPES.items()}
        refs = {name: wna16_linear_reference(xs[name].float(), layers[name][0][0])
                for name in SHAPES}
        layer_us: dict[str, float] = {}
        best: dict[str, tuple[float, str]] = {}
        for kernel, plan, call in kernels:
            rec = {"bench": "wna16_mma", "kernel": kernel, "plan": plan, "rows": rows}
            total, worst = 0.0, 0.0
            for name in SHAPES:
                copies, nbytes = layers[name]
                x = xs[name]
                got = call(x, copies[0]).float()
                worst = max(worst, float((got - refs[name]).norm() / refs[name].norm()))
                us = graph_us(lambda x=x, copies=copies, call=call: [call(x, w) for w in copies],
                              len(copies), args.calls)
                rec[f"{name}_us"] = round(us, 2)
                rec[f"{name}_GBps"] = round(nbytes / us / 1e3, 1)
                total += us
                if kernel == "cuda" and not plan.startswith("default") and (
                        name not in best or us < best[name][0]):
                    best[name] = (us, plan)
            rec["layer_us"] = round(total, 2)
            rec["rel_err"] = worst
            emit(rec, args.out)
            layer_us[f"{kernel}_{plan}"] = total
        bf16_total = 0.0
        for name, (n, k) in SHAPES.items():
            ws = [torch.randn(n, k, device=dev, dtype=bf16)
                  for _ in range(max(1, -(-rotate // (n * k * 2))))]
            x = xs[name]
            us = graph_us(lambda x=x, ws=ws: [F.linear(x, w) for w in ws], len(ws), args.calls)
            bf16_total += us
            emit({"bench": "wna16_mma", "kernel": "bf16_linear", "rows": rows, "shape": name,
                  "us": round(us, 2), "GBps": round(n * k * 2 / us / 1e3, 1)}, args.out)
            del ws
        best_total = sum(us for us, _ in best.values())
        triton, cuda_default = layer_us["triton_default"], layer_us["cuda_default"]
        emit({"bench": "wna16_mma_summary", "rows": rows, "gpu": torch.cuda.get_device_name(),
              "bf16_layer_us": round(bf16_total, 2), "triton_layer_us": round(triton, 2),
              "cuda_default_layer_us": round(cuda_default, 2),
              "cuda_default_pdl_layer_us": round(layer_us["cuda_default+pdl"], 2),
              "cuda_default_plans": {name: default_plan(n).warps for name, (n, _) in SHAPES.items()},
              "cuda_gptq_best_layer_us": round(min(v for key, v in layer_us.items()
                                                   if key.startswith("cuda-gptq")), 2),
              "cuda_best_layer_us": round(best_total, 2),
              "cuda_best_plans": {name: plan for name, (_, plan) in best.items()},
              "cuda_default_vs_triton": round(triton / cuda_default, 3),
              "cuda_default_vs_bf16": round(bf16_total / cuda_default, 3),
              "triton_vs_bf16": round(bf16_total / triton, 3)}, args.out)


if __name__ == "__main__":
    main()
