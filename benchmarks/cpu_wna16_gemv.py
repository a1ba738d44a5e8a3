"""The CPU plugin's ``wna16_linear`` at batch 1 (and small batches) on the embedded SmolLM2-135M's
shapes, against an fp32 ``F.linear`` of the same weight de-quantized (the peer, same process).

    python benchmarks/cpu_wna16_gemv.py [--rows 1] [--threads 1,2] [--peer-tree DIR]

One JSON line per (shape, threads): microseconds per call (``--int8``: the int8-activation
path, else the default fp32 products), the packed weight's bytes streamed
per second, and the ratio against the dense fp32 product measured in the same run; with
``--peer-tree`` (another checkout with its own ``.venv``) that tree's kernel is timed in a
subprocess right after, on the same shapes, and the ratio printed. CPU name / ISA and the
load average go with every line (a loaded machine stretches everything: compare ratios).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from cpu_facts import cpu_facts

#: (name, in_features, out_features, bits) of one SmolLM2-135M layer and its Q8_0 LM head
SHAPES = (("qkv", 576, 960, 4), ("o", 576, 576, 4), ("gate_up", 576, 3072, 4),
          ("down", 1536, 576, 4), ("lm_head", 576, 49152, 8))
COLD_BYTES = 96 << 20


def time_call(fn, copies: int, min_s: float) -> float:
    """Microseconds per ``fn(i)``, cycling i over ``copies`` weight copies (cold caches)."""
    for i in range(3):
        fn(i % copies)
    n, t0 = 0, time.perf_counter()
    while True:
        fn(n % copies)
        n += 1
        dt = time.perf_counter() - t0
        if dt >= min_s and n >= 10:
            return dt / n * 1e6


def measure(rows: int, threads: list[int], min_s: float, int8: bool = False) -> list[dict]:
    """Each shape's weight is held in enough copies (>= COLD_BYTES in all) that a call reads
    it from memory, as a decode step does (a 135M model's weights are ~80 MB), not from L2."""
    import torch
    import torch.nn.functional as F

    from vllm_core.model_executor.quantization.quantized_weights import (
        WNA16Weight,
        dequantize_wna16,
        pack_int32,
    )
    from vllm_core_cpu import quant_ops

    g = torch.Generator().manual_seed(0)
    out = []
    for name, k, n, bits in SHAPES:
        q = torch.randint(0, 2 ** bits, (k, n), generator=g)
        w = WNA16Weight(pack_int32(q, bits, 0), torch.rand(k // 32, n, generator=g) * 0.02,
                        torch.rand(k // 32, n, generator=g) * 2 ** bits, None, bits, 32, k, n)
        nbytes = w.qweight.numel() * 4 + w.scales.numel() * 4 * 2
        copies = -(-COLD_BYTES // nbytes)
        ws = [WNA16Weight(w.qweight.clone(), w.scales.clone(), w.zeros.clone(), None, bits, 32,
                          k, n) for _ in range(copies)]
        dense_copies = -(-COLD_BYTES // (k * n * 4))
        dense = [dequantize_wna16(w) for _ in range(dense_copies)]
        x = torch.randn(rows, k, generator=g)
        for t in threads:
            torch.set_num_threads(t)
            mode = (True,) if int8 else ()         # a peer tree's kernel has no mode
            us = time_call(lambda i, x=x, ws=ws, mode=mode: quant_ops.wna16_linear(
                x, ws[i], None, *mode), copies, min_s)
            us_dense = time_call(lambda i, x=x, dense=dense: F.linear(x, dense[i]),
                                 dense_copies, min_s)
            out.append({"shape": name, "k": k, "n": n, "bits": bits, "rows": rows, "threads": t,
                        "us_per_call": round(us, 1), "weight_gb_s": round(nbytes / us / 1e3, 2),
                        "dense_fp32_us": round(us_dense, 1),
                        "vs_dense_fp32": round(us_dense / us, 3),
                        "activations": "int8" if int8 else "float"})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=1)
    p.add_argument("--threads", default="1,2")
    p.add_argument("--min-s", type=float, default=0.3, help="seconds per timing")
    p.add_argument("--peer-tree", type=Path, default=None)
    p.add_argument("--int8", action="store_true",
                   help="this tree's int8-activation path (VLLM_CPU_WNA16_ACTIVATIONS=int8)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    threads = [int(t) for t in args.threads.split(",")]
    if args.child:
        print("GEMV " + json.dumps(measure(args.rows, threads, args.min_s)), flush=True)
        return 0
    facts = cpu_facts()
    load = os.getloadavg()[0]
    ours = measure(args.rows, threads, args.min_s, args.int8)
    peer = None
    if args.peer_tree is not None:
        tree = args.peer_tree.resolve()
        proc = subprocess.run([str(tree / ".venv/bin/python"), __file__, "--child", "--rows",
                               str(args.rows), "--min-s", str(args.min_s), "--threads", args.threads],
                              capture_output=True, text=True, check=False,
                              cwd=str(tree), env={**os.environ, "PYTHONPATH": str(tree)})
        found = [ln for ln in proc.stdout.splitlines() if ln.startswith("GEMV ")]
        peer = json.loads(found[-1][5:]) if found else None
        if peer is None:
            print(json.dumps({"peer_error": proc.stderr.strip().splitlines()[-3:]}))
    for i, line in enumerate(ours):
        line.update(facts, loadavg_before=round(load, 2),
                    loadavg_now=round(os.getloadavg()[0], 2))
        if peer is not None:
            line["peer_us_per_call"] = peer[i]["us_per_call"]
            line["vs_peer"] = round(peer[i]["us_per_call"] / line["us_per_call"], 3)
        print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
