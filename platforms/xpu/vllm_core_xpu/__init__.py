"""vllm-core platform plugin for Intel GPUs (``torch.xpu``).

Entry points: ``detect`` (group ``vllm.platform_plugins``) and ``register`` (group
``vllm.general_plugins``; registers the "ipex_paged" and "triton" attention backends by class
path). Importing this package imports nothing heavy.
"""

from __future__ import annotations

from typing import Any


def detect() -> Any:
    from vllm_core_xpu.detection import detect_xpu

    return detect_xpu()


def register() -> None:
    from vllm_core.plugins import register_hooks
    from vllm_core_xpu import hooks

    register_hooks(hooks, name="vllm_core_xpu")
