"""Example vendor plugin for vllm-core: the two entry points.

``detect``   (group ``vllm.platform_plugins``): is our device here? A real plugin asks its
             driver; this template checks ``VLLM_EXAMPLE_DEVICE=1``. It must be cheap, must not
             initialise the device, and must not import the platform module (return its path).
``register`` (group ``vllm.general_plugins``): registers our hook implementations (attention
             backends by class path) with the core's pluggy plugin manager.
"""

from __future__ import annotations

import os

from vllm_core.platforms.discovery import NotDetected

PLATFORM_CLASS = "vllm_core_example_vendor.platform.ExamplePlatform"
DEVICE_ENV_VAR = "VLLM_EXAMPLE_DEVICE"


def device_present() -> bool:
    """The hardware probe (a stand-in: a real plugin queries its driver here)."""
    return os.environ.get(DEVICE_ENV_VAR) == "1"


def detect() -> str | NotDetected:
    if not device_present():
        return NotDetected(f"no example device ({DEVICE_ENV_VAR}=1 is not set)")
    return PLATFORM_CLASS


def register() -> None:
    from vllm_core.plugins import register_hooks
    from vllm_core_example_vendor import hooks

    register_hooks(hooks, name="vllm_core_example_vendor")
