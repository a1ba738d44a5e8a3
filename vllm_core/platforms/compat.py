"""Compatibility of a plugin's declared API version with the core's ``PLATFORM_API_VERSION``.

Rule: versions are ``MAJOR.MINOR``. A plugin written for ``P.q`` runs on a core at ``C.c`` when
``P == C`` and ``q <= c`` (the core only adds to a major version; a newer minor may rely on
additions this core lacks).
"""

from __future__ import annotations

from vllm_core.platforms.interface import PLATFORM_API_VERSION


def parse_api_version(text: str) -> tuple[int, int]:
    """``"1.2"`` -> ``(1, 2)``; raises ``ValueError`` naming the text when malformed."""
    parts = str(text).strip().split(".")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise ValueError(f"API version must look like MAJOR.MINOR (e.g. '1.0'), got {text!r}")
    return int(parts[0]), int(parts[1])


def api_version_problem(declared: str, core: str = PLATFORM_API_VERSION) -> str | None:
    """None when ``declared`` is compatible with ``core``; else the reason, in words."""
    try:
        p_major, p_minor = parse_api_version(declared)
    except ValueError as e:
        return str(e)
    c_major, c_minor = parse_api_version(core)
    if p_major != c_major:
        return (f"declares platform API {declared} but this vllm-core implements {core} "
                f"(major version differs)")
    if p_minor > c_minor:
        return (f"declares platform API {declared}, newer than this vllm-core's {core}; "
                f"upgrade vllm-core")
    return None
