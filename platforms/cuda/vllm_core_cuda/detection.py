"""Is there an NVIDIA GPU for torch? Probes are tiny functions so tests fake the boundary."""

from __future__ import annotations

from vllm_core.platforms.discovery import NotDetected

PLATFORM_CLASS = "vllm_core_cuda.platform.CudaPlatform"


def torch_version_attrs() -> dict[str, str | None]:
    """``torch.version.cuda`` / ``torch.version.hip`` (raises ImportError without torch)."""
    import torch

    return {"cuda": getattr(torch.version, "cuda", None), "hip": getattr(torch.version, "hip", None)}


def visible_device_count() -> int:
    """Devices torch can see (``torch.cuda.device_count`` queries NVML; no context is made)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def detect_cuda() -> str | NotDetected:
    try:
        versions = torch_version_attrs()
    except ImportError:
        return NotDetected("torch is not installed")
    if not versions.get("cuda"):
        if versions.get("hip"):
            return NotDetected(f"torch is a ROCm build (torch.version.hip={versions['hip']}); "
                               f"use the rocm platform")
        return NotDetected("torch has no CUDA support (torch.version.cuda is None, a CPU build)")
    count = visible_device_count()
    if count == 0:
        return NotDetected(f"torch {versions['cuda']} (CUDA build) sees no NVIDIA device "
                           f"(check the driver and CUDA_VISIBLE_DEVICES)")
    return PLATFORM_CLASS
