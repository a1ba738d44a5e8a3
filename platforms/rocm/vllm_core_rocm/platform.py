"""``RocmPlatform``: AMD GPUs. ROCm torch serves HIP devices through the torch.cuda API, so the
runtime helpers (set_device, synchronize, memory queries), HIP graphs (``torch.cuda.CUDAGraph``
is a HIP graph on ROCm) and the worker are inherited from the CUDA plugin; RCCL is reached
through torch's "nccl" backend name. What differs is decided from the GPU's gfx architecture
(``gcn_arch``, the probe tests fake):

==========================  =========  ====================  ========
architecture                dtype      fp8 flavour           wave
==========================  =========  ====================  ========
gfx942 (MI300X/A, MI325X)   bfloat16   float8_e4m3fnuz       64
gfx950 (MI350X, MI355X)     bfloat16   float8_e4m3fn (OCP)   64
gfx90a (MI210/MI250X)       bfloat16   none                  64
gfx908 (MI100)              float16    none                  64
gfx906 (MI50/MI60)          float16    none (no bf16)        64
gfx11xx (Radeon RX 7000)    bfloat16   none                  32
gfx12xx (Radeon RX 9000)    bfloat16   float8_e4m3fn (OCP)   32
==========================  =========  ====================  ========
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from vllm_core.platforms.interface import PLATFORM_API_VERSION, PRIORITY_ACCELERATOR, DeviceFacts
from vllm_core_cuda.platform import CudaPlatform, device_count, device_properties

if TYPE_CHECKING:  # pragma: no cover
    from vllm_core.config import EngineConfig

TRITON_BLOCK_SIZES = (16, 32, 64, 128)


@dataclass(frozen=True, slots=True)
class GfxTraits:
    """What vllm-core needs to know about one gfx architecture."""

    arch: str
    bf16: bool                  # bf16 matrix instructions (MFMA / WMMA)
    default_dtype: str
    fp8_dtype: str | None       # torch dtype name of the hardware fp8 e4m3 flavour
    wave_size: int


def gfx_traits(arch: str) -> GfxTraits:
    """Traits of ``arch`` ("gfx942", "gfx942:sramecc+:xnack-" ...); unknown archs get the
    conservative RDNA/CDNA defaults (bf16, no fp8)."""
    base = arch.split(":")[0].strip().lower()
    if base in ("gfx940", "gfx941", "gfx942"):
        return GfxTraits(base, True, "bfloat16", "float8_e4m3fnuz", 64)
    if base == "gfx950":
        return GfxTraits(base, True, "bfloat16", "float8_e4m3fn", 64)
    if base == "gfx90a":
        return GfxTraits(base, True, "bfloat16", None, 64)
    if base == "gfx908":
        return GfxTraits(base, True, "float16", None, 64)
    if base in ("gfx900", "gfx906"):
        return GfxTraits(base, False, "float16", None, 64)
    if base.startswith("gfx12"):
        return GfxTraits(base, True, "bfloat16", "float8_e4m3fn", 32)
    if base.startswith(("gfx10", "gfx11")):
        return GfxTraits(base, True, "bfloat16", None, 32)
    return GfxTraits(base, True, "bfloat16", None, 64)


def gcn_arch(index: int = 0) -> str:
    """``torch.cuda.get_device_properties(index).gcnArchName`` ("gfx942:sramecc+:xnack-")."""
    return str(getattr(device_properties(index), "gcnArchName", "") or "")


class RocmPlatform(CudaPlatform):
    """AMD Instinct / Radeon GPUs: Triton attention, HIP graphs, RCCL; see the module table."""

    name: ClassVar[str] = "rocm"
    priority: ClassVar[int] = PRIORITY_ACCELERATOR
    api_version: ClassVar[str] = PLATFORM_API_VERSION
    device_type: ClassVar[str] = "cuda"          # HIP devices appear as "cuda" to torch
    dist_backend: ClassVar[str] = "nccl"         # torch's "nccl" backend is RCCL on ROCm
    device_control_env_var: ClassVar[str] = "HIP_VISIBLE_DEVICES"
    supported_dtypes: ClassVar[tuple[str, ...]] = ("bfloat16", "float16", "float32")
    default_block_size: ClassVar[int] = 16

    @classmethod
    def traits(cls) -> GfxTraits:
        return gfx_traits(gcn_arch(0))

    @classmethod
    def device_facts(cls) -> DeviceFacts:
        import torch

        count = device_count()
        if count == 0:
            return DeviceFacts(details={"hip": torch.version.hip})
        props = device_properties(0)
        traits = gfx_traits(str(getattr(props, "gcnArchName", "") or ""))
        return DeviceFacts(
            device_count=count,
            device_name=props.name,
            capability=traits.arch,
            total_memory_bytes=int(props.total_memory),
            details={"hip": torch.version.hip,
                     "compute_units": int(getattr(props, "multi_processor_count", 0)),
                     "wave_size": traits.wave_size, "fp8_dtype": traits.fp8_dtype,
                     "devices": [device_properties(i).name for i in range(count)]},
        )

    @classmethod
    def default_dtype(cls) -> str:
        return cls.traits().default_dtype

    @classmethod
    def attention_backends(cls) -> list[str]:
        return ["triton"]

    @classmethod
    def worker_class(cls) -> str:
        # HIP runs the CUDA worker unchanged (torch.cuda API, Triton kernels, HIP graphs).
        return "vllm_core_cuda.worker.CudaWorker"

    @classmethod
    def check_and_update_config(cls, config: EngineConfig) -> None:
        """CUDA's rules (dtype, block size, graph batch sizes unless enforce_eager), with the
        architecture's dtype rule instead of the compute-capability one; then the block size
        must be one the Triton kernels serve, and ``config.extra["rocm"]`` records the gfx
        architecture, its fp8 flavour (for fp8 weights / KV) and wave size."""
        super().check_and_update_config(config)
        if config.cache.block_size not in TRITON_BLOCK_SIZES:
            raise ValueError(f"block_size {config.cache.block_size} is not served by the Triton "
                             f"attention kernels on ROCm; use one of {list(TRITON_BLOCK_SIZES)}")
        traits = cls.traits()
        config.extra["rocm"] = {"gcn_arch": traits.arch, "fp8_dtype": traits.fp8_dtype,
                                "wave_size": traits.wave_size}

    @classmethod
    def _check_dtype(cls, dtype: str) -> None:
        """bfloat16 needs bf16 matrix instructions (not on gfx906 / gfx900)."""
        if dtype == "bfloat16":
            traits = cls.traits()
            if not traits.bf16:
                raise ValueError(f"dtype bfloat16 is not supported on {traits.arch} (no bf16 "
                                 f"matrix instructions); use --dtype float16")
