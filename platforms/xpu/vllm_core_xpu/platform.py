"""``XpuPlatform``: Intel GPUs through torch's native ``xpu`` device."""

from __future__ import annotations

from typing import ClassVar

from vllm_core.platforms.interface import (
    PLATFORM_API_VERSION,
    PRIORITY_ACCELERATOR,
    DeviceFacts,
    Platform,
    PlatformKind,
)


def _xpu():
    import torch

    return torch.xpu


class XpuPlatform(Platform):
    name: ClassVar[str] = "xpu"
    kind: ClassVar[PlatformKind] = PlatformKind.ACCELERATOR
    priority: ClassVar[int] = PRIORITY_ACCELERATOR
    api_version: ClassVar[str] = PLATFORM_API_VERSION
    device_type: ClassVar[str] = "xpu"
    dispatch_key: ClassVar[str] = "XPU"
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
        return DeviceFacts(device_count=count, device_name=props.name,
                           capability=str(getattr(props, "driver_version", "")),
                           total_memory_bytes=int(props.total_memory),
                           details={"devices": [xpu.get_device_name(i) for i in range(count)]})

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
        return ["reference"]

    @classmethod
    def worker_class(cls) -> str:
        return "vllm_core.worker.torch_worker.TorchWorker"

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
