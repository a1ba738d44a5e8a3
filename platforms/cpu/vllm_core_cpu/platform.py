"""``CpuPlatform``: any CPU, torch on the host; the fallback every machine has.

Device probes are small module functions (``usable_cores``, ``numa_nodes``,
``available_memory_bytes``, ``total_memory_bytes``) plus the ISA probes of
``vllm_core_cpu.isa`` and the IPEX probe of ``vllm_core_cpu.ipex``, so tests fake them at the
boundary.

Per-ISA rules (``check_and_update_config``; the ISA comes from ``isa.detect_isa``):

=========  ==================================  =============================================
ISA        default dtype                       refused / notes
=========  ==================================  =============================================
x86-64     bfloat16 with AVX512_BF16 or AMX,   bfloat16 without them runs emulated (warning);
           else float32                        IPEX ops first when IPEX imports
Arm64      bfloat16 with BF16 (e.g. Neoverse   bfloat16 refused without BF16
           V1/V2), else float32
POWER      float32                             bfloat16 only with MMA (POWER10+), float16
                                               refused (no fp16 arithmetic)
=========  ==================================  =============================================

Threads: ``num_threads`` (explicit, else ``VLLM_CPU_NUM_THREADS``, else the bound cores).
Binding (``VLLM_CPU_OMP_THREADS_BIND``): ``auto`` (default) binds to the usable cores of the
first NUMA node that has any (all usable cores on a one-node machine), ``nobind`` binds
nothing, a list such as ``0-3,8`` binds those cores. The plan is recorded in
``config.extra["cpu_threads_bind"]`` (a core list, or None) and applied in the worker process
by ``apply_thread_binding``.
"""

from __future__ import annotations

import glob
import os
from typing import TYPE_CHECKING, ClassVar

from vllm_core.attention.kv_cache_dtype import FP8_KV_CACHE_DTYPES
from vllm_core.logger import init_logger
from vllm_core.platforms.interface import (
    PLATFORM_API_VERSION,
    PRIORITY_CPU,
    DeviceFacts,
    Platform,
    PlatformKind,
)
from vllm_core_cpu import envs, ipex, isa

if TYPE_CHECKING:  # pragma: no cover
    from vllm_core.config import EngineConfig

GIB = 1 << 30

logger = init_logger(__name__)


def usable_cores() -> int:
    """CPUs this process may run on (its affinity mask; the CPU count where unsupported)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - macOS / Windows
        return os.cpu_count() or 1


def numa_nodes() -> dict[int, list[int]]:
    """NUMA node -> its CPUs, from /sys/devices/system/node ({} where not exposed)."""
    nodes: dict[int, list[int]] = {}
    for path in glob.glob("/sys/devices/system/node/node[0-9]*/cpulist"):
        node = int(path.split("/")[-2][len("node"):])
        try:
            with open(path, encoding="utf-8") as f:
                nodes[node] = parse_cpu_list(f.read())
        except (OSError, ValueError):
            continue
    return dict(sorted(nodes.items()))


def affinity() -> list[int]:
    """The CPUs this process may run on, sorted."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - macOS / Windows
        return list(range(os.cpu_count() or 1))


def parse_cpu_list(text: str) -> list[int]:
    """``"0-3,8,10-11"`` -> [0, 1, 2, 3, 8, 10, 11]; ``ValueError`` on malformed text."""
    cpus: set[int] = set()
    for part in text.strip().split(","):
        part = part.strip()
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise ValueError(f"bad CPU list {text.strip()!r}: {part!r} is not N or N-M")
        first, last = int(lo), int(hi) if sep else int(lo)
        if last < first:
            raise ValueError(f"bad CPU list {text.strip()!r}: range {part!r} is reversed")
        cpus.update(range(first, last + 1))
    if not cpus:
        raise ValueError(f"bad CPU list {text!r}: empty")
    return sorted(cpus)


def plan_thread_binding(setting: str | None, usable: list[int],
                        nodes: dict[int, list[int]]) -> list[int] | None:
    """The cores to bind to for ``VLLM_CPU_OMP_THREADS_BIND=setting`` (None: no binding)."""
    value = (setting or "auto").strip().lower()
    if value == "nobind":
        return None
    if value == "auto":
        for cpus in nodes.values():
            mine = sorted(set(cpus) & set(usable))
            if mine:
                return mine
        return list(usable)
    cores = parse_cpu_list(value)
    outside = sorted(set(cores) - set(usable))
    if outside:
        raise ValueError(f"VLLM_CPU_OMP_THREADS_BIND={setting} names CPUs {outside} outside "
                         f"this process's affinity {usable}")
    return cores


def apply_thread_binding(config: EngineConfig) -> None:
    """In the worker process: pin it to ``config.extra["cpu_threads_bind"]`` (if any) and set
    torch's intra-op threads to ``config.num_threads``."""
    import torch

    cores = config.extra.get("cpu_threads_bind")
    if cores and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cores)
    if config.num_threads:
        torch.set_num_threads(config.num_threads)


def check_dtype_for_isa(cpu: isa.CpuIsa, dtype: str) -> str | None:
    """Why ``dtype`` cannot run on ``cpu`` (None: it can). x86 runs everything (bf16 without
    AVX512_BF16/AMX is emulated by oneDNN, only slower)."""
    if cpu.arch == "aarch64" and dtype == "bfloat16" and not cpu.has_native_bf16:
        return ("dtype bfloat16 needs the Arm BF16 extension (FEAT_BF16; Neoverse V1/N2 and "
                "later), which this CPU lacks; use --dtype float32")
    if cpu.arch.startswith("ppc64"):
        if dtype == "bfloat16" and "MMA" not in cpu.features:
            return ("dtype bfloat16 needs POWER10 (MMA); this CPU is "
                    f"{' '.join(cpu.features) or cpu.arch}; use --dtype float32")
        if dtype == "float16":
            return "dtype float16 is not supported on POWER CPUs; use float32 (or bfloat16 on POWER10)"
    return None


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
    dist_backend: ClassVar[str] = "gloo"
    device_control_env_var: ClassVar[str] = ""
    supported_dtypes: ClassVar[tuple[str, ...]] = ("bfloat16", "float32", "float16")
    # float8 caches: the cpu_paged kernel reads and writes them (attention.py)
    supported_kv_cache_dtypes: ClassVar[tuple[str, ...]] = ("auto", *FP8_KV_CACHE_DTYPES)
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
                     "usable_cores": usable_cores(), "logical_cores": os.cpu_count() or 1,
                     "numa_nodes": len(numa_nodes()) or 1, "ipex": cls._ipex_line(cpu)},
        )

    @classmethod
    def _ipex_line(cls, cpu: isa.CpuIsa) -> str:
        if cpu.arch != "x86_64":
            return "not used (x86-64 only)"
        status = ipex.ipex_status()
        return f"intel-extension-for-pytorch {status.version}" if status.available else \
            status.reason

    @classmethod
    def uses_ipex(cls) -> bool:
        """IPEX ops are used on x86-64 when IPEX imports (capability, not a dependency)."""
        return cls.isa().arch == "x86_64" and ipex.ipex_status().available

    @classmethod
    def default_dtype(cls) -> str:
        """bfloat16 where the CPU computes it natively (AVX512_BF16 / AMX / Arm BF16)."""
        return "bfloat16" if cls.isa().has_native_bf16 else "float32"

    @classmethod
    def free_memory_bytes(cls) -> int:
        return available_memory_bytes()

    @classmethod
    def attention_backends(cls) -> list[str]:
        """IPEX's paged attention first where IPEX is usable, then the torch backends."""
        return (["ipex_paged"] if cls.uses_ipex() else []) + ["cpu_paged", "reference"]

    @classmethod
    def worker_class(cls) -> str:
        return "vllm_core_cpu.worker.CpuWorker"

    @classmethod
    def check_and_update_config(cls, config: EngineConfig) -> None:
        """Base rules, then the ISA rules of the module docstring (dtype legality, IPEX),
        the thread binding plan, ``num_threads`` (explicit value, else
        ``VLLM_CPU_NUM_THREADS``, else the bound cores, else the cores in this process's
        affinity mask); ``cache.cache_space_bytes`` from ``VLLM_CPU_KVCACHE_SPACE`` (GiB) when
        that is set and no budget was given; no graphs."""
        super().check_and_update_config(config)
        cpu = cls.isa()
        problem = check_dtype_for_isa(cpu, config.model.dtype)
        if problem is not None:
            raise ValueError(problem)
        if (cpu.arch == "x86_64" and config.model.dtype == "bfloat16"
                and not cpu.has_native_bf16):
            logger.warning("dtype bfloat16 on a CPU without AVX512_BF16/AMX (%s) is emulated "
                           "and slow; float32 is faster here", cpu.summary)
        config.extra["cpu_isa"] = cpu.summary
        config.extra["cpu_ipex"] = cpu.arch == "x86_64" and ipex.ipex_status().available
        bind = plan_thread_binding(envs.cpu_omp_threads_bind(), affinity(), numa_nodes())
        config.extra["cpu_threads_bind"] = bind
        if config.num_threads is None:
            threads = envs.cpu_num_threads()
            if threads is not None and threads < 1:
                raise ValueError(f"VLLM_CPU_NUM_THREADS must be >= 1, got {threads}")
            config.num_threads = threads if threads is not None else (
                len(bind) if bind else usable_cores())
            # one process per rank (and per data-parallel engine core) shares the cores
            world = config.parallel.world_size * config.parallel.data_parallel_size
            if world > 1:
                config.num_threads = max(1, config.num_threads // world)
        elif config.num_threads < 1:
            raise ValueError(f"num_threads must be >= 1, got {config.num_threads}")
        space_gib = envs.cpu_kvcache_space_gib()
        if space_gib is not None and config.cache.cache_space_bytes is None:
            config.cache.cache_space_bytes = int(space_gib * GIB)
