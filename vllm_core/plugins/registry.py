"""``Registry``: one name -> dotted class path table, the single implementation behind the model,
attention-backend and quantization-method registries.

Rules (the same for every kind): a class path is ``"pkg.module.Name"`` (or ``"pkg.module:Name"``)
and is imported only when looked up; registering the same pair again is a no-op; a different
path for a taken name raises ``ValueError`` unless ``override=True``. Lookups load the general
plugins first (once per process, ``vllm_core.plugins.load_general_plugins``), so whatever an
installed plugin registers is visible. Thread-safe.
"""

from __future__ import annotations

import threading
from typing import Any


class Registry:
    """Entries of one ``kind`` ("attention backend", "model architecture", ...)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._lock = threading.Lock()
        self._entries: dict[str, str] = {}

    def register(self, name: str, class_path: str, *, override: bool = False) -> None:
        """Map ``name`` to ``class_path`` (see the module docstring for the rule)."""
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"{self.kind} name must be a non-empty string, got {name!r}")
        if not isinstance(class_path, str) or "." not in class_path.replace(":", "."):
            raise ValueError(f"{self.kind} {name!r}: class_path must be a dotted path like "
                             f"'pkg.module.Name', got {class_path!r}")
        with self._lock:
            existing = self._entries.get(name)
            if existing is not None and existing != class_path and not override:
                raise ValueError(f"{self.kind} {name!r} is already registered as {existing!r}; "
                                 f"refusing to replace it with {class_path!r} "
                                 f"(pass override=True)")
            self._entries[name] = class_path

    def unregister(self, name: str) -> None:
        """Remove ``name`` (tests). Unknown names are ignored."""
        with self._lock:
            self._entries.pop(name, None)

    def items(self) -> dict[str, str]:
        """Every entry, name -> class path, sorted by name."""
        _load_plugins()
        with self._lock:
            return dict(sorted(self._entries.items()))

    def class_path(self, name: str) -> str:
        """The class path of ``name``; ``ValueError`` listing the known names if none."""
        _load_plugins()
        with self._lock:
            path = self._entries.get(name)
            known = sorted(self._entries)
        if path is None:
            raise ValueError(f"unknown {self.kind} {name!r}; registered: "
                             f"{', '.join(known) or 'none'}")
        return path

    def load(self, name: str) -> Any:
        """Import the object registered for ``name`` (``ImportError`` when it cannot load)."""
        from vllm_core.plugins.loading import import_object

        return import_object(self.class_path(name))


def _load_plugins() -> None:
    from vllm_core.plugins import load_general_plugins

    load_general_plugins()


def argparse_name_type(registry: Registry) -> Any:
    """An argparse ``type=`` that accepts only names registered in ``registry`` (plugins
    loaded): a bad flag fails at argument parsing, naming the known entries."""
    import argparse

    def check(name: str) -> str:
        known = registry.items()
        if name not in known:
            raise argparse.ArgumentTypeError(
                f"unknown {registry.kind} {name!r}; available: {', '.join(known) or 'none'}")
        return name

    check.__name__ = registry.kind.replace(" ", "_")
    return check
