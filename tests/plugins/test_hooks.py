"""pluggy extension points: historic registration hooks, the config hook, general plugins."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from vllm_core.config import EngineConfig, ModelConfig
from vllm_core.plugins import (
    GeneralPluginStatus,
    apply_config_hooks,
    create_plugin_manager,
    get_plugin_manager,
    hookimpl,
    load_general_plugins,
    register_hooks,
    reset_plugins,
)


@pytest.fixture(autouse=True)
def _fresh_plugins(monkeypatch):
    monkeypatch.delenv("VLLM_PLUGINS", raising=False)
    reset_plugins()
    yield
    reset_plugins()


class VendorHooks:
    @hookimpl
    def register_attention_backends(self, register):
        register("vendor_attn", "vendor.attention.Backend")

    @hookimpl
    def register_model_architectures(self, register):
        register("VendorForCausalLM", "vendor.models.VendorForCausalLM")

    @hookimpl
    def register_quantization_methods(self, register):
        register("vendor_q4", "vendor.quant.Q4")

    @hookimpl
    def adjust_engine_config(self, config):
        config.extra["vendor"] = True


def test_registration_hooks_feed_the_given_registries_whenever_registered():
    calls = {"backend": [], "model": [], "quant": []}
    pm = create_plugin_manager(register_backend=lambda *a: calls["backend"].append(a),
                               register_model=lambda *a: calls["model"].append(a),
                               register_quantization=lambda *a: calls["quant"].append(a))
    # the core's builtin registers the portable reference backend
    assert ("reference",
            "vllm_core.attention.backends.reference.ReferenceAttentionBackend") in calls["backend"]
    pm.register(VendorHooks())             # registered after creation: historic replay
    assert ("vendor_attn", "vendor.attention.Backend") in calls["backend"]
    assert calls["model"] == [("VendorForCausalLM", "vendor.models.VendorForCausalLM")]
    assert ("vendor_q4", "vendor.quant.Q4") in calls["quant"]
    # and the core's built-in quantization methods
    assert {"gptq", "awq", "compressed-tensors", "fp8"} <= {c[0] for c in calls["quant"]}


def test_default_model_hook_reaches_the_model_registry():
    from vllm_core.model_executor.models import registry

    register_hooks(VendorHooks(), name="vendor-test")
    try:
        assert "VendorForCausalLM" in registry.supported_architectures()
        from vllm_core.attention.registry import get_backend_class_path, unregister_backend
        from vllm_core.model_executor.quantization.registry import (
            list_quantization_methods,
            unregister_quantization_method,
        )

        assert get_backend_class_path("vendor_attn") == "vendor.attention.Backend"
        assert list_quantization_methods()["vendor_q4"] == "vendor.quant.Q4"
    finally:
        registry.MODELS.unregister("VendorForCausalLM")
        unregister_backend("vendor_attn")
        unregister_quantization_method("vendor_q4")


def test_register_hooks_is_idempotent():
    hooks = VendorHooks()
    register_hooks(hooks, name="vendor-idem")
    register_hooks(hooks, name="vendor-idem")
    assert get_plugin_manager().get_plugin("vendor-idem") is hooks
    from vllm_core.attention.registry import unregister_backend
    from vllm_core.model_executor.models import registry

    registry.MODELS.unregister("VendorForCausalLM")
    unregister_backend("vendor_attn")


def test_apply_config_hooks_runs_adjust_engine_config():
    register_hooks(VendorHooks(), name="vendor-config")
    config = EngineConfig(model=ModelConfig(model="x"))
    apply_config_hooks(config)
    assert config.extra == {"vendor": True}
    from vllm_core.attention.registry import unregister_backend
    from vllm_core.model_executor.models import registry

    registry.MODELS.unregister("VendorForCausalLM")
    unregister_backend("vendor_attn")


def test_general_plugins_run_once_per_process_and_failures_are_reported(tmp_path):
    """Real installed distributions in a fresh interpreter."""
    site = tmp_path
    (site / "vc_gp_counter").mkdir()
    (site / "vc_gp_counter" / "__init__.py").write_text(textwrap.dedent("""
        CALLS = []
        def register():
            CALLS.append(1)
        """))
    (site / "vc_gp_bad").mkdir()
    (site / "vc_gp_bad" / "__init__.py").write_text("import vllm\n\ndef register():\n    pass\n")
    for dist, ep in (("vc-gp-counter", "counter = vc_gp_counter:register"),
                     ("vc-gp-bad", "bad = vc_gp_bad:register")):
        info = site / f"{dist.replace('-', '_')}-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text(f"[vllm.general_plugins]\n{ep}\n")
    code = textwrap.dedent("""
        from vllm_core.plugins import load_general_plugins
        import vc_gp_counter
        first = load_general_plugins()
        second = load_general_plugins()
        assert first is second
        print(len(vc_gp_counter.CALLS))
        for r in first:
            if r.name in ("counter", "bad"):
                print(r.name, r.status.value, r.reason)
        """)
    env = {k: v for k, v in os.environ.items() if k != "VLLM_PLUGINS"}
    env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "1"
    assert "counter loaded " in lines
    [bad] = [line for line in lines if line.startswith("bad ")]
    assert "bad failed ModuleNotFoundError: No module named 'vllm'" in bad
    assert "pip uninstall vc-gp-bad" in bad
    assert "general plugin 'bad' (vc-gp-bad 0.1) failed" in proc.stderr   # logged as warning


def test_allow_list_applies_to_general_plugins(monkeypatch):
    monkeypatch.setenv("VLLM_PLUGINS", "nothing-matches")
    reports = load_general_plugins()
    assert reports, "the in-tree plugins declare general plugins"
    assert all(r.status is GeneralPluginStatus.EXCLUDED for r in reports)
