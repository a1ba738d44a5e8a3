"""vllm-core platform plugin for NVIDIA GPUs.

Entry points: ``detect`` (group ``vllm.platform_plugins``) and ``register`` (group
``vllm.general_plugins``; registers the attention backends by class path). Importing this
package imports nothing heavy; detection imports torch but never initialises a CUDA context.
"""

from __future__ import annotations

from typing import Any


def detect() -> Any:
    """The platform class path when torch is a CUDA build and sees an NVIDIA device."""
    from vllm_core_cuda.detection import detect_cuda

    return detect_cuda()


def register() -> None:
    """General plugin: hand this plugin's hook implementations to the core."""
    from vllm_core.plugins import register_hooks
    from vllm_core_cuda import hooks

    register_hooks(hooks, name="vllm_core_cuda")
