"""vllm-core platform plugin for Google TPUs (torch_xla).

Entry points: ``detect`` (group ``vllm.platform_plugins``) and ``register`` (group
``vllm.general_plugins``; registers the "pallas" and "xla_paged" attention backends). Detection
never starts the XLA runtime: it checks that torch_xla or libtpu is importable and that TPU
chips are present. Importing this package imports neither torch nor torch_xla.
"""

from __future__ import annotations

from typing import Any


def detect() -> Any:
    from vllm_core_tpu.detection import detect_tpu

    return detect_tpu()


def register() -> None:
    """General plugin: hand this plugin's hook implementations to the core."""
    from vllm_core.plugins import register_hooks
    from vllm_core_tpu import hooks

    register_hooks(hooks, name="vllm_core_tpu")
