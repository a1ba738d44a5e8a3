"""``ExamplePlatform``: the Platform a vendor ships. This one computes with torch on the host
CPU, standing in for a device; a real plugin replaces the device pieces (memory, set_device,
synchronize, seeds) with its runtime's calls."""

from __future__ import annotations

from typing import ClassVar

from vllm_core.platforms.interface import (
    PRIORITY_ACCELERATOR,
    DeviceFacts,
    Platform,
    PlatformKind,
)


class ExamplePlatform(Platform):
    # Identity. ``name`` is what users type in VLLM_PLATFORM / VLLM_PLUGINS.
    name: ClassVar[str] = "example"
    kind: ClassVar[PlatformKind] = PlatformKind.ACCELERATOR
    priority: ClassVar[int] = PRIORITY_ACCELERATOR
    # The platform API this plugin was written against: a literal, NOT the core's constant, so
    # a core with a different major (or an older minor) refuses the plugin with a clear reason.
    api_version: ClassVar[str] = "2.0"
    device_type: ClassVar[str] = "cpu"          # where tensors live (torch device type)
    dist_backend: ClassVar[str] = "gloo"
    device_control_env_var: ClassVar[str] = "EXAMPLE_VISIBLE_DEVICES"
    supported_dtypes: ClassVar[tuple[str, ...]] = ("float32", "bfloat16")
    supported_kv_cache_dtypes: ClassVar[tuple[str, ...]] = ("auto",)
    default_block_size: ClassVar[int] = 16

    @classmethod
    def device_facts(cls) -> DeviceFacts:
        return DeviceFacts(device_count=1, device_name="Example Accelerator (host CPU)",
                           capability="example-1", total_memory_bytes=cls.total_memory_bytes())

    @classmethod
    def default_dtype(cls) -> str:
        return "float32"

    @classmethod
    def total_memory_bytes(cls) -> int:
        import psutil

        return int(psutil.virtual_memory().total)

    @classmethod
    def free_memory_bytes(cls) -> int:
        import psutil

        return int(psutil.virtual_memory().available)

    @classmethod
    def attention_backends(cls) -> list[str]:
        return ["example_paged"]

    @classmethod
    def worker_class(cls) -> str:
        return "vllm_core_example_vendor.worker.ExampleWorker"
