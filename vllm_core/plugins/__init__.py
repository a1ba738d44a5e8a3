"""Plugin machinery: the pluggy ``PluginManager`` and the general plugins.

- ``get_plugin_manager()``: the process's manager (project ``vllm_core``) with the hook
  specifications of ``hookspecs`` and the core's own implementations (``builtin``).
- ``load_general_plugins()``: runs every callable of entry-point group
  ``vllm.general_plugins`` once per process (names filtered by ``VLLM_PLUGINS``). A general
  plugin registers models / backends / quantization methods, usually by handing a module of
  ``@hookimpl`` functions to ``register_hooks``. A failing plugin is logged and reported, not
  fatal. Registries call this lazily before answering a lookup.
- ``apply_config_hooks(config)``: runs the ``adjust_engine_config`` hook; the engine calls it
  from ``create_engine_config`` right after ``Platform.check_and_update_config``.

Real vLLM's general plugins share the group name; they usually fail to import here (no
``vllm``), which is reported with the fix rather than crashing the engine.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pluggy

from vllm_core.plugins.hookspecs import PROJECT_NAME, VllmCoreHookSpecs, hookimpl, hookspec
from vllm_core.plugins.loading import describe_exception, distribution_of, entry_points_of

if TYPE_CHECKING:  # pragma: no cover
    from vllm_core.config import EngineConfig

__all__ = [
    "GENERAL_PLUGINS_GROUP", "PROJECT_NAME", "GeneralPluginReport", "GeneralPluginStatus",
    "apply_config_hooks", "create_plugin_manager", "general_plugin_reports",
    "get_plugin_manager", "hookimpl", "hookspec", "load_general_plugins", "register_hooks",
    "reset_plugins",
]

GENERAL_PLUGINS_GROUP = "vllm.general_plugins"

RegisterFn = Callable[[str, str], None]


class GeneralPluginStatus(str, enum.Enum):
    LOADED = "loaded"
    EXCLUDED = "excluded"
    FAILED = "failed"


@dataclass(slots=True)
class GeneralPluginReport:
    name: str
    value: str
    distribution: str
    version: str
    status: GeneralPluginStatus
    reason: str = ""

    def message(self) -> str:
        text = (f"general plugin {self.name!r} ({self.distribution} {self.version}) "
                f"{self.status.value}")
        return f"{text}: {self.reason}" if self.reason else text


def _register_backend(name: str, class_path: str, override: bool = False) -> None:
    from vllm_core.attention.registry import register_backend

    register_backend(name, class_path, override=override)


def _register_model(architecture: str, class_path: str, override: bool = False) -> None:
    from vllm_core.model_executor.models.registry import register_model

    register_model(architecture, class_path, override=override)


def _register_quantization(name: str, class_path: str, override: bool = False) -> None:
    from vllm_core.model_executor.quantization.registry import register_quantization_method

    register_quantization_method(name, class_path, override=override)


def _register_tool_parser(name: str, class_path: str, override: bool = False) -> None:
    from vllm_core.entrypoints.openai.tool_parsers.registry import register_tool_parser

    register_tool_parser(name, class_path, override=override)


def _register_reasoning_parser(name: str, class_path: str, override: bool = False) -> None:
    from vllm_core.reasoning.registry import register_reasoning_parser

    register_reasoning_parser(name, class_path, override=override)


def create_plugin_manager(*, register_backend: RegisterFn | None = None,
                          register_model: RegisterFn | None = None,
                          register_quantization: RegisterFn | None = None,
                          register_tool_parser: RegisterFn | None = None,
                          register_reasoning_parser: RegisterFn | None = None,
                          with_builtin: bool = True) -> pluggy.PluginManager:
    """A new manager whose historic registration hooks feed the given functions (default: the
    core's registries). Tests pass fakes; the process uses ``get_plugin_manager()``."""
    pm = pluggy.PluginManager(PROJECT_NAME)
    pm.add_hookspecs(VllmCoreHookSpecs)
    pm.hook.register_attention_backends.call_historic(
        kwargs={"register": register_backend or _register_backend})
    pm.hook.register_model_architectures.call_historic(
        kwargs={"register": register_model or _register_model})
    pm.hook.register_quantization_methods.call_historic(
        kwargs={"register": register_quantization or _register_quantization})
    pm.hook.register_tool_parsers.call_historic(
        kwargs={"register": register_tool_parser or _register_tool_parser})
    pm.hook.register_reasoning_parsers.call_historic(
        kwargs={"register": register_reasoning_parser or _register_reasoning_parser})
    if with_builtin:
        from vllm_core.plugins import builtin

        pm.register(builtin, name="vllm_core.builtin")
    return pm


_lock = threading.RLock()
_pm: pluggy.PluginManager | None = None
_general_reports: list[GeneralPluginReport] | None = None


def get_plugin_manager() -> pluggy.PluginManager:
    """The process's plugin manager (created on first use)."""
    global _pm
    with _lock:
        if _pm is None:
            _pm = create_plugin_manager()
        return _pm


def register_hooks(plugin: object, name: str | None = None) -> None:
    """Register a module/object of ``@hookimpl`` functions. Idempotent per object.

    Historic registration hooks run immediately; errors they raise propagate to the caller.
    """
    pm = get_plugin_manager()
    if pm.is_registered(plugin) or (name is not None and pm.get_plugin(name) is not None):
        return
    pm.register(plugin, name=name)


def load_general_plugins(search_path: list[str] | None = None) -> list[GeneralPluginReport]:
    """Run every ``vllm.general_plugins`` callable once per process; return their reports.

    Later calls return the first call's reports. ``search_path`` restricts discovery to
    distributions on those directories (tests).
    """
    global _general_reports
    from vllm_core import envs
    from vllm_core.logger import init_logger

    with _lock:
        if _general_reports is not None:   # loaded, or loading (a plugin calling back in)
            return _general_reports
        get_plugin_manager()
        _general_reports = reports = []
        allow = envs.plugin_allow_list()
        logger = init_logger(__name__)
        for ep in entry_points_of(GENERAL_PLUGINS_GROUP, search_path):
            dist, version = distribution_of(ep)
            if allow is not None and ep.name not in allow:
                reports.append(GeneralPluginReport(ep.name, ep.value, dist, version,
                                                   GeneralPluginStatus.EXCLUDED,
                                                   f"not in VLLM_PLUGINS={','.join(allow)}"))
                continue
            try:
                func = ep.load()
                if not callable(func):
                    raise TypeError(f"entry point {ep.value!r} is not callable")
                func()
            except Exception as e:  # noqa: BLE001 - one bad plugin must not stop the engine
                report = GeneralPluginReport(
                    ep.name, ep.value, dist, version, GeneralPluginStatus.FAILED,
                    f"{describe_exception(e)}. Fix: install what {dist} needs, uninstall it "
                    f"(pip uninstall {dist}), or leave it out with VLLM_PLUGINS")
                logger.warning("%s", report.message())
                reports.append(report)
                continue
            reports.append(GeneralPluginReport(ep.name, ep.value, dist, version,
                                               GeneralPluginStatus.LOADED))
        return reports


def general_plugin_reports() -> list[GeneralPluginReport] | None:
    """The reports of ``load_general_plugins`` (None before it ran)."""
    return _general_reports


def apply_config_hooks(config: EngineConfig) -> None:
    """Run every ``adjust_engine_config`` implementation on ``config`` (general plugins are
    loaded first). Called by ``create_engine_config`` after the platform adjusted it."""
    load_general_plugins()
    get_plugin_manager().hook.adjust_engine_config(config=config)


def reset_plugins() -> None:
    """Forget the manager and the general-plugin state (tests). Registries keep their entries."""
    global _pm, _general_reports
    with _lock:
        _pm = None
        _general_reports = None
