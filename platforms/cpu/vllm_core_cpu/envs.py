"""Environment variables of the CPU plugin, read here and nowhere else in it (the core's
are in ``vllm_core.envs``)."""

from __future__ import annotations

from vllm_core.envs import get


def cpu_kvcache_space_gib() -> float | None:
    """VLLM_CPU_KVCACHE_SPACE: KV cache size in GiB on CPU platforms (None: automatic)."""
    raw = get("VLLM_CPU_KVCACHE_SPACE")
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError as e:
        raise ValueError(f"VLLM_CPU_KVCACHE_SPACE must be a number of GiB, got {raw!r}") from e
    if value <= 0:
        raise ValueError(f"VLLM_CPU_KVCACHE_SPACE must be positive, got {raw!r}")
    return value


def cpu_num_threads() -> int | None:
    """VLLM_CPU_NUM_THREADS: torch intra-op threads on CPU platforms (None: cores available)."""
    raw = get("VLLM_CPU_NUM_THREADS")
    return int(raw) if raw is not None else None


def cpu_omp_threads_bind() -> str | None:
    """VLLM_CPU_OMP_THREADS_BIND: core list to bind OpenMP threads to, e.g. '0-3' (CPU plugin)."""
    return get("VLLM_CPU_OMP_THREADS_BIND")


WNA16_ACTIVATIONS = ("float", "int8")


def cpu_wna16_activations() -> str:
    """VLLM_CPU_WNA16_ACTIVATIONS: how the int4 / int8 weight-only kernel multiplies.
    ``float`` (default): fp32 products of the activations as given, the de-quantized model's
    numbers to fp32 rounding (HF parity). ``int8`` (x86 AVX2 builds): activations quantized to
    int8 per 32 inputs and integer dot products, llama.cpp's trade (several times faster at
    batch 1; greedy tokens equal or in the top 5 at the first divergence)."""
    raw = (get("VLLM_CPU_WNA16_ACTIVATIONS") or "float").strip().lower()
    if raw not in WNA16_ACTIVATIONS:
        raise ValueError(f"VLLM_CPU_WNA16_ACTIVATIONS must be one of {WNA16_ACTIVATIONS}, "
                         f"got {raw!r}")
    return raw


def _switch(name: str) -> bool:
    """An on/off variable, on by default: ``0`` / ``false`` or ``1`` / ``true`` (ValueError
    for anything else)."""
    raw = (get(name) or "1").strip().lower()
    if raw not in ("0", "1", "true", "false"):
        raise ValueError(f"{name} must be 0 or 1, got {raw!r}")
    return raw in ("1", "true")


def cpu_fused_decode() -> bool:
    """VLLM_CPU_FUSED_DECODE: run decode-only steps through the fused C++ decoder stack
    (``decode_stack.py``) where it applies (default ``1``); ``0`` keeps the module forward
    (the same numbers, more Python per layer)."""
    return _switch("VLLM_CPU_FUSED_DECODE")


def cpu_int8_amx() -> bool:
    """VLLM_CPU_INT8_AMX: let the W8A8 INT8 kernel use the AMX int8 tiles for calls of 16 rows
    or more where the CPU has them (default ``1``); ``0`` keeps the AVX-512 VNNI / AVX2 dot
    products (the same numbers, bit for bit)."""
    return _switch("VLLM_CPU_INT8_AMX")


def cpu_int8_packed() -> bool:
    """VLLM_CPU_INT8_PACKED: pack W8A8 INT8 weights once at load into the AVX-512 VNNI column
    layout that the VNNI and AMX paths read at every batch size (default ``1``; builds with
    AVX-512 VNNI); ``0`` keeps the ``[N, K]`` weights, their unpacked dot products and AMX's
    per-call repack (the same numbers, bit for bit)."""
    return _switch("VLLM_CPU_INT8_PACKED")
