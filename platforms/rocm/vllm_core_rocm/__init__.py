"""vllm-core platform plugin for AMD GPUs (ROCm builds of torch).

Entry points: ``detect`` (group ``vllm.platform_plugins``) and ``register`` (group
``vllm.general_plugins``). Importing this package imports nothing heavy.
"""

from __future__ import annotations

from typing import Any


def detect() -> Any:
    """The platform class path when torch is a ROCm build and sees an AMD device."""
    from vllm_core_rocm.detection import detect_rocm

    return detect_rocm()


def register() -> None:
    from vllm_core.plugins import register_hooks
    from vllm_core_rocm import hooks

    register_hooks(hooks, name="vllm_core_rocm")
