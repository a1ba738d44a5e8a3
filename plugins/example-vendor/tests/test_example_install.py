"""Install the template as a real distribution into a fresh folder and use it from a subprocess:
discovered through its entry point, detected only with VLLM_EXAMPLE_DEVICE=1, selected when
forced, reported by ``vllm-core platforms``, and its attention backend registered by hook."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PLUGIN_DIR = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("example-site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--no-build-isolation", "--target", str(target), str(PLUGIN_DIR)],
                   check=True, capture_output=True, text=True)
    assert list(target.glob("vllm_core_example_vendor-*.dist-info"))
    return target


def run_py(site: Path, code: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items()
               if k not in ("VLLM_PLATFORM", "VLLM_PLUGINS", "VLLM_EXAMPLE_DEVICE")}
    environ.update(env)
    # the installed copy only: the source checkout must not shadow it
    environ["PYTHONPATH"] = os.pathsep.join([str(site), environ.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=environ, cwd=str(site), timeout=timeout)


def platforms_json(site: Path, **env: str) -> tuple[int, dict]:
    proc = run_py(site, "import sys; from vllm_core.entrypoints.cli.main import main; "
                        "sys.exit(main(['platforms', '--json']))", **env)
    return proc.returncode, json.loads(proc.stdout)


def example_entry(data: dict) -> dict:
    [entry] = [p for p in data["plugins"] if p["name"] == "example"]
    return entry


def test_installed_copy_is_the_one_imported(site):
    proc = run_py(site, "import vllm_core_example_vendor as m; print(m.__file__)")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().startswith(str(site))


def test_reported_but_not_detected_without_device(site):
    _rc, data = platforms_json(site)
    entry = example_entry(data)
    assert entry["distribution"] == "vllm-core-example-vendor"
    assert entry["status"] == "not detected"
    assert "VLLM_EXAMPLE_DEVICE=1" in entry["reason"]
    assert data["chosen"] != "example"


def test_detected_and_chosen_over_cpu_with_device(site):
    rc, data = platforms_json(site, VLLM_EXAMPLE_DEVICE="1", VLLM_PLUGINS="example,cpu")
    entry = example_entry(data)
    assert entry["status"] == "detected"
    assert entry["api_version"] == "2.0"
    assert entry["platform_class"] == "vllm_core_example_vendor.platform.ExamplePlatform"
    assert rc == 0 and data["chosen"] == "example"
    assert "example_paged" in data["attention_backends"]


def test_selected_when_forced(site):
    rc, data = platforms_json(site, VLLM_EXAMPLE_DEVICE="1", VLLM_PLATFORM="example")
    assert rc == 0
    assert data["chosen"] == "example" and "VLLM_PLATFORM=example" in data["reason"]


def test_forced_without_device_fails_naming_plugin_and_reason(site):
    rc, data = platforms_json(site, VLLM_PLATFORM="example")
    assert rc == 1 and data["chosen"] is None
    assert "'example' (vllm-core-example-vendor 0.1.0)" in data["error"]
    assert "VLLM_EXAMPLE_DEVICE=1 is not set" in data["error"]


def test_text_report_lists_the_plugin(site):
    proc = run_py(site, "import sys; from vllm_core.entrypoints.cli.main import main; "
                        "sys.exit(main(['platforms']))", VLLM_EXAMPLE_DEVICE="1",
                  VLLM_PLATFORM="example")
    assert proc.returncode == 0, proc.stderr
    assert "example" in proc.stdout and "vllm-core-example-vendor 0.1.0" in proc.stdout
    assert "Chosen platform: example; forced by VLLM_PLATFORM=example" in proc.stdout


def test_current_platform_selects_the_example_attention_backend(site):
    code = """
from vllm_core.platforms import current_platform, resolve_current_platform
from vllm_core.attention.selector import select_attention_backend
cls = select_attention_backend(resolve_current_platform(), head_size=64, dtype="float32",
                               kv_cache_dtype="auto", block_size=16, sliding_window=None)
print(current_platform.name, cls.__module__ + "." + cls.__name__, current_platform.worker_class())
"""
    proc = run_py(site, code, VLLM_EXAMPLE_DEVICE="1", VLLM_PLATFORM="example")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [
        "example", "vllm_core_example_vendor.attention.ExamplePagedAttentionBackend",
        "vllm_core_example_vendor.worker.ExampleWorker"]


GENERATE = """
import os
from vllm_core import LLM, SamplingParams
from vllm_core.platforms import current_platform, reset_current_platform

params = SamplingParams(temperature=0, max_tokens=8)
prompts = ["The capital of France is", "1, 2, 3,"]
tokens = {}
for name in ("example", "cpu"):
    os.environ["VLLM_PLATFORM"] = name
    reset_current_platform()
    llm = LLM(dtype="float32", max_model_len=128, max_num_seqs=4, max_num_batched_tokens=128,
              kv_cache_space_gib=0.25,
              async_scheduling=name == "example")
    assert current_platform.name == name
    outs = llm.generate(prompts, params, use_tqdm=False)
    tokens[name] = [list(o.outputs[0].token_ids) for o in outs]
    if name == "example":
        runner = llm.llm_engine.executor.worker.runner
        print("RUNNER", type(runner).__mro__[1].__module__, runner.num_fed_rows > 0)
    del llm
print("EXAMPLE", tokens["example"])
print("CPU", tokens["cpu"])
"""


@pytest.mark.slow
def test_generate_with_example_platform(site):
    """End to end: the default model generates through the example platform and its attention
    backend (the platform offers no other) on the core runner with async scheduling (tokens of
    the step in flight fed on the device), greedy tokens identical to the in-tree CPU
    platform's (same dtype). Slow on a loaded 2-core machine: about a minute or two."""
    proc = run_py(site, GENERATE, timeout=900, VLLM_EXAMPLE_DEVICE="1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines()
                 if line.startswith(("EXAMPLE", "CPU", "RUNNER")))
    assert lines["EXAMPLE"] == lines["CPU"]
    assert lines["RUNNER"] == "vllm_core.worker.model_runner True"
    assert len(ast.literal_eval(lines["EXAMPLE"])[0]) == 8
