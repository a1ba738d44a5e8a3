"""Attention backends by name: ``name -> "pkg.module.BackendClass"``, imported on first use
(a ``vllm_core.plugins.registry.Registry``: its re-registration rule and plugin loading apply).

Plugins register through the ``register_attention_backends`` hook (see
``vllm_core.plugins.hookspecs``) or by calling ``register_backend`` directly. Importing this
module does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vllm_core.plugins.registry import Registry

if TYPE_CHECKING:  # pragma: no cover
    from vllm_core.attention.backend import AttentionBackend

BACKENDS = Registry("attention backend")
register_backend = BACKENDS.register
unregister_backend = BACKENDS.unregister
list_backends = BACKENDS.items
get_backend_class_path = BACKENDS.class_path


def get_backend_cls(name: str) -> type[AttentionBackend]:
    """Import and return the backend class of ``name``.

    Raises ``ValueError`` for an unknown name or a class that is not an ``AttentionBackend``,
    and ``ImportError`` when its module cannot be imported (the selector turns that into a
    refusal reason).
    """
    from vllm_core.attention.backend import AttentionBackend

    cls = BACKENDS.load(name)
    if not (isinstance(cls, type) and issubclass(cls, AttentionBackend)):
        raise ValueError(f"attention backend {name!r} is registered as "
                         f"{BACKENDS.class_path(name)!r}, which is not an AttentionBackend "
                         f"subclass")
    return cls
