"""Importing objects named by dotted paths, the currency of every registry in the core.

Registries store ``name -> "package.module.ClassName"`` and import on first use, so that
registering a backend (or model, or quantization method) costs nothing and a missing optional
dependency only matters to whoever actually selects that entry.
"""

from __future__ import annotations

import importlib
from typing import Any


def import_object(path: str) -> Any:
    """Import ``"pkg.mod.Name"`` or ``"pkg.mod:Name"`` (attribute chains allowed after ``:``).

    Raises ``ValueError`` for a malformed path, ``ImportError`` (including
    ``ModuleNotFoundError``) when the module cannot be imported, and ``ImportError`` when the
    module lacks the attribute, so callers need to handle only the two.
    """
    if not isinstance(path, str) or not path.strip():
        raise ValueError(f"expected a dotted path like 'package.module.Name', got {path!r}")
    path = path.strip()
    if ":" in path:
        module_name, _, attr_chain = path.partition(":")
    else:
        module_name, _, attr_chain = path.rpartition(".")
    if not module_name or not attr_chain:
        raise ValueError(f"expected a dotted path like 'package.module.Name', got {path!r}")
    module = importlib.import_module(module_name)
    obj: Any = module
    for attr in attr_chain.split("."):
        try:
            obj = getattr(obj, attr)
        except AttributeError as e:
            raise ImportError(f"module {module_name!r} has no attribute {attr_chain!r}",
                              name=module_name) from e
    return obj


def describe_exception(exc: BaseException) -> str:
    """``"ModuleNotFoundError: No module named 'vllm'"``: type and message on one line."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _metadata_module() -> Any:
    try:
        import importlib_metadata as metadata  # the maintained backport: same API everywhere
    except ImportError:  # pragma: no cover - the core depends on it; stdlib as a fallback
        from importlib import metadata
    return metadata


def entry_points_of(group: str, search_path: list[str] | None = None) -> list[Any]:
    """Entry points of ``group`` from installed distributions, sorted by name.

    ``search_path`` (tests, tools) restricts the search to distributions found on those
    directories instead of ``sys.path``. As with the standard lookup, a distribution seen twice
    (same normalised name) counts once: the first one on the path wins.
    """
    metadata = _metadata_module()
    if search_path is None:
        eps = list(metadata.entry_points(group=group))
    else:
        eps, seen = [], set()
        for dist in metadata.distributions(path=list(search_path)):
            key = _normalise(dist.metadata["Name"] or "")
            if key in seen:
                continue
            seen.add(key)
            eps.extend(ep for ep in dist.entry_points if ep.group == group)
    return sorted(eps, key=lambda ep: (ep.name, ep.value))


def distribution_of(ep: Any) -> tuple[str, str]:
    """(distribution name, version) that declared entry point ``ep``; ("?", "?") if unknown."""
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "?", "?"
    return (dist.metadata["Name"] or "?"), (dist.version or "?")


def _normalise(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")
