"""The CPU plugin's W8A8 INT8 linear (``csrc/int8_gemm.cpp``) path by path against torch's
float ``F.linear`` (oneDNN) in float32 and bfloat16, at SmolLM2-135M's projections (the default
model), for a range of rows, all in one run.

Paths: ``vector`` (the ``[N, K]`` weight's unpacked dot products), ``amx`` where the CPU has
AMX-INT8 (the ``[N, K]`` weight repacked per call, from 16 rows), ``packed`` (AVX-512 VNNI on
the weight packed once, as the engine loads it by default) and ``packed_amx`` (AMX reading the
packed weight, from 16 rows). Each is timed as the engine calls it (activation quantization,
any per-call repack and the epilogue included), median of ``--reps`` calls after warm-up. One JSON line per
(rows, path): microseconds summed over the four projections of a decoder layer, with the CPU's
name and ISA; then a line per rows with each path's ratio to the fastest float ``F.linear``.

    python benchmarks/int8_linear_cpu.py [--rows 1,16,64,256,1024] [--threads 1] [--out F]
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "platforms" / "cpu")]

from cpu_facts import cpu_facts  # noqa: E402  (benchmarks/, on sys.path when run as a script)
from jsonl_out import emit  # noqa: E402
from timing import median_seconds  # noqa: E402

# (N, K) of SmolLM2-135M's fused q/k/v, o, gate/up and down projections
SHAPES = {"qkv": (960, 576), "o": (576, 576), "gate_up": (3072, 576), "down": (576, 1536)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", default="1,4,16,32,64,256,1024")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    import torch
    import torch.nn.functional as F

    from vllm_core.model_executor.quantization.quantized_weights import Int8Weight
    from vllm_core_cpu import int8_ops

    torch.set_num_threads(args.threads)
    if not int8_ops.kernels_available():
        raise SystemExit("the CPU plugin's kernels did not build here")
    facts = cpu_facts()
    g = torch.Generator().manual_seed(0)
    layers = {}
    for name, (n, k) in SHAPES.items():
        w = torch.randn(n, k, generator=g) * 0.05
        scale = w.abs().amax(1) / 127
        q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
        wq = Int8Weight(q, scale.float(), None)
        layers[name] = (w, w.bfloat16(), wq, int8_ops.pack(wq))
    paths = {"vector": (False, False)}
    if int8_ops.amx_ready():
        paths["amx"] = (True, False)
    if int8_ops.packed_built():
        paths["packed"] = (False, True)
        if int8_ops.amx_ready():
            paths["packed_amx"] = (True, True)
    for rows in (int(r) for r in args.rows.split(",")):
        x = torch.randn(rows, 576, generator=g)
        xd = torch.randn(rows, 1536, generator=g)
        totals: dict[str, float] = {}
        for name, (w32, w16, wq, wp) in layers.items():
            xin = xd if name == "down" else x
            xin16 = xin.bfloat16()
            cases = {"float32": functools.partial(F.linear, xin, w32),
                     "bfloat16": functools.partial(F.linear, xin16, w16)}
            for path, (amx, packed) in paths.items():
                cases[f"int8_{path}_bf16"] = functools.partial(
                    int8_ops.int8_linear, xin16, wp if packed else wq, None, allow_amx=amx)
            for case, fn in cases.items():
                totals[case] = totals.get(case, 0.0) + median_seconds(fn, args.reps, 3) * 1e6
        best_float = min(totals["float32"], totals["bfloat16"])
        for case, us in totals.items():
            emit({"bench": "int8_linear_cpu", "rows": rows, "case": case,
                  "layer_us": round(us, 1), "threads": args.threads, **facts}, args.out)
        emit({"bench": "int8_linear_cpu_ratio", "rows": rows, "threads": args.threads,
              **{f"{c}_vs_best_float": round(best_float / us, 3)
                 for c, us in totals.items() if c.startswith("int8")},
              "cpu": facts["cpu"], "isa": facts["isa"]}, args.out)


if __name__ == "__main__":
    main()
