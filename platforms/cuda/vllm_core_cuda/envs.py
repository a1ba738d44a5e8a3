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


def _bytes(name: str, default: int) -> int:
    raw = get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError as e:
        raise ValueError(f"{name} must be a number of bytes (an integer >= 0), got {raw!r}") from e
    if value < 0:
        raise ValueError(f"{name} must be a number of bytes (an integer >= 0), got {raw!r}")
    return value


def fast_all_reduce() -> bool:
    """VLLM_CUDA_FAST_ALL_REDUCE: ``1`` (default) lets tensor-parallel ranks all-reduce small
    messages through torch's symmetric memory (one-shot / two-shot kernels over peer memory,
    capturable in CUDA graphs); ``0`` keeps NCCL for everything (and eager with TP > 1)."""
    raw = get("VLLM_CUDA_FAST_ALL_REDUCE")
    if raw is None:
        return True
    if raw not in ("0", "1"):
        raise ValueError(f"VLLM_CUDA_FAST_ALL_REDUCE must be 0 or 1, got {raw!r}")
    return raw == "1"


def one_shot_max_bytes() -> int:
    """VLLM_CUDA_ONE_SHOT_MAX_BYTES: all-reduces up to this size use the one-shot kernel (each
    rank reads every peer's whole message); default 1 MiB."""
    return _bytes("VLLM_CUDA_ONE_SHOT_MAX_BYTES", 2**20)


def symm_mem_buffer_bytes() -> int:
    """VLLM_CUDA_SYMM_MEM_BYTES: the symmetric buffer per rank; all-reduces above the one-shot
    limit and up to this size use the two-shot kernel (reduce-scatter + all-gather over peer
    memory), larger ones NCCL. Default 8 MiB; the worker grows it to hold the largest captured
    decode batch, so every graph's all-reduce fits."""
    return _bytes("VLLM_CUDA_SYMM_MEM_BYTES", 8 * 2**20)


def cuda_wna16_kernel() -> str:
    """VLLM_CUDA_WNA16_KERNEL: what serves W4A16 linears over 1-8 rows (decode), ``cuda``
    (default: this plugin's tensor-core GEMV, ``wna16_mma.py``, built with nvcc at the first
    W4A16 weight; what it does not serve, every step over 8 rows, and a failed build stay on
    Triton) or ``triton`` (the Triton plugin's GEMV / GEMM,
    ``vllm_core_triton/kernels/wna16.py``)."""
    mode = get("VLLM_CUDA_WNA16_KERNEL") or "cuda"
    if mode not in ("triton", "cuda"):
        raise ValueError(f"VLLM_CUDA_WNA16_KERNEL={mode!r}: expected 'triton' or 'cuda'")
    return mode


def cuda_wna16_plan() -> int | None:
    """VLLM_CUDA_WNA16_PLAN: warps a block (2, 4, 8 or 16) of the tensor-core W4A16 GEMV for
    every shape; unset: chosen per shape (``wna16_mma.default_plan``)."""
    raw = get("VLLM_CUDA_WNA16_PLAN")
    if not raw:
        return None
    if raw not in ("2", "4", "8", "16"):
        raise ValueError(f"VLLM_CUDA_WNA16_PLAN={raw!r}: expected 2, 4, 8 or 16 (warps)")
    return int(raw)


def _flag(name: str, default: bool) -> bool:
    raw = get(name)
    if not raw:
        return default
    if raw not in ("0", "1"):
        raise ValueError(f"{name} must be 0 or 1, got {raw!r}")
    return raw == "1"


def cuda_wna16_pdl() -> bool:
    """VLLM_CUDA_WNA16_PDL: ``1`` launches the tensor-core W4A16 GEMV with programmatic
    dependent launch (its first weight loads overlap the previous kernel's end; sm_90);
    default ``0``."""
    return _flag("VLLM_CUDA_WNA16_PDL", False)


def cuda_wna16_pack() -> bool:
    """VLLM_CUDA_WNA16_PACK: ``1`` gives W4A16 weights the tensor-core GEMV serves its packed
    layout at load (``wna16_mma.pack``: contiguous per block of outputs; a second copy beside
    the GPTQ tensors, which the Triton kernels keep using: twice the weights' memory for a
    ~19% faster GEMV); ``0`` (default) reads GPTQ as loaded."""
    return _flag("VLLM_CUDA_WNA16_PACK", False)
