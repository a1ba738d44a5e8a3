"""``CpuPlatform``: any CPU, torch on the host; the fallback every machine has.

Device probes are small module functions (``usable_cores``, ``available_memory_bytes``,
``total_memory_bytes``) plus the ISA probes of ``vllm_core_cpu.isa``, so tests fake them at the
boundary.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, ClassVar

from vllm_core import envs
from vllm_core.platforms.interface import (
    PLATFORM_API_VERSION,
    PRIORITY_CPU,
    DeviceFacts,
    Platform,
    PlatformKind,
)
from vllm_core_cpu import isa

if TYPE_CHECKING:  # pragma: no cover
    from vllm_core.config import EngineConfig

GIB = 1 << 30


def usable_cores() -> int:
    """CPUs this process may run on (its affinity mask; the CPU count where unsupported)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - macOS / Windows
        return os.cpu_count() or 1


def _meminfo_bytes(key: str) -> int:
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                name, _, rest = line.partition(":")
                if name == key:
                    return int(rest.split()[0]) * 1024      # reported in kB
    except (OSError, ValueError, IndexError):
        pass
    return 0


def available_memory_bytes() -> int:
    """Memory available for new allocations without swapping (psutil, else /proc/meminfo)."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:  # pragma: no cover - psutil is a dependency
        return _meminfo_bytes("MemAvailable")


def total_memory_bytes() -> int:
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except ImportError:  # pragma: no cover
        return _meminfo_bytes("MemTotal")


class CpuPlatform(Platform):
    """Runs the model with torch on the CPU. Priority ``PRIORITY_CPU``: any accelerator wins."""

    name: ClassVar[str] = "cpu"
    kind: ClassVar[PlatformKind] = PlatformKind.CPU
    priority: ClassVar[int] = PRIORITY_CPU
    api_version: ClassVar[str] = PLATFORM_API_VERSION
    device_type: ClassVar[str] = "cpu"
    dispatch_key: ClassVar[str] = "CPU"
    dist_backend: ClassVar[str] = "gloo"
    device_control_env_var: ClassVar[str] = ""
    supported_dtypes: ClassVar[tuple[str, ...]] = ("bfloat16", "float32", "float16")
    supported_kv_cache_dtypes: ClassVar[tuple[str, ...]] = ("auto",)
    default_block_size: ClassVar[int] = 16

    @classmethod
    def isa(cls) -> isa.CpuIsa:
        return isa.detect_isa()

    @classmethod
    def device_facts(cls) -> DeviceFacts:
        cpu = cls.isa()
        return DeviceFacts(
            device_count=1,
            device_name=cpu.model_name or cpu.arch,
            capability=cpu.summary,
            total_memory_bytes=total_memory_bytes(),
            details={"arch": cpu.arch, "isa": list(cpu.features),
                     "usable_cores": usable_cores(), "logical_cores": os.cpu_count() or 1},
        )

    @classmethod
    def default_dtype(cls) -> str:
        """bfloat16 where the CPU computes it natively (AVX512_BF16 / AMX / Arm BF16)."""
        return "bfloat16" if cls.isa().has_native_bf16 else "float32"

    @classmethod
    def free_memory_bytes(cls) -> int:
        return available_memory_bytes()

    @classmethod
    def attention_backends(cls) -> list[str]:
        return ["cpu_paged", "reference"]

    @classmethod
    def worker_class(cls) -> str:
        return "vllm_core_cpu.worker.CpuWorker"

    @classmethod
    def supports_graph_capture(cls) -> bool:
        return False

    @classmethod
    def default_max_num_batched_tokens(cls) -> int:
        return 2048

    @classmethod
    def check_and_update_config(cls, config: EngineConfig) -> None:
        """Base rules, then: ``num_threads`` (explicit value, else ``VLLM_CPU_NUM_THREADS``,
        else the cores in this process's affinity mask); ``cache.cache_space_bytes`` from
        ``VLLM_CPU_KVCACHE_SPACE`` (GiB) when that is set and no budget was given; no graphs."""
        super().check_and_update_config(config)
        if config.num_threads is None:
            threads = envs.cpu_num_threads()
            if threads is not None and threads < 1:
                raise ValueError(f"VLLM_CPU_NUM_THREADS must be >= 1, got {threads}")
            config.num_threads = threads if threads is not None else usable_cores()
        elif config.num_threads < 1:
            raise ValueError(f"num_threads must be >= 1, got {config.num_threads}")
        space_gib = envs.cpu_kvcache_space_gib()
        if space_gib is not None and config.cache.cache_space_bytes is None:
            config.cache.cache_space_bytes = int(space_gib * GIB)
        config.graph_batch_sizes = []
