"""Choosing the one platform of this process from the discovery reports.

Rules, in order:
1. ``VLLM_PLATFORM=<name>`` forces the plugin of that entry-point (or platform) name. It must be
   installed, allowed by ``VLLM_PLUGINS`` and detect its hardware; otherwise selection fails
   with the reason and the fix (it never falls back to another platform).
2. Otherwise the detected plugin of highest ``Platform.priority`` wins (accelerators at
   ``PRIORITY_ACCELERATOR`` outrank the CPU at ``PRIORITY_CPU``).
3. Two or more detected plugins sharing the highest priority are an error naming all of them
   and the override (``VLLM_PLATFORM=...``): we do not guess between two accelerators.
4. No detected plugin is an error naming the extras to install, and every skipped plugin.
"""

from __future__ import annotations

from dataclasses import dataclass

from vllm_core.platforms.discovery import PluginReport, PluginStatus
from vllm_core.platforms.interface import Platform

# Extras of the root distribution, one per in-tree platform plugin: name -> what it is for.
KNOWN_EXTRAS = {
    "cpu": "any x86-64 / Arm / POWER CPU",
    "cuda": "NVIDIA GPUs",
    "rocm": "AMD GPUs",
    "xpu": "Intel GPUs",
    "tpu": "Google TPUs",
}


class PlatformSelectionError(RuntimeError):
    """No platform could be chosen. ``str(error)`` is the user-facing explanation."""

    def __init__(self, message: str, reports: list[PluginReport]) -> None:
        super().__init__(message)
        self.reports = reports


@dataclass(slots=True)
class PlatformSelection:
    platform_cls: type[Platform]
    plugin: str                     # the entry point name that won
    reason: str                     # why it won, in words
    reports: list[PluginReport]


def install_hint() -> str:
    """The install commands of the in-tree platforms, one per line."""
    return "\n".join(f"  pip install 'vllm-core[{name}]'   # {what}"
                     for name, what in KNOWN_EXTRAS.items())


def select_platform(reports: list[PluginReport], forced: str | None = None) -> PlatformSelection:
    """Apply the rules above; raise ``PlatformSelectionError`` with the reports attached."""
    if forced is not None:
        return _select_forced(reports, forced)
    detected = [r for r in reports if r.status is PluginStatus.DETECTED]
    if not detected:
        raise PlatformSelectionError(_no_platform_message(reports), reports)
    top = max(r.priority for r in detected)
    best = [r for r in detected if r.priority == top]
    if len(best) > 1:
        names = " and ".join(r.label for r in best)
        overrides = " or ".join(f"VLLM_PLATFORM={r.name}" for r in best)
        raise PlatformSelectionError(
            f"platform plugins {names} are all active with the same priority {top}, so "
            f"vllm-core will not guess. Fix: choose one with {overrides} (or leave plugins out "
            f"with VLLM_PLUGINS=...)", reports)
    winner = best[0]
    if len(detected) == 1:
        why = f"the only detected platform plugin: {winner.label}"
    else:
        ranked = ", ".join(f"{r.name} ({r.priority})"
                           for r in sorted(detected, key=lambda r: -r.priority))
        why = f"highest priority among the detected platform plugins: {ranked}"
    return PlatformSelection(winner.platform_cls, winner.name, why, reports)


def _select_forced(reports: list[PluginReport], forced: str) -> PlatformSelection:
    matches = [r for r in reports if r.name == forced]
    if not matches:  # also accept the platform's own name when it differs from the entry name
        matches = [r for r in reports
                   if r.platform_cls is not None and r.platform_cls.name == forced]
    if not matches:
        installed = ", ".join(sorted({r.name for r in reports})) or "none"
        if forced in KNOWN_EXTRAS:
            fix = f"pip install 'vllm-core[{forced}]'"
        else:
            fix = (f"install the distribution that provides platform plugin {forced!r}; "
                   f"in-tree platforms:\n{install_hint()}")
        raise PlatformSelectionError(
            f"VLLM_PLATFORM={forced} names no installed platform plugin (installed: "
            f"{installed}). Fix: {fix}, or unset VLLM_PLATFORM", reports)
    detected = [r for r in matches if r.status is PluginStatus.DETECTED]
    if len(detected) > 1:
        names = " and ".join(r.label for r in detected)
        raise PlatformSelectionError(
            f"VLLM_PLATFORM={forced} matches several detected plugins: {names}. Fix: uninstall "
            f"all but one of these distributions", reports)
    if detected:
        return PlatformSelection(detected[0].platform_cls, detected[0].name,
                                 f"forced by VLLM_PLATFORM={forced}", reports)
    r = matches[0]
    if r.status is PluginStatus.NOT_DETECTED:
        raise PlatformSelectionError(
            f"VLLM_PLATFORM={forced}: platform plugin {r.label} is installed but did not detect "
            f"its hardware: {r.reason}. Fix: make the device visible to this process, or unset "
            f"VLLM_PLATFORM to let vllm-core choose", reports)
    raise PlatformSelectionError(f"VLLM_PLATFORM={forced}: {r.message()}", reports)


def _no_platform_message(reports: list[PluginReport]) -> str:
    lines = ["no vllm-core platform is available: no platform plugin detected its hardware."]
    if reports:
        lines.append("Plugins found:")
        lines.extend(f"  - {r.message()}" for r in reports)
    else:
        lines.append("No platform plugin is installed (entry-point group "
                     "'vllm.platform_plugins' is empty).")
    lines.append("Fix: install the plugin for your hardware, e.g.")
    lines.append(install_hint())
    lines.append("(from a source checkout: pip install -e '.[cpu]' -e platforms/cpu)")
    return "\n".join(lines)
