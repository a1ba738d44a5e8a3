"""Discovery over real installed (dummy) distributions: one report per entry point, skips loud."""

from __future__ import annotations

import logging

import pytest

from vllm_core.platforms.compat import api_version_problem, parse_api_version
from vllm_core.platforms.discovery import PluginStatus, discover_platform_plugins
from vllm_core.platforms.interface import PLATFORM_API_VERSION


def reports_by_name(site, allow=None):
    return {r.name: r for r in discover_platform_plugins(allow_list=allow,
                                                         search_path=[str(site)])}


def test_every_entry_point_gets_a_report(on_path):
    reports = reports_by_name(on_path)
    assert set(reports) == {"accel_a", "accel_b", "midaccel", "testcpu", "absent", "absentwhy",
                            "broken", "foreign", "oldapi", "newminor", "importerr", "badpath"}
    a = reports["accel_a"]
    assert a.status is PluginStatus.DETECTED
    assert a.distribution == "vc-test-accel-a" and a.version == "0.1.0"
    assert a.platform_cls.__name__ == "AccelA" and a.priority == 100 and a.api_version == "2.0"
    # a detector may return the class itself instead of its path
    assert reports["accel_b"].status is PluginStatus.DETECTED
    assert reports["accel_b"].platform_cls.__name__ == "AccelB"


def test_not_detected_carries_reason(on_path):
    reports = reports_by_name(on_path)
    assert reports["absent"].status is PluginStatus.NOT_DETECTED
    assert reports["absent"].reason == "its detection found no device"
    assert reports["absentwhy"].status is PluginStatus.NOT_DETECTED
    assert reports["absentwhy"].reason == "no widget on the bus"


def test_detection_that_raises_is_reported_with_fix(on_path):
    r = reports_by_name(on_path)["broken"]
    assert r.status is PluginStatus.FAILED
    assert "RuntimeError: driver probe exploded" in r.reason
    assert "pip uninstall vc-test-broken" in r.fix and "VLLM_PLUGINS=" in r.fix
    message = r.message()
    assert message.startswith("platform plugin 'broken' (vc-test-broken 0.1.0) skipped:")
    assert "Fix:" in message


def test_foreign_class_like_a_real_vllm_plugin(on_path):
    r = reports_by_name(on_path)["foreign"]
    assert r.status is PluginStatus.FOREIGN
    assert "vc_test_foreign.platform.NPUPlatform" in r.reason
    assert "not a subclass of vllm_core.platforms.interface.Platform" in r.reason
    assert "real vLLM" in r.fix and "pip uninstall vc-test-foreign" in r.fix


@pytest.mark.parametrize("name,declared,words", [
    ("oldapi", "1.2", "major version differs"),
    ("newminor", "2.99", "newer than this vllm-core"),
])
def test_incompatible_api_versions(on_path, name, declared, words):
    r = reports_by_name(on_path)[name]
    assert r.status is PluginStatus.INCOMPATIBLE
    assert r.api_version == declared and words in r.reason
    assert f"built for platform API {PLATFORM_API_VERSION}" in r.fix


def test_import_errors_are_reported(on_path):
    reports = reports_by_name(on_path)
    r = reports["importerr"]
    assert r.status is PluginStatus.FAILED
    assert "ModuleNotFoundError: No module named 'vc_missing_vendor_sdk'" in r.reason
    bad = reports["badpath"]
    assert bad.status is PluginStatus.FAILED
    assert "vc_test_badpath.nowhere.Platform" in bad.reason


def test_skips_are_logged_as_warnings_and_kept(on_path, caplog):
    logger = logging.getLogger("vllm_core")
    logger.propagate = True           # the package logger does not propagate by default
    try:
        with caplog.at_level(logging.WARNING, logger="vllm_core"):
            reports = reports_by_name(on_path)
    finally:
        logger.propagate = False
    warned = " ".join(rec.getMessage() for rec in caplog.records)
    for name in ("broken", "foreign", "oldapi", "newminor", "importerr", "badpath"):
        assert reports[name].status.is_skip
        assert f"platform plugin '{name}'" in warned
    for name in ("accel_a", "absent", "testcpu"):
        assert f"platform plugin '{name}'" not in warned


def test_allow_list_excludes_without_importing(on_path):
    import sys

    reports = reports_by_name(on_path, allow=["testcpu"])
    assert reports["testcpu"].status is PluginStatus.DETECTED
    assert reports["importerr"].status is PluginStatus.EXCLUDED
    assert "vc_test_importerr" not in sys.modules
    assert "VLLM_PLUGINS" in reports["accel_a"].fix


def test_api_version_rules():
    assert parse_api_version("1.0") == (1, 0)
    assert api_version_problem("1.0", core="1.3") is None
    assert api_version_problem("1.3", core="1.3") is None
    assert "newer" in api_version_problem("1.4", core="1.3")
    assert "major" in api_version_problem("0.9", core="1.3")
    assert "MAJOR.MINOR" in api_version_problem("one", core="1.3")
    with pytest.raises(ValueError, match="MAJOR.MINOR"):
        parse_api_version("1")
