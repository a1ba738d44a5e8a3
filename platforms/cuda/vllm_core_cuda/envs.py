"""Environment variables of the CUDA plugin, read here and nowhere else in it (the core's
are in ``vllm_core.envs``)."""

from __future__ import annotations

from vllm_core.envs import get


def cuda_gemv_max_rows() -> int:
    """VLLM_CUDA_GEMV_MAX_ROWS: linear layers with at most this many rows (decode batches) use
    the CUDA plugin's Triton skinny GEMM instead of cuBLAS; 0 turns it off. Default 1: it beats
    cuBLAS at one row (batch-1 decode) and loses from two rows on (measured on an H200)."""
    raw = get("VLLM_CUDA_GEMV_MAX_ROWS")
    if raw is None:
        return 1
    try:
        value = int(raw)
    except ValueError as e:
        raise ValueError(f"VLLM_CUDA_GEMV_MAX_ROWS must be an integer 0..8, got {raw!r}") from e
    if not 0 <= value <= 8:
        raise ValueError(f"VLLM_CUDA_GEMV_MAX_ROWS must be an integer 0..8, got {raw!r}")
    return value
