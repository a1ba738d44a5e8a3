"""W4A16 batch-1 GEMV on the GPU: the exact kernel, the factored one and the tensor-core one
(``tc``; ``kernels/wna16.py``) over a grid of launch plans (``GemvTiles``), at the Llama-3.1-8B
projections (GPTQ layout, group 128), with a bf16 ``F.linear`` as the peer, all in one run.
``routed`` is ``wna16_linear`` as the engine calls it (the environment's kernel and plan; at
more than 4 rows the GEMM unless ``VLLM_TRITON_WNA16_GEMV=tc``), one plan.

Every call is timed inside a CUDA graph (``triton.testing.do_bench_cudagraph``), as the engine
runs decode steps. (Until 2026-12-01 it timed one launch at a time from Python with an L2 flush
before each, ``do_bench``; in one H200 command that gave 2-4x the previous command's times for
the same plan while the engine got faster with it.)

One JSON line per (kernel, plan): microseconds per projection and their sum over the four
projections of a decoder layer (``layer_us``), GB/s of packed weights + scales read, and the
relative error against the float32 reference; then one line per projection with bf16
``F.linear``; then a summary naming the fastest plan of each kernel (the sum over a layer),
its ratio to bf16 and ``tc_vs_factored`` (the factored kernel's best time over tc's best).
``--best FILE`` writes ``{"exact": "bn,bk,w,s,waves,early,pairs", "factored": ..., "tc": ...}`` for
``VLLM_TRITON_WNA16_GEMV_TILES``. ``--kernels`` picks the kernels (default all four),
``--quick`` runs every kernel at its default plan only, ``--quick-kernels a,b`` those only.

    python benchmarks/wna16_gemv_gpu.py [--rows 1] [--quick] [--kernels factored,tc]
        [--quick-kernels factored] [--best best.json] [--plans "256,128,4,3,1,0,1;..."]
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "platforms" / "triton")]

from jsonl_out import emit  # noqa: E402  (benchmarks/, on sys.path when run as a script)

SHAPES = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336)}


def plans(kernel: str, quick: bool, explicit: str = ""):
    from vllm_core_triton.kernels.wna16 import GemvTiles, default_gemv_tiles

    if kernel == "routed":
        return [None]
    if explicit:                # "bn,bk,w,s,waves,early,pairs;..." (the tag's form)
        out = []
        for tag in filter(None, explicit.split(";")):
            f = [int(v) for v in tag.split(",")]
            out.append(GemvTiles(*f[:5], early_scales=bool(f[5]), half_pairs=bool(f[6])))
        return out
    if quick:
        return [default_gemv_tiles(kernel)]
    if kernel == "exact":       # swept before (1-4 waves, 32-128 outputs, 1 and 3 stages)
        return [GemvTiles(bn, 128, 4, 1, 4) for bn in (64, 128)]
    if kernel == "tc":
        return [GemvTiles(bn, 128, w, 2, wv)
                for bn, w, wv in itertools.product((64, 128, 256), (4, 8), (1, 2, 4))]
    # factored: 256 outputs, 4 warps, 4 waves won one-launch timings before; wider programs,
    # 64-input steps, and the half-pair nibble conversion (``half_pairs``), graph-timed
    return [GemvTiles(bn, bk, w, 1, wv, half_pairs=pairs)
            for bn, bk, w, wv, pairs in itertools.product((256, 512), (64, 128), (4, 8), (4, 2),
                                                          (False, True))]


def kernel_call(kernel: str, tiles, x, qw, sc, zp):
    """The call of one projection through ``kernel`` with plan ``tiles``."""
    from vllm_core_triton.kernels.wna16 import wna16_gemv, wna16_gemv_tc, wna16_linear

    if kernel == "routed":
        return functools.partial(wna16_linear, x, qw, sc, zp, None, 4, 128, None)
    if kernel == "tc":
        return functools.partial(wna16_gemv_tc, x, qw, sc, zp, 128, None, tiles)
    return functools.partial(wna16_gemv, x, qw, sc, zp, None, 4, 128, None,
                             kernel == "factored", tiles)


def _graph_us(bench, fn) -> float:
    """Median microseconds of one ``fn()`` replayed in a CUDA graph (``fn`` ran eagerly
    once before, so the split-K counters exist before capture)."""
    return bench(fn, rep=40, return_mode="median") * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1)
    ap.add_argument("--out", default=None)
    ap.add_argument("--best", default=None)
    ap.add_argument("--quick", action="store_true", help="the default plans only")
    ap.add_argument("--kernels", default="exact,factored,tc,routed")
    ap.add_argument("--quick-kernels", default="", help="kernels run at their default plan")
    ap.add_argument("--plans", default="",
                    help="explicit plans for every kernel but routed, 'bn,bk,w,s,waves,early,"
                         "pairs;...' (VLLM_TRITON_WNA16_GEMV_TILES's form), instead of the grid")
    args = ap.parse_args()
    import torch
    import torch.nn.functional as F
    from triton.testing import do_bench_cudagraph

    from vllm_core.model_executor.quantization.quantized_weights import (
        WNA16Weight,
        pack_int32,
        wna16_linear_reference,
    )

    dev = torch.device("cuda")
    layers = {}
    for name, (n, k) in SHAPES.items():
        gen = torch.Generator().manual_seed(0)
        q = torch.randint(0, 16, (k, n), generator=gen)
        qweight = pack_int32(q, 4, 0).to(dev)
        scales = (torch.rand(k // 128, n, generator=gen) * 0.02 + 0.005).to(dev, torch.bfloat16)
        zeros = torch.randint(0, 16, (k // 128, n), generator=gen).to(dev, torch.bfloat16)
        x = torch.randn(args.rows, k, device=dev, dtype=torch.bfloat16)
        ref = wna16_linear_reference(x.float(), WNA16Weight(qweight, scales, zeros, None, 4,
                                                            128, k, n))
        nbytes = qweight.numel() * 4 + scales.numel() * 2 + zeros.numel() * 2
        layers[name] = (x, qweight, scales, zeros, ref, nbytes)
    best: dict[str, tuple[float, str]] = {}
    quick = set(args.quick_kernels.split(","))
    for kernel in args.kernels.split(","):
        for tiles in plans(kernel, args.quick or kernel in quick, args.plans):
            tag = "default" if tiles is None else tiles.tag()
            rec = {"bench": "wna16_gemv", "kernel": kernel, "tiles": tag, "rows": args.rows}
            total, worst_err = 0.0, 0.0
            try:
                for name, (x, qw, sc, zp, ref, nbytes) in layers.items():
                    run = kernel_call(kernel, tiles, x, qw, sc, zp)
                    err = float((run().float() - ref).norm() / ref.norm())  # also: buffers
                    us = _graph_us(do_bench_cudagraph, run)
                    rec[f"{name}_us"] = round(us, 2)
                    rec[f"{name}_GBps"] = round(nbytes / us / 1e3, 1)
                    total += us
                    worst_err = max(worst_err, err)
            except Exception as exc:  # a plan that does not compile is reported, not fatal
                rec["error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
                emit(rec, args.out)
                continue
            rec["layer_us"] = round(total, 2)
            rec["rel_err"] = worst_err
            emit(rec, args.out)
            if worst_err < 2e-2 and (kernel not in best or total < best[kernel][0]):
                best[kernel] = (total, tag)
    bf16_total = 0.0
    for name, (n, k) in SHAPES.items():
        x = layers[name][0]
        w = torch.randn(n, k, device=dev, dtype=torch.bfloat16)
        us = _graph_us(do_bench_cudagraph, functools.partial(F.linear, x, w))
        bf16_total += us
        emit({"bench": "wna16_gemv", "kernel": "bf16_linear", "shape": name,
              "us": round(us, 2), "GBps": round(n * k * 2 / us / 1e3, 1)}, args.out)
    summary = {"bench": "wna16_gemv_summary", "rows": args.rows,
               "bf16_layer_us": round(bf16_total, 2), "gpu": torch.cuda.get_device_name()}
    for kernel, (total, tag) in best.items():
        summary[f"{kernel}_best_tiles"] = tag
        summary[f"{kernel}_best_layer_us"] = round(total, 2)
        summary[f"{kernel}_vs_bf16"] = round(bf16_total / total, 3)
    if "tc" in best and "factored" in best:
        summary["tc_vs_factored"] = round(best["factored"][0] / best["tc"][0], 3)
    emit(summary, args.out)
    if args.best:
        Path(args.best).write_text(json.dumps({k: v[1] for k, v in best.items()
                                               if k != "routed"}))


if __name__ == "__main__":
    main()
