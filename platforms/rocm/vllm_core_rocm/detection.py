"""Is there an AMD GPU for torch? torch.version.hip set and a visible device."""

from __future__ import annotations

from vllm_core.platforms.discovery import NotDetected

PLATFORM_CLASS = "vllm_core_rocm.platform.RocmPlatform"


def torch_hip_version() -> str | None:
    import torch

    return getattr(torch.version, "hip", None)


def visible_device_count() -> int:
    """ROCm torch exposes HIP devices through the torch.cuda API."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def detect_rocm() -> str | NotDetected:
    try:
        hip = torch_hip_version()
    except ImportError:
        return NotDetected("torch is not installed")
    if not hip:
        return NotDetected("torch is not a ROCm build (torch.version.hip is None)")
    if visible_device_count() == 0:
        return NotDetected(f"torch (HIP {hip}) sees no AMD device (check the driver and "
                           f"HIP_VISIBLE_DEVICES)")
    return PLATFORM_CLASS
