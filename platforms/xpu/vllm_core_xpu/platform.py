"""``XpuPlatform``: Intel GPUs (Data Center GPU Max, Arc) through torch's native ``xpu`` device.

Attention backends, chosen by capability (nothing here is a hard dependency):

1. ``ipex_paged`` - Intel Extension for PyTorch's paged attention (``PagedAttention`` ops
   dispatch on the tensors' device, so the CPU plugin's backend serves XPU tensors too), when
   an XPU build of IPEX imports (``ipex_xpu_status``);
2. ``triton`` - the portable Triton kernels of the CUDA plugin, compiled by Intel's Triton
   (``pytorch-triton-xpu``), when ``vllm_core_triton`` and ``triton`` import;
3. ``reference`` - the core's portable torch backend, always.

Collectives use torch's ``xccl`` backend; there is no graph capture (eager only).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, ClassVar

from vllm_core.platforms.interface import (
    PLATFORM_API_VERSION,
    PRIORITY_ACCELERATOR,
    DeviceFacts,
    Platform,
    PlatformKind,
)

if TYPE_CHECKING:  # pragma: no cover
    from vllm_core.config import EngineConfig

IPEX_BLOCK_SIZES = (16, 32, 64, 128)


def _xpu():
    import torch

    return torch.xpu


def import_ipex():
    """``import intel_extension_for_pytorch`` (the only place this plugin imports it)."""
    import intel_extension_for_pytorch

    return intel_extension_for_pytorch


@functools.lru_cache(maxsize=1)
def ipex_xpu_status() -> tuple[bool, str]:
    """(usable, why not): IPEX must import, be an XPU build, and have the paged ops."""
    try:
        ipex = import_ipex()
    except ImportError as e:
        return False, f"intel-extension-for-pytorch is not installed ({e})"
    except Exception as e:  # noqa: BLE001 - IPEX aborts on a torch version mismatch
        return False, f"intel-extension-for-pytorch failed to import: {type(e).__name__}: {e}"
    if getattr(ipex, "xpu", None) is None:
        return False, f"intel-extension-for-pytorch {ipex.__version__} is not an XPU build"
    paged = getattr(getattr(getattr(ipex, "llm", None), "modules", None), "PagedAttention", None)
    if not (hasattr(paged, "reshape_and_cache") and hasattr(paged, "flash_attn_varlen_func")):
        return False, f"intel-extension-for-pytorch {ipex.__version__} lacks the paged ops"
    return True, ""


def triton_kernels_available() -> bool:
    import importlib.util

    return (importlib.util.find_spec("triton") is not None
            and importlib.util.find_spec("vllm_core_triton") is not None)


class XpuPlatform(Platform):
    name: ClassVar[str] = "xpu"
    kind: ClassVar[PlatformKind] = PlatformKind.ACCELERATOR
    priority: ClassVar[int] = PRIORITY_ACCELERATOR
    api_version: ClassVar[str] = PLATFORM_API_VERSION
    device_type: ClassVar[str] = "xpu"
    dist_backend: ClassVar[str] = "xccl"
    device_control_env_var: ClassVar[str] = "ZE_AFFINITY_MASK"
    supported_dtypes: ClassVar[tuple[str, ...]] = ("bfloat16", "float16", "float32")
    default_block_size: ClassVar[int] = 16

    @classmethod
    def device_facts(cls) -> DeviceFacts:
        xpu = _xpu()
        count = xpu.device_count()
        if count == 0:
            return DeviceFacts()
        props = xpu.get_device_properties(0)
        usable, why = ipex_xpu_status()
        return DeviceFacts(device_count=count, device_name=props.name,
                           capability=str(getattr(props, "driver_version", "")),
                           total_memory_bytes=int(props.total_memory),
                           details={"devices": [xpu.get_device_name(i) for i in range(count)],
                                    "xe_cores": int(getattr(props, "gpu_subslice_count", 0)),
                                    "ipex": "usable" if usable else why,
                                    "triton": triton_kernels_available()})

    @classmethod
    def default_dtype(cls) -> str:
        return "bfloat16"

    @classmethod
    def free_memory_bytes(cls) -> int:
        xpu = _xpu()
        if hasattr(xpu, "mem_get_info"):
            free, _total = xpu.mem_get_info()
            return int(free)
        return int(xpu.get_device_properties(0).total_memory - xpu.memory_reserved())

    @classmethod
    def attention_backends(cls) -> list[str]:
        """IPEX first where usable, then Triton where its kernels import, then reference."""
        names = ["ipex_paged"] if ipex_xpu_status()[0] else []
        if triton_kernels_available():
            names.append("triton")
        return names + ["reference"]

    @classmethod
    def worker_class(cls) -> str:
        return "vllm_core_xpu.worker.XpuWorker"

    @classmethod
    def check_and_update_config(cls, config: EngineConfig) -> None:
        """Base rules, then: eager only (no graph sizes); with IPEX the block size must be one
        its paged kernels serve; ``config.extra["xpu"]`` records the kernel choices."""
        super().check_and_update_config(config)
        usable, why = ipex_xpu_status()
        if usable and config.cache.block_size not in IPEX_BLOCK_SIZES:
            raise ValueError(f"block_size {config.cache.block_size} is not served by IPEX's "
                             f"paged attention on XPU; use one of {list(IPEX_BLOCK_SIZES)}")
        config.extra["xpu"] = {"ipex": usable, "ipex_reason": why,
                               "triton": triton_kernels_available()}

    @classmethod
    def set_device(cls, index: int) -> None:
        _xpu().set_device(index)

    @classmethod
    def seed_everything(cls, seed: int) -> None:
        super().seed_everything(seed)
        _xpu().manual_seed_all(seed)

    @classmethod
    def synchronize(cls) -> None:
        _xpu().synchronize()

    @classmethod
    def empty_cache(cls) -> None:
        _xpu().empty_cache()
