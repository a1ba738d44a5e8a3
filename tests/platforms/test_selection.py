"""Selection rules over real installed (dummy) distributions."""

from __future__ import annotations

import pytest

from vllm_core.platforms.discovery import discover_platform_plugins
from vllm_core.platforms.selection import PlatformSelectionError, select_platform


def select(site, allow=None, forced=None):
    reports = discover_platform_plugins(allow_list=allow, search_path=[str(site)])
    return select_platform(reports, forced=forced)


def test_accelerator_outranks_cpu(on_path):
    sel = select(on_path, allow=["testcpu", "accel_a", "absent", "broken"])
    assert sel.plugin == "accel_a" and sel.platform_cls.__name__ == "AccelA"
    assert "highest priority" in sel.reason and "accel_a (100)" in sel.reason
    assert "testcpu (0)" in sel.reason


def test_priority_orders_accelerators_too(on_path):
    assert select(on_path, allow=["testcpu", "midaccel"]).plugin == "midaccel"


def test_only_detected_plugin(on_path):
    sel = select(on_path, allow=["testcpu", "absent", "foreign"])
    assert sel.plugin == "testcpu" and "only detected" in sel.reason


def test_equal_priority_is_an_error_naming_both_and_the_override(on_path):
    with pytest.raises(PlatformSelectionError) as info:
        select(on_path, allow=["testcpu", "accel_a", "accel_b"])
    msg = str(info.value)
    assert "'accel_a' (vc-test-accel-a 0.1.0)" in msg and "'accel_b' (vc-test-accel-b 0.1.0)" in msg
    assert "same priority 100" in msg
    assert "VLLM_PLATFORM=accel_a or VLLM_PLATFORM=accel_b" in msg
    loaded = [r for r in info.value.reports if r.status.value != "excluded"]
    assert sorted(r.name for r in loaded) == ["accel_a", "accel_b", "testcpu"]


def test_forcing_resolves_a_tie_and_beats_priority(on_path):
    assert select(on_path, allow=["accel_a", "accel_b"], forced="accel_b").plugin == "accel_b"
    sel = select(on_path, allow=["accel_a", "testcpu"], forced="testcpu")
    assert sel.plugin == "testcpu" and sel.reason == "forced by VLLM_PLATFORM=testcpu"


def test_forced_unknown_platform_names_installed_and_fix(on_path):
    with pytest.raises(PlatformSelectionError) as info:
        select(on_path, forced="nosuch")
    msg = str(info.value)
    assert msg.startswith("VLLM_PLATFORM=nosuch names no installed platform plugin")
    assert "accel_a" in msg and "testcpu" in msg
    assert "pip install 'vllm-core[cpu]'" in msg and "unset VLLM_PLATFORM" in msg


def test_forced_known_extra_suggests_its_install(on_path):
    with pytest.raises(PlatformSelectionError, match=r"pip install 'vllm-core\[tpu\]'"):
        select(on_path, forced="tpu")


def test_forced_but_not_detected(on_path):
    with pytest.raises(PlatformSelectionError) as info:
        select(on_path, forced="absentwhy")
    msg = str(info.value)
    assert "'absentwhy' (vc-test-absentwhy 0.1.0) is installed but did not detect" in msg
    assert "no widget on the bus" in msg and "unset VLLM_PLATFORM" in msg


def test_forced_but_excluded_by_allow_list(on_path):
    with pytest.raises(PlatformSelectionError, match="add 'accel_a' to VLLM_PLUGINS"):
        select(on_path, allow=["testcpu"], forced="accel_a")


@pytest.mark.parametrize("name,words", [
    ("broken", "driver probe exploded"),
    ("foreign", "not a subclass"),
    ("oldapi", "major version differs"),
    ("importerr", "vc_missing_vendor_sdk"),
])
def test_forced_skipped_plugin_explains_the_skip(on_path, name, words):
    with pytest.raises(PlatformSelectionError) as info:
        select(on_path, forced=name)
    msg = str(info.value)
    assert msg.startswith(f"VLLM_PLATFORM={name}: platform plugin '{name}'")
    assert words in msg and "Fix:" in msg


def test_no_platform_names_extras_and_lists_skips(on_path):
    with pytest.raises(PlatformSelectionError) as info:
        select(on_path, allow=["absent", "broken", "foreign", "oldapi"])
    msg = str(info.value)
    assert "no vllm-core platform is available" in msg
    for extra in ("cpu", "cuda", "rocm", "xpu", "tpu"):
        assert f"pip install 'vllm-core[{extra}]'" in msg
    assert "driver probe exploded" in msg and "not a subclass" in msg
    assert "'absent' (vc-test-absent 0.1.0) not detected" in msg


def test_nothing_installed_at_all(tmp_path):
    with pytest.raises(PlatformSelectionError, match="No platform plugin is installed"):
        select(tmp_path)
