"""``TpuPlatform``: Google TPUs through torch_xla (PJRT). All torch_xla imports live here."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from vllm_core.platforms.interface import (
    PLATFORM_API_VERSION,
    PRIORITY_ACCELERATOR,
    DeviceFacts,
    Platform,
    PlatformKind,
)
from vllm_core_tpu.detection import tpu_chip_count

if TYPE_CHECKING:  # pragma: no cover
    from vllm_core.config import EngineConfig


def memory_info() -> tuple[int, int]:
    """(free, total) bytes of the first TPU core, across torch_xla's two report formats."""
    import torch_xla.core.xla_model as xm

    info = xm.get_memory_info(xm.xla_device())
    if "bytes_limit" in info:
        total = int(info["bytes_limit"])
        return total - int(info.get("bytes_used", 0)), total
    return int(info["kb_free"]) * 1024, int(info["kb_total"]) * 1024


class TpuPlatform(Platform):
    name: ClassVar[str] = "tpu"
    kind: ClassVar[PlatformKind] = PlatformKind.ACCELERATOR
    priority: ClassVar[int] = PRIORITY_ACCELERATOR
    api_version: ClassVar[str] = PLATFORM_API_VERSION
    device_type: ClassVar[str] = "xla"
    dispatch_key: ClassVar[str] = "XLA"
    dist_backend: ClassVar[str] = "xla"
    device_control_env_var: ClassVar[str] = "TPU_VISIBLE_CHIPS"
    supported_dtypes: ClassVar[tuple[str, ...]] = ("bfloat16", "float32")
    default_block_size: ClassVar[int] = 16

    @classmethod
    def device_facts(cls) -> DeviceFacts:
        chips = tpu_chip_count()
        if chips == 0:
            return DeviceFacts()
        import torch_xla.runtime as xr

        _free, total = memory_info()
        return DeviceFacts(device_count=chips, device_name=str(xr.device_type()),
                           capability=str(getattr(xr, "version", lambda: "")()),
                           total_memory_bytes=total)

    @classmethod
    def default_dtype(cls) -> str:
        return "bfloat16"

    @classmethod
    def free_memory_bytes(cls) -> int:
        return memory_info()[0]

    @classmethod
    def total_memory_bytes(cls) -> int:
        return memory_info()[1]

    @classmethod
    def attention_backends(cls) -> list[str]:
        return ["reference"]

    @classmethod
    def worker_class(cls) -> str:
        return "vllm_core.worker.torch_worker.TorchWorker"

    @classmethod
    def check_and_update_config(cls, config: EngineConfig) -> None:
        """Base rules; XLA compiles whole graphs itself, so no CUDA-style graph batch sizes."""
        super().check_and_update_config(config)
        config.graph_batch_sizes = []

    @classmethod
    def synchronize(cls) -> None:
        import torch_xla.core.xla_model as xm

        xm.mark_step()
        xm.wait_device_ops()

    @classmethod
    def seed_everything(cls, seed: int) -> None:
        import torch_xla.core.xla_model as xm

        super().seed_everything(seed)
        xm.set_rng_state(seed)
