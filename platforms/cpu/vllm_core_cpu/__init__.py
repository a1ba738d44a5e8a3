"""vllm-core platform plugin for CPUs.

Entry points: ``detect`` (group ``vllm.platform_plugins``; a CPU is always present) and
``register`` (group ``vllm.general_plugins``; registers this plugin's attention backends).
Importing this package imports neither torch nor the platform class.
"""

from __future__ import annotations

PLATFORM_CLASS = "vllm_core_cpu.platform.CpuPlatform"


def detect() -> str:
    """Platform detection: every machine has a CPU."""
    return PLATFORM_CLASS


def register() -> None:
    """General plugin: hand this plugin's hook implementations to the core."""
    from vllm_core.plugins import register_hooks
    from vllm_core_cpu import hooks

    register_hooks(hooks, name="vllm_core_cpu")
