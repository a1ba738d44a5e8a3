"""``RocmPlatform``: AMD GPUs. ROCm torch serves HIP devices through the torch.cuda API, so the
runtime helpers (set_device, synchronize, memory queries) are inherited from ``CudaPlatform``;
identity, dtype defaults and backends differ."""

from __future__ import annotations

from typing import ClassVar

from vllm_core_cuda.platform import CudaPlatform, device_count, device_properties

from vllm_core.platforms.interface import PLATFORM_API_VERSION, PRIORITY_ACCELERATOR, DeviceFacts


class RocmPlatform(CudaPlatform):
    """AMD Instinct / Radeon GPUs (gfx9xx and later): bfloat16 by default, RCCL collectives."""

    name: ClassVar[str] = "rocm"
    priority: ClassVar[int] = PRIORITY_ACCELERATOR
    api_version: ClassVar[str] = PLATFORM_API_VERSION
    device_type: ClassVar[str] = "cuda"          # HIP devices appear as "cuda" to torch
    dispatch_key: ClassVar[str] = "CUDA"
    dist_backend: ClassVar[str] = "nccl"         # torch's "nccl" backend is RCCL on ROCm
    device_control_env_var: ClassVar[str] = "HIP_VISIBLE_DEVICES"
    supported_dtypes: ClassVar[tuple[str, ...]] = ("bfloat16", "float16", "float32")

    @classmethod
    def device_facts(cls) -> DeviceFacts:
        import torch

        count = device_count()
        if count == 0:
            return DeviceFacts(details={"hip": torch.version.hip})
        props = device_properties(0)
        arch = getattr(props, "gcnArchName", "") or ""
        return DeviceFacts(
            device_count=count,
            device_name=props.name,
            capability=arch.split(":")[0],          # "gfx942:sramecc+:xnack-" -> "gfx942"
            total_memory_bytes=int(props.total_memory),
            details={"hip": torch.version.hip,
                     "devices": [device_properties(i).name for i in range(count)]},
        )

    @classmethod
    def default_dtype(cls) -> str:
        return "bfloat16"

    @classmethod
    def attention_backends(cls) -> list[str]:
        return ["triton"]

    @classmethod
    def worker_class(cls) -> str:
        # HIP runs the CUDA worker unchanged (torch.cuda API, Triton kernels).
        return "vllm_core_cuda.worker.CudaWorker"

    @classmethod
    def _check_dtype(cls, dtype: str) -> None:
        """No capability rule for bf16: every GPU ROCm supports computes it. The rest of
        ``check_and_update_config`` (graph batch sizes unless enforce_eager) is CUDA's."""
        return None
