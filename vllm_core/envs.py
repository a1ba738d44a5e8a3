"""Every environment variable vllm-core reads, read here and nowhere else.

Each accessor reads the environment at call time (tests may set variables with monkeypatch);
callers pass the values down explicitly instead of reading os.environ deep inside layers.
"""

from __future__ import annotations

import os


def _get(name: str) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else None


def platform_override() -> str | None:
    """VLLM_PLATFORM: force the platform plugin of this name."""
    return _get("VLLM_PLATFORM")


def plugin_allow_list() -> list[str] | None:
    """VLLM_PLUGINS: comma list of plugin names allowed to load (None means all)."""
    raw = _get("VLLM_PLUGINS")
    if raw is None:
        return None
    return [p.strip() for p in raw.split(",") if p.strip()]


def cpu_kvcache_space_gib() -> float | None:
    """VLLM_CPU_KVCACHE_SPACE: KV cache size in GiB on CPU platforms (None: automatic)."""
    raw = _get("VLLM_CPU_KVCACHE_SPACE")
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
    raw = _get("VLLM_CPU_NUM_THREADS")
    return int(raw) if raw is not None else None


def cpu_omp_threads_bind() -> str | None:
    """VLLM_CPU_OMP_THREADS_BIND: core list to bind OpenMP threads to, e.g. '0-3' (CPU plugin)."""
    return _get("VLLM_CPU_OMP_THREADS_BIND")


def cuda_gemv_max_rows() -> int:
    """VLLM_CUDA_GEMV_MAX_ROWS: linear layers with at most this many rows (decode batches) use
    the CUDA plugin's Triton skinny GEMM instead of cuBLAS; 0 turns it off. Default 1: it beats
    cuBLAS at one row (batch-1 decode) and loses from two rows on (measured on an H200)."""
    raw = _get("VLLM_CUDA_GEMV_MAX_ROWS")
    if raw is None:
        return 1
    try:
        value = int(raw)
    except ValueError as e:
        raise ValueError(f"VLLM_CUDA_GEMV_MAX_ROWS must be an integer 0..8, got {raw!r}") from e
    if not 0 <= value <= 8:
        raise ValueError(f"VLLM_CUDA_GEMV_MAX_ROWS must be an integer 0..8, got {raw!r}")
    return value


def api_key() -> str | None:
    """VLLM_API_KEY: the server's API key when --api-key is not given."""
    return _get("VLLM_API_KEY")


def attention_backend() -> str | None:
    """VLLM_ATTENTION_BACKEND: name of the attention backend to use (same as --attention-backend)."""
    return _get("VLLM_ATTENTION_BACKEND")


def default_model_path() -> str | None:
    """VLLM_DEFAULT_MODEL: overrides the embedded default model (a path)."""
    return _get("VLLM_DEFAULT_MODEL")


def cache_root() -> str:
    """VLLM_CACHE_ROOT: where derived artifacts (converted tokenizers) are cached
    (default ``$XDG_CACHE_HOME/vllm-core`` or ``~/.cache/vllm-core``)."""
    explicit = _get("VLLM_CACHE_ROOT")
    if explicit:
        return explicit
    base = _get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "vllm-core")


def logging_level() -> str:
    """VLLM_LOGGING_LEVEL: log level of the ``vllm_core`` logger (default INFO)."""
    return (_get("VLLM_LOGGING_LEVEL") or "INFO").upper()


RELEVANT_PREFIXES = ("VLLM_", "CUDA_", "HIP_", "ROCR_", "ZE_", "TPU_", "PJRT_", "XLA_", "OMP_",
                     "MKL_", "KMP_", "TORCH_", "TRITON_", "HF_", "TRANSFORMERS_", "NCCL_")


def relevant_environment() -> dict[str, str]:
    """The environment variables a bug report needs (used by ``collect-env``)."""
    return {k: v for k, v in sorted(os.environ.items())
            if k.startswith(RELEVANT_PREFIXES) and "KEY" not in k and "TOKEN" not in k}


def openai_base_url() -> str | None:
    """OPENAI_BASE_URL: the server ``vllm-core chat`` / ``generate`` talk to when no --url."""
    return _get("OPENAI_BASE_URL")


def openai_api_key() -> str | None:
    """OPENAI_API_KEY: the API key sent to that server when no --api-key."""
    return _get("OPENAI_API_KEY")
