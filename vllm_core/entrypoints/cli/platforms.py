"""``vllm-core platforms``: every platform plugin, what its detection said, and the choice.

Shows for each entry point of ``vllm.platform_plugins``: distribution and version, status and
reason (with the fix for skipped plugins), declared API version and priority; then the chosen
platform and why (or the selection error), the CPU's ISA line, the general plugins and the
registered attention backends and quantization methods (whether each runs on the chosen
platform in its default dtype, and what it supports). Exit status 0 when a platform was chosen, 1 otherwise.
Importing this module does not import torch.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "platforms", help="list platform plugins, their detection results and the chosen one",
        description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    parser.set_defaults(func=run)


def collect() -> dict[str, Any]:
    """Discovery + selection as plain data (what ``--json`` prints)."""
    from vllm_core import envs
    from vllm_core.platforms.discovery import discover_platform_plugins
    from vllm_core.platforms.interface import PLATFORM_API_VERSION, PlatformKind
    from vllm_core.platforms.selection import PlatformSelectionError, select_platform
    from vllm_core.version import __version__

    allow, forced = envs.plugin_allow_list(), envs.platform_override()
    reports = discover_platform_plugins(allow_list=allow)
    data: dict[str, Any] = {
        "vllm_core_version": __version__, "platform_api_version": PLATFORM_API_VERSION,
        "VLLM_PLATFORM": forced, "VLLM_PLUGINS": ",".join(allow) if allow is not None else None,
        "plugins": [], "chosen": None, "reason": None, "error": None,
    }
    for r in reports:
        entry = {"name": r.name, "distribution": r.distribution, "version": r.version,
                 "entry_point": r.value, "status": r.status.value, "reason": r.reason,
                 "fix": r.fix or None, "api_version": r.api_version, "priority": r.priority,
                 "platform_class": (f"{r.platform_cls.__module__}.{r.platform_cls.__qualname__}"
                                    if r.platform_cls is not None else None)}
        if r.platform_cls is not None and r.status.value == "detected":
            try:
                facts = r.platform_cls.device_facts()
                cls = r.platform_cls
                entry["device"] = {"count": facts.device_count, "name": facts.device_name,
                                   "capability": facts.capability,
                                   "dist_backend": cls.dist_backend,
                                   "device_control_env_var": cls.device_control_env_var or None,
                                   "graph_capture": cls.supports_graph_capture(),
                                   "async_scheduling": cls.default_async_scheduling()}
                if r.platform_cls.kind is PlatformKind.CPU:
                    entry["isa"] = facts.capability
            except Exception as e:  # noqa: BLE001 - a report must still print
                entry["device"] = {"error": f"{type(e).__name__}: {e}"}
        data["plugins"].append(entry)
    try:
        selection = select_platform(reports, forced=forced)
        data["chosen"], data["reason"] = selection.plugin, selection.reason
    except PlatformSelectionError as e:
        data["error"] = str(e)
    data["general_plugins"] = _general_plugins()
    data["attention_backends"] = _attention_backends()
    chosen = next((r.platform_cls for r in reports if r.name == data["chosen"]), None)
    data["quantization_methods"] = _quantization_methods(chosen)
    return data


def _quantization_methods(platform_cls: Any) -> list[str]:
    """One line per registered method, judged for the chosen platform and its default dtype."""
    from vllm_core.model_executor.quantization.selection import describe_methods

    if platform_cls is None:
        return describe_methods("(none)", "(none)")
    return describe_methods(platform_cls.name, platform_cls.default_dtype())


def _general_plugins() -> list[dict[str, str]]:
    from vllm_core.plugins import load_general_plugins

    return [{"name": g.name, "distribution": g.distribution, "version": g.version,
             "status": g.status.value, "reason": g.reason} for g in load_general_plugins()]


def _attention_backends() -> dict[str, str]:
    from vllm_core.attention.registry import list_backends

    return list_backends()


def format_report(data: dict[str, Any]) -> str:
    lines = [f"vllm-core {data['vllm_core_version']} (platform API {data['platform_api_version']})",
             f"VLLM_PLATFORM={data['VLLM_PLATFORM'] or '(unset)'}  "
             f"VLLM_PLUGINS={data['VLLM_PLUGINS'] or '(unset: all)'}",
             "", "Platform plugins (entry-point group vllm.platform_plugins):"]
    if not data["plugins"]:
        lines.append("  (none installed)")
    for p in data["plugins"]:
        api = f"API {p['api_version']}" if p["api_version"] else ""
        prio = f"priority {p['priority']}" if p["priority"] is not None else ""
        lines.append(f"  {p['name']:<10} {p['distribution']} {p['version']}  [{p['status']}]  "
                     f"{api}  {prio}".rstrip())
        lines[-1] = lines[-1].rstrip()
        lines.append(f"      {p['reason']}")
        if p["fix"]:
            lines.append(f"      fix: {p['fix']}")
        device = p.get("device")
        if device:
            if "error" in device:
                lines.append(f"      device facts failed: {device['error']}")
            else:
                lines.append(f"      device: {device['count']} x {device['name']}")
                select = device["device_control_env_var"]
                lines.append(f"      collectives: {device['dist_backend']}"
                             + (f"; devices selected by {select}" if select else "")
                             + f"; graphs: {'yes' if device['graph_capture'] else 'no'}"
                             + "; async scheduling by default: "
                             + f"{'yes' if device['async_scheduling'] else 'no'}")
        if p.get("isa"):
            lines.append(f"      ISA: {p['isa']}")
    lines.append("")
    if data["chosen"]:
        lines.append(f"Chosen platform: {data['chosen']}; {data['reason']}")
    else:
        lines.append("Chosen platform: none")
        lines.append(f"error: {data['error']}")
    lines.append("")
    lines.append("General plugins (entry-point group vllm.general_plugins):")
    if not data["general_plugins"]:
        lines.append("  (none installed)")
    for g in data["general_plugins"]:
        tail = f": {g['reason']}" if g["reason"] else ""
        lines.append(f"  {g['name']:<10} {g['distribution']} {g['version']}  "
                     f"[{g['status']}]{tail}")
    lines.append("")
    lines.append("Attention backends: " + (", ".join(data["attention_backends"]) or "none"))
    lines.append("")
    lines.append("Quantization methods (--quantization; on the chosen platform, default dtype):")
    lines.extend(f"  {line}" for line in data.get("quantization_methods", []))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    data = collect()
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(format_report(data))
    if data["chosen"] is None:
        if args.json:
            print(f"vllm-core platforms: error: {data['error']}", file=sys.stderr)
        return 1
    return 0
