"""W4A16 batch-1 GEMV on the GPU: the exact kernel against the factored one
(``VLLM_TRITON_WNA16_GEMV``), at the Llama-3.1-8B projections (GPTQ layout, group 128), with
a bf16 ``F.linear`` as the peer, all in one run. One JSON line per shape: microseconds and GB/s
of packed weights + scales read.

    python benchmarks/wna16_gemv_gpu.py [--rows 1]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "platforms" / "triton")]

SHAPES = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    import torch
    import torch.nn.functional as F
    from triton.testing import do_bench
    from vllm_core_triton.kernels.wna16 import wna16_linear

    from vllm_core.model_executor.quantization.quantized_weights import (
        pack_int32,
        wna16_linear_reference,
    )

    dev = torch.device("cuda")
    for name, (n, k) in SHAPES.items():
        gen = torch.Generator().manual_seed(0)
        q = torch.randint(0, 16, (k, n), generator=gen)
        qweight = pack_int32(q, 4, 0).to(dev)
        scales = (torch.rand(k // 128, n, generator=gen) * 0.02 + 0.005).to(dev, torch.bfloat16)
        zeros = torch.randint(0, 16, (k // 128, n), generator=gen).to(dev, torch.bfloat16)
        x = torch.randn(args.rows, k, device=dev, dtype=torch.bfloat16)
        w_bf16 = torch.randn(n, k, device=dev, dtype=torch.bfloat16)
        nbytes = qweight.numel() * 4 + scales.numel() * 2 + zeros.numel() * 2
        rec = {"bench": "wna16_gemv", "shape": name, "n": n, "k": k, "rows": args.rows,
               "weight_bytes": nbytes}
        outs = {}
        for mode in ("exact", "factored"):
            os.environ["VLLM_TRITON_WNA16_GEMV"] = mode

            run = functools.partial(wna16_linear, x, qweight, scales, zeros, None, 4, 128)

            outs[mode] = run().float()
            us = do_bench(run, warmup=25, rep=100, return_mode="median") * 1e3
            rec[f"{mode}_us"] = round(us, 2)
            rec[f"{mode}_GBps"] = round(nbytes / us / 1e3, 1)
        us = do_bench(functools.partial(F.linear, x, w_bf16), warmup=25, rep=100,
                      return_mode="median") * 1e3
        rec["bf16_linear_us"] = round(us, 2)
        rec["factored_vs_exact"] = round(rec["exact_us"] / rec["factored_us"], 3)
        rec["factored_vs_bf16"] = round(us / rec["factored_us"], 3)
        from vllm_core.model_executor.quantization.quantized_weights import WNA16Weight

        ref = wna16_linear_reference(x.float(), WNA16Weight(qweight, scales, zeros, None, 4,
                                                            128, k, n))
        rec["factored_rel_err"] = float((outs["factored"] - ref).norm() / ref.norm())
        rec["exact_rel_err"] = float((outs["exact"] - ref).norm() / ref.norm())
        line = json.dumps(rec)
        print(line, flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(line + "\n")


if __name__ == "__main__":
    main()
