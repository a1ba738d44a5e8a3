"""The CPU plugin's paged-attention kernel (``csrc/paged_attention.cpp``) at decode, by KV-cache
dtype, against torch's SDPA over the same keys in a dense bf16 cache (what HF transformers
runs at decode), all in one run.

A decode batch of ``--rows`` sequences, each at ``--context`` cached tokens, SmolLM2-135M's
attention shape (9 query heads, 3 KV heads, head size 64; ``--heads`` / ``--kv-heads`` /
``--head-size`` change it), blocks of 16 scattered over the cache. Cases: the kernel over a
cache in bfloat16 (the activation dtype), float8 e4m3 (``--kv-cache-dtype fp8``) and e5m2, and
``sdpa_dense_bf16`` (``F.scaled_dot_product_attention`` on contiguous [rows, kv_heads,
context, head_size] K / V, query heads grouped). Each is the median of ``--reps`` calls after
warm-up. One JSON line per case (microseconds per layer call and the K / V bytes it reads),
with the CPU's name and ISA, then one line of ratios against ``sdpa_dense_bf16`` and the bf16
cache.

    python benchmarks/paged_attention_cpu.py [--rows 64] [--context 256] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "platforms" / "cpu")]

from cpu_facts import cpu_facts  # noqa: E402  (benchmarks/, on sys.path when run as a script)
from jsonl_out import emit  # noqa: E402
from timing import median_seconds  # noqa: E402

BLOCK = 16


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--heads", type=int, default=9)
    ap.add_argument("--kv-heads", type=int, default=3)
    ap.add_argument("--head-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    import torch
    import torch.nn.functional as F

    from vllm_core.attention.kv_scales import quantize_kv
    from vllm_core_cpu.kernels import load_kernels

    if not load_kernels():
        raise SystemExit("the CPU plugin's kernels did not build here")
    torch.set_num_threads(args.threads)
    n, h, hkv, d, ctx = args.rows, args.heads, args.kv_heads, args.head_size, args.context
    g = torch.Generator().manual_seed(0)
    per_seq = -(-(ctx + 1) // BLOCK)
    num_blocks = n * per_seq + 1
    blocks = (torch.randperm(num_blocks - 1, generator=g) + 1).view(n, per_seq)
    k = torch.randn(num_blocks, BLOCK, hkv, d, generator=g) * 0.5
    v = torch.randn(num_blocks, BLOCK, hkv, d, generator=g) * 0.5
    q = torch.randn(n, h, d, generator=g).bfloat16()
    req, pos = torch.arange(n), torch.full((n,), ctx, dtype=torch.long)
    scale = d ** -0.5
    facts = cpu_facts()
    cases, bytes_read = {}, {}
    for name, dtype in (("paged_bf16", torch.bfloat16), ("paged_fp8_e4m3", torch.float8_e4m3fn),
                        ("paged_fp8_e5m2", torch.float8_e5m2)):
        kc, vc = quantize_kv(k, None, dtype), quantize_kv(v, None, dtype)
        cases[name] = (lambda kc=kc, vc=vc: torch.ops.vllm_core_cpu.paged_attention(
            q, kc, vc, blocks, req, pos, scale, 0))
        bytes_read[name] = 2 * n * (ctx + 1) * hkv * d * kc.element_size()
    # the same keys, dense and contiguous per sequence
    dense_k = k[blocks].reshape(n, -1, hkv, d)[:, :ctx + 1].transpose(1, 2).bfloat16().contiguous()
    dense_v = v[blocks].reshape(n, -1, hkv, d)[:, :ctx + 1].transpose(1, 2).bfloat16().contiguous()
    qg = q.view(n, hkv, h // hkv, d)
    cases["sdpa_dense_bf16"] = lambda: F.scaled_dot_product_attention(qg, dense_k, dense_v,
                                                                      scale=scale)
    bytes_read["sdpa_dense_bf16"] = 2 * dense_k.numel() * 2
    us = {}
    for name, fn in cases.items():
        try:
            us[name] = median_seconds(fn, args.reps, 5) * 1e6
        except RuntimeError as e:        # a build without that cache dtype
            emit({"bench": "paged_attention_cpu", "case": name, "error": str(e)[:200]},
                  args.out)
            continue
        emit({"bench": "paged_attention_cpu", "case": name, "call_us": round(us[name], 1),
              "kv_mb": round(bytes_read[name] / 1e6, 2), "rows": n, "context": ctx,
              "heads": h, "kv_heads": hkv, "head_size": d, "threads": args.threads, **facts},
             args.out)
    emit({"bench": "paged_attention_cpu_ratio", "rows": n, "context": ctx, "threads": args.threads,
          **{f"{c}_vs_sdpa_dense_bf16": round(us["sdpa_dense_bf16"] / t, 3)
             for c, t in us.items() if c.startswith("paged")},
          **{f"{c}_vs_paged_bf16": round(us["paged_bf16"] / t, 3)
             for c, t in us.items() if c.startswith("paged_fp8") and "paged_bf16" in us},
          "cpu": facts["cpu"], "isa": facts["isa"]}, args.out)


if __name__ == "__main__":
    main()
