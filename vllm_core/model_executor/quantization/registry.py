"""Quantization methods by name: ``name -> "pkg.module.MethodClass"``, imported on first use.

Plugins register through the ``register_quantization_methods`` hook or by calling
``register_quantization_method``. ``Platform.supported_quantization`` says which names a
platform can run; this registry says which exist and where their code lives.
"""

from __future__ import annotations

import threading
from typing import Any

from vllm_core.plugins.loading import import_object

_lock = threading.Lock()
_METHODS: dict[str, str] = {}


def register_quantization_method(name: str, class_path: str, *, override: bool = False) -> None:
    """Map ``name`` to ``class_path``. Same pair again: no-op; a different path for a taken
    name raises ``ValueError`` unless ``override=True``."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"quantization method name must be a non-empty string, got {name!r}")
    if not isinstance(class_path, str) or "." not in class_path:
        raise ValueError(f"quantization method {name!r}: class_path must be a dotted path, "
                         f"got {class_path!r}")
    with _lock:
        existing = _METHODS.get(name)
        if existing is not None and existing != class_path and not override:
            raise ValueError(f"quantization method {name!r} is already registered as "
                             f"{existing!r}; refusing to replace it with {class_path!r} "
                             f"(pass override=True)")
        _METHODS[name] = class_path


def unregister_quantization_method(name: str) -> None:
    with _lock:
        _METHODS.pop(name, None)


def list_quantization_methods() -> dict[str, str]:
    """Every known method, name -> class path, sorted (general plugins are loaded first)."""
    _ensure_plugins()
    with _lock:
        return dict(sorted(_METHODS.items()))


def get_quantization_method_cls(name: str) -> Any:
    """Import the class of ``name``; ``ValueError`` naming the known methods if unknown."""
    _ensure_plugins()
    with _lock:
        path = _METHODS.get(name)
        known = sorted(_METHODS)
    if path is None:
        raise ValueError(f"unknown quantization method {name!r}; known: "
                         f"{', '.join(known) or 'none'}")
    return import_object(path)


def _ensure_plugins() -> None:
    from vllm_core.plugins import load_general_plugins

    load_general_plugins()
