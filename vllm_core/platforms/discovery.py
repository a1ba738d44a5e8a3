"""Discovery of platform plugins: read the entry points, run each detector, judge the result.

Contract of an entry point in group ``vllm.platform_plugins``: a zero-argument callable that
returns, when its hardware is present, a ``Platform`` subclass or its dotted class path
(``"pkg.module.Class"`` or ``"pkg.module:Class"``), and otherwise ``None`` (or a falsy
``NotDetected("why")`` so that ``vllm-core platforms`` can say why). The callable must be cheap
and must not initialise the device beyond asking whether one is there.

Every entry point ends in exactly one ``PluginReport``. Reports whose status is a *skip*
(detection or import failed, a foreign class, an incompatible API version) are logged as
warnings here, and are kept in the report list so that selection errors and the CLI show them:
nothing is dropped silently.
"""

from __future__ import annotations

import enum
import inspect
from dataclasses import dataclass

from vllm_core.logger import init_logger
from vllm_core.platforms.compat import api_version_problem
from vllm_core.platforms.interface import PLATFORM_API_VERSION, Platform
from vllm_core.plugins.loading import (
    describe_exception,
    distribution_of,
    entry_points_of,
    import_object,
)

logger = init_logger(__name__)

PLATFORM_PLUGINS_GROUP = "vllm.platform_plugins"


@dataclass(frozen=True, slots=True)
class NotDetected:
    """A detector's "no" with a reason: ``return NotDetected("no NVIDIA device visible")``.

    Falsy, so a detector's result can still be tested with ``if result:``.
    """

    reason: str

    def __bool__(self) -> bool:
        return False


class PluginStatus(str, enum.Enum):
    DETECTED = "detected"
    NOT_DETECTED = "not detected"
    EXCLUDED = "excluded"          # left out by VLLM_PLUGINS
    FAILED = "failed"              # import error, or the detector raised
    FOREIGN = "foreign"            # returned something that is not one of our Platform classes
    INCOMPATIBLE = "incompatible"  # declared API version does not match the core's

    @property
    def is_skip(self) -> bool:
        """A plugin that wanted to take part but could not (warned about, never silent)."""
        return self in (PluginStatus.FAILED, PluginStatus.FOREIGN, PluginStatus.INCOMPATIBLE)


@dataclass(slots=True)
class PluginReport:
    """What discovery learned about one entry point."""

    name: str                      # entry point name; what VLLM_PLATFORM / VLLM_PLUGINS use
    value: str                     # "package.module:callable"
    distribution: str
    version: str
    status: PluginStatus
    reason: str                    # in words, for every status
    fix: str = ""                  # what the user can do (skips and exclusions)
    platform_cls: type[Platform] | None = None
    api_version: str | None = None

    @property
    def priority(self) -> int | None:
        return self.platform_cls.priority if self.platform_cls is not None else None

    @property
    def label(self) -> str:
        """``'cuda' (vllm-core-cuda 0.1.0)``."""
        return f"{self.name!r} ({self.distribution} {self.version})"

    def message(self) -> str:
        """One line naming the plugin, what happened and the fix."""
        verb = "skipped" if self.status.is_skip else self.status.value
        text = f"platform plugin {self.label} {verb}: {self.reason}"
        return f"{text}. Fix: {self.fix}" if self.fix else text


def discover_platform_plugins(allow_list: list[str] | None = None,
                              search_path: list[str] | None = None) -> list[PluginReport]:
    """Load and run every platform plugin's detector; one report per entry point.

    ``allow_list`` is ``VLLM_PLUGINS`` (None: all); excluded plugins are not imported at all.
    ``search_path`` restricts discovery to distributions on those directories (tests, tools).
    Never raises for a misbehaving plugin: that becomes its report.
    """
    reports = [_inspect(ep, allow_list)
               for ep in entry_points_of(PLATFORM_PLUGINS_GROUP, search_path)]
    names = sorted({r.name for r in reports})
    for report in reports:
        others = ",".join(n for n in names if n != report.name) or "<the plugins you want>"
        leave_out = f"leave it out with VLLM_PLUGINS={others}"
        if report.status is PluginStatus.FAILED:
            report.fix = (f"install what {report.distribution} needs, upgrade or uninstall it "
                          f"(pip uninstall {report.distribution}), or {leave_out}")
        elif report.status is PluginStatus.FOREIGN:
            report.fix = (f"it is probably a plugin for the real vLLM, which shares the entry-point "
                          f"group {PLATFORM_PLUGINS_GROUP!r}; uninstall it "
                          f"(pip uninstall {report.distribution}) or {leave_out}")
        elif report.status is PluginStatus.INCOMPATIBLE:
            report.fix = (f"install a release of {report.distribution} built for platform API "
                          f"{PLATFORM_API_VERSION}, or a vllm-core release matching the plugin, "
                          f"or {leave_out}")
        elif report.status is PluginStatus.EXCLUDED:
            report.fix = f"add {report.name!r} to VLLM_PLUGINS (or unset VLLM_PLUGINS)"
        if report.status.is_skip:
            logger.warning("%s", report.message())
    return reports


def _inspect(ep, allow_list: list[str] | None) -> PluginReport:
    dist, version = distribution_of(ep)

    def report(status: PluginStatus, reason: str, **kw) -> PluginReport:
        return PluginReport(ep.name, ep.value, dist, version, status, reason, **kw)

    if allow_list is not None and ep.name not in allow_list:
        return report(PluginStatus.EXCLUDED,
                      f"not in VLLM_PLUGINS={','.join(allow_list)}; not loaded")
    try:
        detector = ep.load()
    except Exception as e:  # noqa: BLE001 - a broken plugin must not break discovery
        return report(PluginStatus.FAILED,
                      f"importing its entry point {ep.value!r} failed: {describe_exception(e)}")
    if not callable(detector) or inspect.isclass(detector):
        return report(PluginStatus.FOREIGN,
                      f"entry point {ep.value!r} is {type(detector).__name__} "
                      f"{detector!r}, not a zero-argument detection function")
    try:
        result = detector()
    except Exception as e:  # noqa: BLE001
        return report(PluginStatus.FAILED,
                      f"its detection function {ep.value!r} raised {describe_exception(e)}")
    if result is None:
        return report(PluginStatus.NOT_DETECTED, "its detection found no device")
    if isinstance(result, NotDetected):
        return report(PluginStatus.NOT_DETECTED, result.reason)
    if isinstance(result, str):
        try:
            cls = import_object(result)
        except Exception as e:  # noqa: BLE001
            return report(PluginStatus.FAILED,
                          f"importing its platform class {result!r} failed: "
                          f"{describe_exception(e)}")
        returned = result
    else:
        cls = result
        returned = f"{getattr(cls, '__module__', '?')}.{getattr(cls, '__qualname__', cls)!s}"
    if not (inspect.isclass(cls) and issubclass(cls, Platform)):
        return report(PluginStatus.FOREIGN,
                      f"it returned {returned!r}, which is not a subclass of "
                      f"vllm_core.platforms.interface.Platform")
    declared = getattr(cls, "api_version", None)
    problem = api_version_problem(str(declared))
    if problem is not None:
        return report(PluginStatus.INCOMPATIBLE, f"{returned} {problem}",
                      platform_cls=cls, api_version=str(declared))
    return report(PluginStatus.DETECTED, f"returned {returned}",
                  platform_cls=cls, api_version=str(declared))
