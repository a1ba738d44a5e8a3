"""Quantization methods by name: ``name -> "pkg.module.MethodClass"``, imported on first use
(a ``vllm_core.plugins.registry.Registry``: its re-registration rule and plugin loading apply).

Plugins register through the ``register_quantization_methods`` hook or by calling
``register_quantization_method``.
"""

from __future__ import annotations

from typing import Any

from vllm_core.plugins.registry import Registry

METHODS = Registry("quantization method")
register_quantization_method = METHODS.register
unregister_quantization_method = METHODS.unregister
list_quantization_methods = METHODS.items


def get_quantization_method_cls(name: str) -> Any:
    """Import the class of ``name``; ``ValueError`` naming the known methods if unknown."""
    return METHODS.load(name)
