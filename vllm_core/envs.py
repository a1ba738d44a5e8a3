"""Every environment variable vllm-core reads, read here and nowhere else.

Each accessor reads the environment at call time (tests may set variables with monkeypatch);
callers pass the values down explicitly instead of reading os.environ deep inside layers.
"""

from __future__ import annotations

import os


def get(name: str) -> str | None:
    """The variable's value, None when unset or empty (plugins read their own variables
    through this, in their own ``envs`` module)."""
    value = os.environ.get(name)
    return value if value not in (None, "") else None


#: OpenMP settings given to every vllm-core process unless the user set either variable:
#: libgomp reads them once, when torch loads it. A thread that waits at the end of a parallel
#: region spins ``GOMP_SPINCOUNT`` times, then sleeps (libgomp throttles the spin to 100 when
#: there are more threads than CPUs). libgomp's default (300,000 spins, ~0.3 ms) takes the CPU
#: from the thread being waited for on a shared host; ``PASSIVE`` (no spin) pays a futex wake-up
#: per region, ~150 regions a decode step. 5,000 spins (microseconds) keeps most of spinning's
#: speed on dedicated cores and passive's on loaded ones. Measured (``docs/cpu.md``; Intel Xeon,
#: 2 vCPUs, AVX-512 / AMX, SmolLM2 int8, 2 threads): idle, 64-row decode 1185 tok/s against
#: 815 passive and 1225 with libgomp's default, batch 1 103 against 55; with four CPU hogs on
#: the two cores, 64 rows 271 against 262 passive and 153 with 20,000 spins. Setting
#: ``OMP_WAIT_POLICY`` (``ACTIVE`` / ``PASSIVE``) or ``GOMP_SPINCOUNT`` yourself keeps yours.
OPENMP_DEFAULTS = {"GOMP_SPINCOUNT": "5000"}
_OPENMP_USER_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def apply_openmp_defaults() -> dict[str, str]:
    """Set ``OPENMP_DEFAULTS`` when the user set none of ``OMP_WAIT_POLICY`` /
    ``GOMP_SPINCOUNT``; returns what it set. Called when ``vllm_core`` is imported: it takes
    effect in this process when torch was not imported yet, and in every process vllm-core
    starts (engine core, workers) in any case."""
    if any(name in os.environ for name in _OPENMP_USER_VARIABLES):
        return {}
    os.environ.update(OPENMP_DEFAULTS)
    return dict(OPENMP_DEFAULTS)


def platform_override() -> str | None:
    """VLLM_PLATFORM: force the platform plugin of this name."""
    return get("VLLM_PLATFORM")


def plugin_allow_list() -> list[str] | None:
    """VLLM_PLUGINS: comma list of plugin names allowed to load (None means all)."""
    raw = get("VLLM_PLUGINS")
    if raw is None:
        return None
    return [p.strip() for p in raw.split(",") if p.strip()]


def api_key() -> str | None:
    """VLLM_API_KEY: the server's API key when --api-key is not given."""
    return get("VLLM_API_KEY")


def attention_backend() -> str | None:
    """VLLM_ATTENTION_BACKEND: name of the attention backend to use (same as --attention-backend)."""
    return get("VLLM_ATTENTION_BACKEND")


def default_model_path() -> str | None:
    """VLLM_DEFAULT_MODEL: overrides the embedded default model (a path)."""
    return get("VLLM_DEFAULT_MODEL")


def cache_root() -> str:
    """VLLM_CACHE_ROOT: where derived artifacts (converted tokenizers) are cached
    (default ``$XDG_CACHE_HOME/vllm-core`` or ``~/.cache/vllm-core``)."""
    explicit = get("VLLM_CACHE_ROOT")
    if explicit:
        return explicit
    base = get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "vllm-core")


def logging_level() -> str:
    """VLLM_LOGGING_LEVEL: log level of the ``vllm_core`` logger (default INFO)."""
    return (get("VLLM_LOGGING_LEVEL") or "INFO").upper()


RELEVANT_PREFIXES = ("VLLM_", "CUDA_", "HIP_", "ROCR_", "ZE_", "TPU_", "PJRT_", "XLA_", "OMP_",
                     "MKL_", "KMP_", "TORCH_", "TRITON_", "HF_", "TRANSFORMERS_", "NCCL_")


def relevant_environment() -> dict[str, str]:
    """The environment variables a bug report needs (used by ``collect-env``)."""
    return {k: v for k, v in sorted(os.environ.items())
            if k.startswith(RELEVANT_PREFIXES) and "KEY" not in k and "TOKEN" not in k}


def openai_base_url() -> str | None:
    """OPENAI_BASE_URL: the server ``vllm-core chat`` / ``generate`` talk to when no --url."""
    return get("OPENAI_BASE_URL")


def openai_api_key() -> str | None:
    """OPENAI_API_KEY: the API key sent to that server when no --api-key."""
    return get("OPENAI_API_KEY")


def worker_step_timeout_s() -> float:
    """VLLM_WORKER_STEP_TIMEOUT_S: how long the multiprocess executor waits for a worker's
    reply to one step or call before it declares the worker hung and stops the engine
    (default 300)."""
    return float(get("VLLM_WORKER_STEP_TIMEOUT_S") or 300.0)


def freeze_gc_heap() -> bool:
    """VLLM_FREEZE_GC_HEAP: ``0`` keeps the garbage collector walking the start-up heap
    (``vllm_core.engine.startup.freeze_heap``; default on)."""
    return (get("VLLM_FREEZE_GC_HEAP") or "1").lower() not in ("0", "false", "no", "off")


def worker_start_timeout_s() -> float:
    """VLLM_WORKER_START_TIMEOUT_S: how long worker processes may take to start and load the
    model (default 1800)."""
    return float(get("VLLM_WORKER_START_TIMEOUT_S") or 1800.0)


#: Prefixes of the variables the ``ray`` executor gives its actors. An actor's process is
#: started by the raylet of its node, with the environment of that node's ``ray start``, not
#: the engine's: settings made where the engine runs (vllm-core's own, Hugging Face's, the
#: collective libraries') are carried explicitly. The device-control variable
#: (``CUDA_VISIBLE_DEVICES``...) is never carried: it is per node (see ``ray_placement``).
RAY_CARRIED_ENV_PREFIXES = ("VLLM_", "HF_", "HUGGING_FACE_", "TRANSFORMERS_", "NCCL_", "GLOO_",
                            "TORCH_", "TRITON_", "OMP_", "MKL_", "KMP_")


def ray_carried_env() -> dict[str, str]:
    """This process's variables whose names start with one of ``RAY_CARRIED_ENV_PREFIXES``."""
    return {k: v for k, v in os.environ.items() if k.startswith(RAY_CARRIED_ENV_PREFIXES)}


def ray_inline_max_bytes() -> int:
    """VLLM_RAY_INLINE_MAX_BYTES: the ``ray`` executor sends a step's pickled
    ``SchedulerOutput`` of up to this many bytes inside each actor call, larger ones through
    Ray's object store (default 65536; 0: always the object store)."""
    return int(get("VLLM_RAY_INLINE_MAX_BYTES") or 65536)


def prometheus_multiproc_dir() -> str | None:
    """PROMETHEUS_MULTIPROC_DIR: prometheus_client's multiprocess mode (metrics written to
    files in this folder and summed at scrape time); set by ``--api-server-count`` > 1."""
    return get("PROMETHEUS_MULTIPROC_DIR")


def image_fetch_timeout_s() -> float:
    """VLLM_IMAGE_FETCH_TIMEOUT: seconds one ``http(s)`` image download may take when
    ``--media-fetch-timeout`` is not given (default 5, as in vLLM)."""
    return float(get("VLLM_IMAGE_FETCH_TIMEOUT") or 5.0)
