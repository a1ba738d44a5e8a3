"""The platform of this process: ``current_platform``, resolved lazily on first use.

Importing this package (or ``vllm_core.platforms.interface``) never runs discovery, so plugins
can import the interface freely. The first attribute access on ``current_platform`` (or a call
to ``resolve_current_platform()``) discovers the plugins (``discovery``), applies the selection
rules (``selection``) with ``VLLM_PLUGINS`` / ``VLLM_PLATFORM`` read once through ``envs``, logs
the choice, and caches it for the life of the process. ``reset_current_platform()`` forgets the
choice (tests); ``set_current_platform(cls)`` pins one without discovery (tests, embedders).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from vllm_core.platforms.interface import (
    PLATFORM_API_VERSION,
    PRIORITY_ACCELERATOR,
    PRIORITY_CPU,
    DeviceFacts,
    Platform,
    PlatformKind,
)

if TYPE_CHECKING:  # pragma: no cover
    from vllm_core.platforms.selection import PlatformSelection

__all__ = [
    "PLATFORM_API_VERSION", "PRIORITY_ACCELERATOR", "PRIORITY_CPU", "DeviceFacts", "Platform",
    "PlatformKind", "current_platform", "resolve_current_platform", "reset_current_platform",
    "set_current_platform", "get_platform_selection", "is_platform_resolved",
]

_lock = threading.RLock()
_selection: PlatformSelection | None = None


def get_platform_selection() -> PlatformSelection:
    """Resolve (once) and return the selection: the class, the winning plugin, why, reports.

    Raises ``PlatformSelectionError`` (a ``RuntimeError``) when no platform can be chosen; the
    next call tries again (nothing is cached on failure).
    """
    global _selection
    with _lock:
        if _selection is None:
            from vllm_core import envs
            from vllm_core.logger import init_logger
            from vllm_core.platforms.discovery import discover_platform_plugins
            from vllm_core.platforms.selection import select_platform

            reports = discover_platform_plugins(allow_list=envs.plugin_allow_list())
            selection = select_platform(reports, forced=envs.platform_override())
            init_logger(__name__).info("Platform: %s selected; %s", selection.plugin,
                                       selection.reason)
            _selection = selection
        return _selection


def resolve_current_platform() -> type[Platform]:
    """The Platform class of this process (resolving it on the first call)."""
    return get_platform_selection().platform_cls


def is_platform_resolved() -> bool:
    return _selection is not None


def reset_current_platform() -> None:
    """Forget the resolved platform; the next use of ``current_platform`` resolves again."""
    global _selection
    with _lock:
        _selection = None


def set_current_platform(platform_cls: type[Platform], reason: str = "set explicitly") -> None:
    """Pin ``platform_cls`` as the current platform without discovery (tests, embedding)."""
    global _selection
    from vllm_core.platforms.selection import PlatformSelection

    if not (isinstance(platform_cls, type) and issubclass(platform_cls, Platform)):
        raise ValueError(f"platform_cls must be a Platform subclass, got {platform_cls!r}")
    with _lock:
        _selection = PlatformSelection(platform_cls, platform_cls.name, reason, [])


class _CurrentPlatform:
    """Stand-in for the current Platform class: every attribute access resolves and delegates.

    ``current_platform.name``, ``current_platform.check_and_update_config(config)`` ... behave
    as on the class itself; ``resolve_current_platform()`` returns the class proper (for
    ``issubclass`` checks or to pass it around).
    """

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        return getattr(resolve_current_platform(), name)

    def __repr__(self) -> str:
        if _selection is None:
            return "<current_platform (not resolved yet)>"
        return f"<current_platform {_selection.platform_cls.__qualname__} ({_selection.plugin})>"


current_platform: type[Platform] = _CurrentPlatform()  # type: ignore[assignment]
