"""Is there a TPU? torch_xla / libtpu importable and TPU chips visible (/dev/accel*, /dev/vfio).

The probes look without importing torch_xla (which would start the PJRT runtime).
"""

from __future__ import annotations

import glob
import importlib.util

from vllm_core.platforms.discovery import NotDetected

PLATFORM_CLASS = "vllm_core_tpu.platform.TpuPlatform"


def xla_importable() -> bool:
    return importlib.util.find_spec("torch_xla") is not None


def libtpu_importable() -> bool:
    return importlib.util.find_spec("libtpu") is not None


def tpu_chip_count() -> int:
    """TPU chips of this VM: /dev/accel* (v2-v4) or numbered /dev/vfio groups (v5e and later)."""
    accel = glob.glob("/dev/accel*")
    if accel:
        return len(accel)
    return len([p for p in glob.glob("/dev/vfio/*") if p.rsplit("/", 1)[-1].isdigit()])


def detect_tpu() -> str | NotDetected:
    if not (xla_importable() or libtpu_importable()):
        return NotDetected("neither torch_xla nor libtpu is installed "
                           "(pip install 'vllm-core-tpu[xla]')")
    chips = tpu_chip_count()
    if chips == 0:
        return NotDetected("torch_xla/libtpu installed but no TPU chip visible "
                           "(/dev/accel*, /dev/vfio)")
    if not xla_importable():
        return NotDetected(f"{chips} TPU chip(s) present but torch_xla is not installed "
                           "(pip install 'vllm-core-tpu[xla]')")
    return PLATFORM_CLASS
