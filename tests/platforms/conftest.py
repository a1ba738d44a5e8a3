"""Real installed dummy plugin distributions for discovery and selection tests.

``plugin_site`` is a folder laid out like site-packages: for every dummy plugin a package and a
``<dist>-<version>.dist-info`` with ``METADATA`` and ``entry_points.txt`` - exactly what pip
leaves behind, so ``importlib.metadata`` discovers them as installed distributions. Tests put
the folder on ``sys.path`` (in process) or ``PYTHONPATH`` (subprocess).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from vllm_core.platforms import reset_current_platform
from vllm_core.plugins import reset_plugins


def write_distribution(site: Path, dist: str, version: str, modules: dict[str, str],
                       entry_points: dict[str, dict[str, str]]) -> None:
    """Install ``modules`` (dotted name -> source) and a dist-info declaring ``entry_points``."""
    for dotted, source in modules.items():
        parts = dotted.split(".")           # "pkg" -> pkg/__init__.py, "pkg.mod" -> pkg/mod.py
        package = site / parts[0]
        package.mkdir(parents=True, exist_ok=True)
        target = package / "__init__.py" if len(parts) == 1 else \
            package.joinpath(*parts[1:-1], f"{parts[-1]}.py")
        target.write_text(textwrap.dedent(source))
        if not (package / "__init__.py").exists():
            (package / "__init__.py").write_text("")
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    lines = []
    for group, eps in entry_points.items():
        lines.append(f"[{group}]")
        lines.extend(f"{name} = {value}" for name, value in eps.items())
        lines.append("")
    (info / "entry_points.txt").write_text("\n".join(lines))
    (info / "INSTALLER").write_text("pytest\n")


def _platform_module(cls_name: str, name: str, priority: str, api: str = "2.0") -> str:
    return f"""
        from vllm_core.platforms.interface import Platform, DeviceFacts
        from vllm_core.plugins.hookspecs import hookimpl

        class {cls_name}(Platform):
            name = {name!r}
            priority = {priority}
            api_version = {api!r}

            @classmethod
            def device_facts(cls):
                return DeviceFacts(device_count=1, device_name={name!r} + " device")

            @classmethod
            def attention_backends(cls):
                return ["reference"]
        """


PLATFORM = "vllm.platform_plugins"
GENERAL = "vllm.general_plugins"

# entry name -> (distribution, modules, entry points)
DUMMIES = {
    "accel_a": ("vc-test-accel-a", {
        "vc_test_accel_a": "def detect():\n    return 'vc_test_accel_a.platform.AccelA'\n",
        "vc_test_accel_a.platform": _platform_module("AccelA", "accel_a", "100"),
    }, {PLATFORM: {"accel_a": "vc_test_accel_a:detect"}}),
    "accel_b": ("vc-test-accel-b", {
        # returns the class object rather than a path: both forms are allowed
        "vc_test_accel_b": ("def detect():\n    from vc_test_accel_b.platform import AccelB\n"
                            "    return AccelB\n"),
        "vc_test_accel_b.platform": _platform_module("AccelB", "accel_b", "100"),
    }, {PLATFORM: {"accel_b": "vc_test_accel_b:detect"}}),
    "midaccel": ("vc-test-midaccel", {
        "vc_test_midaccel": "def detect():\n    return 'vc_test_midaccel.platform.Mid'\n",
        "vc_test_midaccel.platform": _platform_module("Mid", "midaccel", "50"),
    }, {PLATFORM: {"midaccel": "vc_test_midaccel:detect"}}),
    "testcpu": ("vc-test-cpu", {
        "vc_test_cpu": "def detect():\n    return 'vc_test_cpu.platform.TestCpu'\n",
        "vc_test_cpu.platform": _platform_module("TestCpu", "testcpu", "0"),
    }, {PLATFORM: {"testcpu": "vc_test_cpu:detect"}}),
    "absent": ("vc-test-absent", {
        "vc_test_absent": "def detect():\n    return None\n",
    }, {PLATFORM: {"absent": "vc_test_absent:detect"}}),
    "absentwhy": ("vc-test-absentwhy", {
        "vc_test_absentwhy": ("from vllm_core.platforms.discovery import NotDetected\n"
                              "def detect():\n    return NotDetected('no widget on the bus')\n"),
    }, {PLATFORM: {"absentwhy": "vc_test_absentwhy:detect"}}),
    "broken": ("vc-test-broken", {
        "vc_test_broken": "def detect():\n    raise RuntimeError('driver probe exploded')\n",
    }, {PLATFORM: {"broken": "vc_test_broken:detect"}}),
    # like a real-vLLM plugin (vllm-ascend...): same group, its own Platform base class
    "foreign": ("vc-test-foreign", {
        "vc_test_foreign": "def register():\n    return 'vc_test_foreign.platform.NPUPlatform'\n",
        "vc_test_foreign.platform": ("class VllmPlatform:\n    pass\n\n"
                                     "class NPUPlatform(VllmPlatform):\n    device_name = 'npu'\n"),
    }, {PLATFORM: {"foreign": "vc_test_foreign:register"}}),
    "oldapi": ("vc-test-oldapi", {
        "vc_test_oldapi": "def detect():\n    return 'vc_test_oldapi.platform.Old'\n",
        "vc_test_oldapi.platform": _platform_module("Old", "oldapi", "100", api="1.2"),
    }, {PLATFORM: {"oldapi": "vc_test_oldapi:detect"}}),
    "newminor": ("vc-test-newminor", {
        "vc_test_newminor": "def detect():\n    return 'vc_test_newminor.platform.New'\n",
        "vc_test_newminor.platform": _platform_module("New", "newminor", "100", api="2.99"),
    }, {PLATFORM: {"newminor": "vc_test_newminor:detect"}}),
    "importerr": ("vc-test-importerr", {
        "vc_test_importerr": "import vc_missing_vendor_sdk\n\ndef detect():\n    return None\n",
    }, {PLATFORM: {"importerr": "vc_test_importerr:detect"}}),
    "badpath": ("vc-test-badpath", {
        "vc_test_badpath": "def detect():\n    return 'vc_test_badpath.nowhere.Platform'\n",
    }, {PLATFORM: {"badpath": "vc_test_badpath:detect"}}),
    # a general plugin registering hooks, and one that fails
    "hooks": ("vc-test-hooks", {
        "vc_test_hooks": """
            CALLS = []

            def register():
                from vllm_core.plugins import register_hooks
                from vc_test_hooks import impl
                CALLS.append("register")
                register_hooks(impl, name="vc_test_hooks")
            """,
        "vc_test_hooks.impl": """
            from vllm_core.plugins.hookspecs import hookimpl

            @hookimpl
            def register_attention_backends(register):
                register("vc_test_backend", "vc_test_hooks.backend.Backend")

            @hookimpl
            def register_quantization_methods(register):
                register("vc_test_quant", "vc_test_hooks.quant.Quant")

            @hookimpl
            def adjust_engine_config(config):
                config.extra["vc_test_hooks"] = "adjusted"
            """,
    }, {GENERAL: {"hooks": "vc_test_hooks:register"}}),
    "badgeneral": ("vc-test-badgeneral", {
        "vc_test_badgeneral": "def register():\n    raise ImportError('No module named vllm')\n",
    }, {GENERAL: {"badgeneral": "vc_test_badgeneral:register"}}),
}


@pytest.fixture(scope="session")
def plugin_site(tmp_path_factory) -> Path:
    site = tmp_path_factory.mktemp("plugin-site")
    for dist, modules, eps in DUMMIES.values():
        write_distribution(site, dist, "0.1.0", modules, eps)
    return site


@pytest.fixture
def on_path(plugin_site, monkeypatch) -> Path:
    """The dummy site importable in this process; env vars of selection cleared."""
    monkeypatch.syspath_prepend(str(plugin_site))
    for var in ("VLLM_PLATFORM", "VLLM_PLUGINS"):
        monkeypatch.delenv(var, raising=False)
    return plugin_site


@pytest.fixture(autouse=True)
def _fresh_state():
    reset_current_platform()
    yield
    reset_current_platform()
    reset_plugins()


def _run_python(code: str, site: Path | None = None, **env: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter with ``site`` on PYTHONPATH and ``env`` applied."""
    environ = {k: v for k, v in os.environ.items() if k not in ("VLLM_PLATFORM", "VLLM_PLUGINS")}
    environ.update(env)
    if site is not None:
        environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(site),
                                                            environ.get("PYTHONPATH")) if p)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=environ, timeout=120)


@pytest.fixture
def run_python():
    """``run_python(code, site=None, **env)``: a fresh interpreter, ``site`` on PYTHONPATH."""
    return _run_python
