"""``vllm-core platforms`` / ``collect-env`` in a subprocess against installed dummy plugins."""

from __future__ import annotations

import json
import sys

CLI = "import sys; from vllm_core.entrypoints.cli.main import main; sys.exit(main({argv!r}))"


def cli(run_python, site, *argv, **env):
    return run_python(CLI.format(argv=list(argv)), site, **env)


def test_cli_modules_do_not_import_torch(run_python):
    proc = run_python("import sys\n"
                      "import vllm_core.entrypoints.cli.platforms as a\n"
                      "import vllm_core.entrypoints.cli.collect_env as b\n"
                      "assert callable(a.register) and callable(b.register)\n"
                      "print('torch' in sys.modules)\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


def test_platforms_report_lists_every_plugin_reason_and_choice(run_python, plugin_site):
    proc = cli(run_python, plugin_site, "platforms", VLLM_PLUGINS="testcpu,accel_a,broken,foreign,oldapi,"
               "absentwhy,cpu")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "Chosen platform: accel_a; highest priority" in out
    assert "accel_a    vc-test-accel-a 0.1.0  [detected]  API 2.0  priority 100" in out
    assert "[failed]" in out and "driver probe exploded" in out
    assert "[foreign]" in out and "not a subclass" in out
    assert "[incompatible]" in out and "major version differs" in out
    assert "[not detected]" in out and "no widget on the bus" in out
    assert "[excluded]" in out
    assert "fix: " in out
    # the real CPU plugin (installed in every test environment) prints its ISA line
    assert "ISA: " in out


def test_platforms_exit_1_with_clear_error_on_tie(run_python, plugin_site):
    proc = cli(run_python, plugin_site, "platforms", "--json", VLLM_PLUGINS="accel_a,accel_b")
    assert proc.returncode == 1
    data = json.loads(proc.stdout)
    assert data["chosen"] is None
    assert "VLLM_PLATFORM=accel_a or VLLM_PLATFORM=accel_b" in data["error"]
    assert "error:" in proc.stderr


def test_unknown_forced_platform_message(run_python, plugin_site):
    proc = cli(run_python, plugin_site, "platforms", "--json", VLLM_PLATFORM="gaudi")
    assert proc.returncode == 1
    error = json.loads(proc.stdout)["error"]
    assert error.startswith("VLLM_PLATFORM=gaudi names no installed platform plugin")


def test_general_plugins_reported(run_python, plugin_site):
    proc = cli(run_python, plugin_site, "platforms", "--json", VLLM_PLUGINS="testcpu,hooks,badgeneral")
    data = json.loads(proc.stdout)
    status = {g["name"]: g for g in data["general_plugins"]}
    assert status["hooks"]["status"] == "loaded"
    assert status["badgeneral"]["status"] == "failed"
    assert "No module named vllm" in status["badgeneral"]["reason"]
    assert "vc_test_backend" in data["attention_backends"]
    assert "reference" in data["attention_backends"]


def test_collect_env(run_python, plugin_site):
    proc = cli(run_python, plugin_site, "collect-env", "--json", VLLM_PLUGINS="testcpu,cpu",
               VLLM_CPU_KVCACHE_SPACE="2")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["python"]["version"].startswith(f"{sys.version_info.major}.")
    import torch

    assert data["torch"]["version"] == torch.__version__
    assert "cuda" in data["torch"] and "cpu_capability" in data["torch"]
    dists = {d["distribution"]: d for d in data["plugin_distributions"]}
    assert dists["vc-test-cpu"]["version"] == "0.1.0"
    assert "vllm-core-cpu" in dists
    assert data["environment"]["VLLM_CPU_KVCACHE_SPACE"] == "2"
    assert data["platform"]["isa"]             # from the real CPU plugin
    assert "gloo" in data["distributed"]["backends_built"]
    text = cli(run_python, plugin_site, "collect-env", VLLM_PLUGINS="cpu").stdout
    for header in ("OS:", "Python:", "torch:", "Platform:", "Distributed:",
                   "Plugin distributions:"):
        assert header in text
    assert "communicator: vllm_core.distributed.communicator.TorchDistributedCommunicator" in text
