"""Attention backends by name: ``name -> "pkg.module.BackendClass"``, imported on first use.

Plugins register through the ``register_attention_backends`` hook (see
``vllm_core.plugins.hookspecs``) or by calling ``register_backend`` directly. Lookups load the
general plugins first, so a backend registered by any installed plugin is visible. Importing
this module does not import torch.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from vllm_core.plugins.loading import import_object

if TYPE_CHECKING:  # pragma: no cover
    from vllm_core.attention.backend import AttentionBackend

_lock = threading.Lock()
_BACKENDS: dict[str, str] = {}


def register_backend(name: str, class_path: str, *, override: bool = False) -> None:
    """Map ``name`` to ``class_path``. Registering the same pair again is a no-op; a different
    path for a taken name raises ``ValueError`` unless ``override=True``."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"attention backend name must be a non-empty string, got {name!r}")
    if not isinstance(class_path, str) or "." not in class_path:
        raise ValueError(f"attention backend {name!r}: class_path must be a dotted path like "
                         f"'pkg.module.Backend', got {class_path!r}")
    with _lock:
        existing = _BACKENDS.get(name)
        if existing is not None and existing != class_path and not override:
            raise ValueError(f"attention backend {name!r} is already registered as {existing!r}; "
                             f"refusing to replace it with {class_path!r} (pass override=True)")
        _BACKENDS[name] = class_path


def unregister_backend(name: str) -> None:
    """Remove ``name`` (tests). Unknown names are ignored."""
    with _lock:
        _BACKENDS.pop(name, None)


def list_backends() -> dict[str, str]:
    """Every registered backend, name -> class path, sorted by name."""
    _ensure_plugins()
    with _lock:
        return dict(sorted(_BACKENDS.items()))


def get_backend_class_path(name: str) -> str:
    """The class path registered for ``name``; ``ValueError`` listing the known names if none."""
    _ensure_plugins()
    with _lock:
        path = _BACKENDS.get(name)
        known = sorted(_BACKENDS)
    if path is None:
        raise ValueError(f"unknown attention backend {name!r}; registered: "
                         f"{', '.join(known) or 'none'}")
    return path


def get_backend_cls(name: str) -> type[AttentionBackend]:
    """Import and return the backend class of ``name``.

    Raises ``ValueError`` for an unknown name or a class that is not an ``AttentionBackend``,
    and ``ImportError`` when its module cannot be imported (the selector turns that into a
    refusal reason).
    """
    from vllm_core.attention.backend import AttentionBackend

    path = get_backend_class_path(name)
    cls = import_object(path)
    if not (isinstance(cls, type) and issubclass(cls, AttentionBackend)):
        raise ValueError(f"attention backend {name!r} is registered as {path!r}, which is not an "
                         f"AttentionBackend subclass")
    return cls


def _ensure_plugins() -> None:
    from vllm_core.plugins import load_general_plugins

    load_general_plugins()
