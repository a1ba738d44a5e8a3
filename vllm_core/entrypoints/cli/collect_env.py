"""``vllm-core collect-env``: what a bug report needs about this machine and installation.

OS, Python, torch (version and build: CUDA / HIP version, CPU capability), the chosen platform
and its devices (with the CPU's ISA), installed plugin distributions with their versions, and
the relevant environment variables (``envs.relevant_environment()``; secrets left out).
Importing this module does not import torch.
"""

from __future__ import annotations

import argparse
import json
import platform as _platform
import sys
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "collect-env", help="print environment information for bug reports",
        description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    parser.set_defaults(func=run)


def _torch_info() -> dict[str, Any]:
    try:
        import torch
    except ImportError as e:
        return {"error": f"torch cannot be imported: {e}"}
    info: dict[str, Any] = {
        "version": torch.__version__,
        "cuda": torch.version.cuda,
        "hip": getattr(torch.version, "hip", None),
        "debug": torch.version.debug,
        "num_threads": torch.get_num_threads(),
    }
    try:
        info["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    except Exception:  # noqa: BLE001 - older builds
        info["cpu_capability"] = None
    return info


def plugin_distributions() -> list[dict[str, Any]]:
    """Distributions declaring vllm-core plugin entry points (either group), with versions."""
    from vllm_core.platforms.discovery import PLATFORM_PLUGINS_GROUP
    from vllm_core.plugins import GENERAL_PLUGINS_GROUP
    from vllm_core.plugins.loading import distribution_of, entry_points_of

    found: dict[tuple[str, str], dict[str, Any]] = {}
    for group in (PLATFORM_PLUGINS_GROUP, GENERAL_PLUGINS_GROUP):
        for ep in entry_points_of(group):
            name, version = distribution_of(ep)
            entry = found.setdefault((name, version), {"distribution": name, "version": version,
                                                       "entry_points": []})
            entry["entry_points"].append(f"{group}: {ep.name} = {ep.value}")
    return sorted(found.values(), key=lambda d: d["distribution"])


def _platform_info() -> dict[str, Any]:
    from vllm_core import envs
    from vllm_core.platforms.discovery import PluginStatus, discover_platform_plugins
    from vllm_core.platforms.interface import PlatformKind
    from vllm_core.platforms.selection import PlatformSelectionError, select_platform

    reports = discover_platform_plugins(allow_list=envs.plugin_allow_list())
    info: dict[str, Any] = {"plugins": {r.name: f"{r.status.value}: {r.reason}" for r in reports}}
    try:
        selection = select_platform(reports, forced=envs.platform_override())
        info["chosen"], info["reason"] = selection.plugin, selection.reason
    except PlatformSelectionError as e:
        info["chosen"], info["error"] = None, str(e)
    devices = {}
    for r in reports:
        if r.status is not PluginStatus.DETECTED or r.platform_cls is None:
            continue
        try:
            facts = r.platform_cls.device_facts()
            devices[r.name] = {"count": facts.device_count, "name": facts.device_name,
                               "capability": facts.capability,
                               "total_memory_gib": round(facts.total_memory_bytes / 2**30, 2)}
            if r.platform_cls.kind is PlatformKind.CPU:
                info["isa"] = facts.capability
        except Exception as e:  # noqa: BLE001 - a report must still print
            devices[r.name] = {"error": f"{type(e).__name__}: {e}"}
    info["devices"] = devices
    return info


def _distributed_info(platform_info: dict[str, Any]) -> dict[str, Any]:
    """The topology a TP / PP layout can use on this host: torch.distributed's backends, the
    chosen platform's backend and communicator, and its device count."""
    info: dict[str, Any] = {}
    try:
        import torch.distributed as dist

        info["torch_distributed"] = dist.is_available()
        info["backends_built"] = ", ".join(
            b for b, ok in (("gloo", dist.is_gloo_available()), ("nccl", dist.is_nccl_available()),
                            ("mpi", dist.is_mpi_available())) if ok) or "none"
    except Exception as e:  # noqa: BLE001 - a report must still print
        info["torch_distributed"] = f"unavailable: {e}"
    chosen = platform_info.get("chosen")
    if chosen:
        from vllm_core.platforms import resolve_current_platform

        try:
            platform = resolve_current_platform()
            info["platform_backend"] = platform.dist_backend
            info["communicator"] = str(platform.communicator_class())
        except Exception as e:  # noqa: BLE001
            info["platform_backend"] = f"error: {e}"
        devices = platform_info.get("devices", {}).get(chosen, {})
        if isinstance(devices.get("count"), int):
            info["devices_on_this_host"] = devices["count"]
    info["executors"] = "uni, mp (one process per rank on this host)"
    return info


def collect() -> dict[str, Any]:
    from vllm_core import envs
    from vllm_core.platforms.interface import PLATFORM_API_VERSION
    from vllm_core.version import __version__

    return {
        "vllm_core": {"version": __version__, "platform_api": PLATFORM_API_VERSION},
        "os": {"platform": _platform.platform(), "machine": _platform.machine(),
               "libc": " ".join(_platform.libc_ver()).strip()},
        "python": {"version": sys.version.replace("\n", " "), "executable": sys.executable},
        "torch": _torch_info(),
        "platform": (platform := _platform_info()),
        "distributed": _distributed_info(platform),
        "plugin_distributions": plugin_distributions(),
        "environment": envs.relevant_environment(),
    }


def format_report(data: dict[str, Any]) -> str:
    lines: list[str] = []

    def section(title: str, values: dict[str, Any]) -> None:
        lines.append(f"{title}:")
        for key, value in values.items():
            if isinstance(value, dict):
                lines.append(f"  {key}:")
                lines.extend(f"    {k}: {v}" for k, v in value.items())
            else:
                lines.append(f"  {key}: {value}")
        lines.append("")

    section("vllm-core", data["vllm_core"])
    section("OS", data["os"])
    section("Python", data["python"])
    section("torch", data["torch"])
    section("Platform", data["platform"])
    section("Distributed", data["distributed"])
    lines.append("Plugin distributions:")
    if not data["plugin_distributions"]:
        lines.append("  (none)")
    for d in data["plugin_distributions"]:
        lines.append(f"  {d['distribution']} {d['version']}")
        lines.extend(f"    {ep}" for ep in d["entry_points"])
    lines.append("")
    if data["environment"]:
        section("Environment variables", data["environment"])
    else:
        lines.append("Environment variables: (none of the relevant ones set)")
    return "\n".join(lines).rstrip()


def run(args: argparse.Namespace) -> int:
    data = collect()
    print(json.dumps(data, indent=2) if args.json else format_report(data))
    return 0
