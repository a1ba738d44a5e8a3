"""Measure the torch MoE forms (gather / sorted / padded; ``layers/fused_moe/torch_moe.py``)
on this CPU at decode and prefill batch sizes, to set ``GATHER_MAX_ROWS``.

Prints one JSON line per (form, tokens) with the median time and the ratio to the fastest
form at that size, plus the load average and the CPU. Times on a shared machine are noisy:
compare forms within one run only.

  python benchmarks/moe_cpu_paths.py [--hidden 512 --inter 256 --experts 64 --top-k 8]
"""

from __future__ import annotations

import argparse
import json
import os
import platform

import torch
from timing import median_seconds  # benchmarks/, on sys.path when run as a script

from vllm_core.model_executor.layers.fused_moe import select_experts
from vllm_core.model_executor.layers.fused_moe.torch_moe import torch_fused_moe

GATHER_MAX_BYTES = 2 << 30


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--inter", type=int, default=256)
    ap.add_argument("--experts", type=int, default=64)
    ap.add_argument("--top-k", type=int, default=8)
    ap.add_argument("--tokens", default="1,2,4,8,16,64,256,1024")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)
    gen = torch.Generator().manual_seed(0)
    h, i, e, k = args.hidden, args.inter, args.experts, args.top_k
    w13 = (0.05 * torch.randn(e, 2 * i, h, generator=gen)).to(dtype)
    w2 = (0.05 * torch.randn(e, h, i, generator=gen)).to(dtype)
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo")
                   if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    for t in (int(s) for s in args.tokens.split(",")):
        x = torch.randn(t, h, generator=gen).to(dtype)
        w, ids = select_experts(torch.randn(t, e, generator=gen), k, True)
        results = {}
        for form in ("gather", "sorted", "padded"):
            if form == "gather" and t * k * 3 * i * h * w13.element_size() > GATHER_MAX_BYTES:
                continue
            results[form] = median_seconds(lambda f=form, a=(x, w13, w2, w, ids): torch_fused_moe(*a, f),
                                      args.reps)
        best = min(results.values())
        for form, s in results.items():
            print(json.dumps({"bench": "moe_cpu_paths", "form": form, "tokens": t,
                              "rows": t * k, "hidden": h, "inter": i, "experts": e,
                              "top_k": k, "dtype": args.dtype, "ms": round(s * 1e3, 3),
                              "vs_best": round(s / best, 2), "threads": torch.get_num_threads(),
                              "load_avg": os.getloadavg()[0], "cpu": cpu}), flush=True)


if __name__ == "__main__":
    main()
