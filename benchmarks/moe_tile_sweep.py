"""Tile sweep of the fused-MoE Triton kernels for one expert shape on the GPU.

For each batch size (rows = tokens x top_k) times every candidate ``MoETileConfig`` (CUDA
events, median of ``--reps``), prints one JSON line per (tokens, config) and, per batch size,
the best config with its speed-up over the default; the last line is the
``MOE_TILE_CONFIGS`` entry to paste into ``vllm_core_triton/kernels/fused_moe_configs.py``.

    python benchmarks/moe_tile_sweep.py                     # Qwen3-30B-A3B experts, bf16
    python benchmarks/moe_tile_sweep.py --inter 384         # the same at TP=2
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "platforms" / "triton")]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--experts", type=int, default=128)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--inter", type=int, default=768)
    ap.add_argument("--top-k", type=int, default=8)
    ap.add_argument("--tokens", default="1,16,64,256,1024,4096")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--quick", action="store_true", help="fewer candidates")
    ap.add_argument("--wide", action="store_true",
                    help="also BLOCK_M 128 and BLOCK_N 256 (prefill), with BLOCK_M kept near "
                         "the rows per expert of each batch size")
    ap.add_argument("--write", default=None,
                    help="write the best configs as a VLLM_MOE_TILE_CONFIG file (updated after "
                         "every batch size)")
    args = ap.parse_args()
    import torch
    from vllm_core_triton.kernels.fused_moe import fused_moe
    from vllm_core_triton.kernels.fused_moe_configs import MoETileConfig, default_config

    from vllm_core.model_executor.layers.fused_moe import select_experts

    dev = torch.device("cuda")
    e, h, i, k = args.experts, args.hidden, args.inter, args.top_k
    w13 = 0.02 * torch.randn(e, 2 * i, h, device=dev, dtype=torch.bfloat16)
    w2 = 0.02 * torch.randn(e, h, i, device=dev, dtype=torch.bfloat16)
    grid = dict(block_m=[16, 32, 64], block_n=[64, 128], block_k=[64, 128], warps=[4, 8],
                stages=[3, 4])
    if args.quick:
        grid.update(block_k=[64], stages=[3])
    if args.wide:
        grid.update(block_m=[16, 32, 64, 128], block_n=[64, 128, 256])
    candidates = [MoETileConfig(m, n, n, kk, wp, st) for m, n, kk, wp, st in itertools.product(
        grid["block_m"], grid["block_n"], grid["block_k"], grid["warps"], grid["stages"])]
    best_entries = []
    for t in (int(s) for s in args.tokens.split(",")):
        x = torch.randn(t, h, device=dev, dtype=torch.bfloat16)
        w, ids = select_experts(torch.randn(t, e, device=dev), k, True)

        def time_ms(cfg: MoETileConfig, problem=(x, w13, w2, w, ids)) -> float:
            fused_moe(*problem, config=cfg)
            times = []
            for _ in range(args.reps):
                s, f = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                s.record()
                fused_moe(*problem, config=cfg)
                f.record()
                f.synchronize()
                times.append(s.elapsed_time(f))
            return statistics.median(times)

        default = default_config(t * k, e)
        base = time_ms(default)
        best, best_ms = default, base
        per_expert = t * k / e
        for cfg in candidates:
            if args.wide and not (per_expert / 8 <= cfg.block_m <= max(32, 2 * per_expert)):
                continue             # blocks far from the rows per expert: never the best
            try:
                ms = time_ms(cfg)
            except Exception as exc:  # noqa: BLE001 - a config the GPU cannot run
                print(json.dumps({"tokens": t, "config": asdict(cfg), "error": str(exc)[:200]}))
                continue
            print(json.dumps({"bench": "moe_tile_sweep", "tokens": t, "rows": t * k,
                              "config": asdict(cfg), "ms": round(ms, 4)}), flush=True)
            if ms < best_ms:
                best, best_ms = cfg, ms
        # bytes of the experts actually used, for a bandwidth figure
        used = int(torch.unique(ids).numel())
        gbs = used * 3 * h * i * 2 / (best_ms / 1e3) / 1e9
        print(json.dumps({"bench": "moe_tile_best", "tokens": t, "rows": t * k,
                          "experts": e, "hidden": h, "inter": i, "best": asdict(best),
                          "best_ms": round(best_ms, 4), "default_ms": round(base, 4),
                          "speedup_vs_default": round(base / best_ms, 3),
                          "expert_weight_gb_s": round(gbs, 1),
                          "tflop_s": round(t * k * 3 * h * i * 2 / (best_ms / 1e3) / 1e12, 1)}),
              flush=True)
        best_entries.append((t * k, best))
        if args.write:
            Path(args.write).write_text(json.dumps(
                {f"{e},{h},{i},bfloat16": [[rows, asdict(cfg)] for rows, cfg in best_entries]},
                indent=1))
    entry = [(rows, f"MoETileConfig(**{asdict(cfg)})") for rows, cfg in best_entries]
    print(json.dumps({"bench": "moe_tile_entry",
                      "key": [e, h, i, "bfloat16"], "entries": entry}), flush=True)


if __name__ == "__main__":
    main()
