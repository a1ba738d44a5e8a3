"""``current_platform``: lazy, driven by VLLM_PLATFORM / VLLM_PLUGINS, resettable."""

from __future__ import annotations

import pytest

import vllm_core.platforms as platforms
from vllm_core.platforms import (
    current_platform,
    get_platform_selection,
    is_platform_resolved,
    reset_current_platform,
    resolve_current_platform,
    set_current_platform,
)
from vllm_core.platforms.interface import Platform
from vllm_core.platforms.selection import PlatformSelectionError


def test_importing_does_not_resolve_or_load_plugins(run_python):
    proc = run_python(
        "import sys\n"
        "import vllm_core.platforms as p\n"
        "from vllm_core.platforms import current_platform\n"
        "print(repr(current_platform))\n"
        "assert not p.is_platform_resolved()\n"
        "bad = [m for m in sys.modules if m.startswith(('vllm_core_', 'torch', 'importlib_meta'))]\n"
        "assert not bad, bad\n"
        "print('resolved:', current_platform.name)\n"
        "assert p.is_platform_resolved()\n")
    assert proc.returncode == 0, proc.stderr
    assert "<current_platform (not resolved yet)>" in proc.stdout


def test_resolution_follows_env_and_is_cached(on_path, monkeypatch):
    monkeypatch.setenv("VLLM_PLUGINS", "accel_a,testcpu")
    assert not is_platform_resolved()
    assert current_platform.name == "accel_a"
    assert is_platform_resolved()
    cls = resolve_current_platform()
    assert issubclass(cls, Platform) and cls.__name__ == "AccelA"
    assert current_platform.attention_backends() == ["reference"]
    monkeypatch.setenv("VLLM_PLATFORM", "testcpu")
    assert current_platform.name == "accel_a", "resolved once per process"
    reset_current_platform()
    assert current_platform.name == "testcpu"
    assert get_platform_selection().reason == "forced by VLLM_PLATFORM=testcpu"
    assert "TestCpu" in repr(current_platform)


def test_failed_resolution_raises_each_time_and_caches_nothing(on_path, monkeypatch):
    monkeypatch.setenv("VLLM_PLUGINS", "accel_a,accel_b")
    for _ in range(2):
        with pytest.raises(PlatformSelectionError, match="VLLM_PLATFORM=accel_a or"):
            current_platform.name  # noqa: B018
    assert not is_platform_resolved()
    monkeypatch.setenv("VLLM_PLATFORM", "accel_b")
    assert current_platform.name == "accel_b"


def test_set_current_platform_pins_without_discovery():
    class Pinned(Platform):
        name = "pinned"

    set_current_platform(Pinned)
    assert current_platform.name == "pinned" and resolve_current_platform() is Pinned
    with pytest.raises(ValueError, match="Platform subclass"):
        set_current_platform(object)  # type: ignore[arg-type]


def test_public_names():
    for name in ("current_platform", "resolve_current_platform", "reset_current_platform",
                 "Platform", "PLATFORM_API_VERSION"):
        assert hasattr(platforms, name)


def test_in_tree_cpu_plugin_is_selected_when_installed(run_python):
    """The real installed vllm-core-cpu distribution, through the real entry point."""
    proc = run_python("from vllm_core.platforms import current_platform, get_platform_selection\n"
                      "print(current_platform.name, current_platform.kind.value)\n",
                      VLLM_PLUGINS="cpu")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["cpu", "cpu"]
