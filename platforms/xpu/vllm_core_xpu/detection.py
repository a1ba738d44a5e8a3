"""Is there an Intel GPU? ``torch.xpu.is_available()`` (torch 2.5+ ships the xpu backend)."""

from __future__ import annotations

from vllm_core.platforms.discovery import NotDetected

PLATFORM_CLASS = "vllm_core_xpu.platform.XpuPlatform"


def xpu_available() -> bool:
    import torch

    xpu = getattr(torch, "xpu", None)
    return bool(xpu is not None and xpu.is_available())


def detect_xpu() -> str | NotDetected:
    try:
        available = xpu_available()
    except ImportError:
        return NotDetected("torch is not installed")
    if not available:
        return NotDetected("torch.xpu.is_available() is False (no Intel GPU, driver, or an "
                           "XPU build of torch)")
    return PLATFORM_CLASS
