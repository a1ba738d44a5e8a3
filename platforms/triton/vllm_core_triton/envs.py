"""Environment variables of the portable Triton kernels, read here and nowhere else in the
package (the core's are in ``vllm_core.envs``)."""

from __future__ import annotations

from vllm_core.envs import get


def moe_tile_config_file() -> str | None:
    """VLLM_MOE_TILE_CONFIG: a JSON file of fused-MoE tile configurations written by
    ``benchmarks/moe_tile_sweep.py --write`` (merged over the built-in table; unset: none)."""
    return get("VLLM_MOE_TILE_CONFIG")


def decode_attention_tiles() -> tuple[int, int, int] | None:
    """VLLM_TRITON_DECODE_ATTENTION_TILES: ``tile_n,num_warps,num_stages`` for decode-only
    attention launches (benchmarks compare launch plans in one run; unset: the heuristic).
    ValueError naming the variable when it is not three positive integers."""
    raw = get("VLLM_TRITON_DECODE_ATTENTION_TILES")
    if not raw:
        return None
    try:
        tile_n, warps, stages = (int(v) for v in raw.split(","))
    except ValueError:
        tile_n = warps = stages = 0
    if min(tile_n, warps, stages) <= 0:
        raise ValueError(f"VLLM_TRITON_DECODE_ATTENTION_TILES={raw!r}: expected "
                         "'tile_n,num_warps,num_stages', e.g. '64,4,3'")
    return tile_n, warps, stages


def wna16_gemv() -> str:
    """VLLM_TRITON_WNA16_GEMV: the batch-1..4 W4A16 / W8A16 kernel, ``factored`` (default:
    the group scale out of the inner product, for weights without ``g_idx`` whose groups are a
    multiple of 128; the exact kernel serves the others), ``exact`` (the reference's
    rounding of every weight to the activation dtype, everywhere) or ``tc`` (opt-in: tensor-core
    dots on nibbles turned into fp16 / bf16, 1-16 rows of fp16 / bf16 activations, 4-bit
    weights without ``g_idx``, groups a multiple of 128; ``factored`` serves the rest;
    ``kernels/wna16.py``). ValueError naming the variable for another value."""
    mode = get("VLLM_TRITON_WNA16_GEMV") or "factored"
    if mode not in ("exact", "factored", "tc"):
        raise ValueError(f"VLLM_TRITON_WNA16_GEMV={mode!r}: expected 'exact', 'factored' or "
                         "'tc'")
    return mode


def wna16_gemv_tiles() -> tuple[int, int, int, int, int, int, int] | None:
    """VLLM_TRITON_WNA16_GEMV_TILES: ``block_n,block_k,num_warps,num_stages,waves[,early[,
    pairs]]`` of the batch-1..4 W4A16 / W8A16 GEMV (``kernels/wna16.py`` ``GemvTiles``;
    ``early`` and ``pairs`` 0 or 1, 0 when left out; unset: its default). ValueError naming
    the variable unless five positive integers (``block_n`` and ``block_k`` powers of two,
    ``block_k`` at least 32) and the optional flags."""
    raw = get("VLLM_TRITON_WNA16_GEMV_TILES")
    if not raw:
        return None
    try:
        vals = tuple(int(v) for v in raw.split(","))
    except ValueError:
        vals = ()
    if 5 <= len(vals) <= 7:
        vals += (0,) * (7 - len(vals))
    ok = (len(vals) == 7 and min(vals[:5]) > 0 and vals[1] >= 32 and vals[5] in (0, 1)
          and vals[6] in (0, 1) and all(v & (v - 1) == 0 for v in vals[:2]))
    if not ok:
        raise ValueError(f"VLLM_TRITON_WNA16_GEMV_TILES={raw!r}: expected 'block_n,block_k,"
                         "num_warps,num_stages,waves[,early_scales 0|1[,half_pairs 0|1]]', e.g. "
                         "'256,128,4,1,4'")
    return vals  # type: ignore[return-value]
