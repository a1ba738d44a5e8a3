"""XpuPlatform: detection (present / absent / broken) with the torch.xpu probe faked, config
rules, and the capability-based choice of IPEX / Triton / reference attention and layer ops
with the imports faked; the Triton path runs under the interpreter."""

from __future__ import annotations

import importlib.metadata as md
import types

import pytest
import torch

import vllm_core_xpu
from vllm_core.attention.selector import select_attention_backend
from vllm_core.config import EngineConfig, ModelConfig
from vllm_core.platforms.discovery import PluginStatus, discover_platform_plugins
from vllm_core_xpu import detection
from vllm_core_xpu import platform as xpu_platform
from vllm_core_xpu import worker as xpu_worker
from vllm_core_xpu.platform import XpuPlatform

SELECT = dict(head_size=64, dtype="bfloat16", kv_cache_dtype="auto", block_size=16,
              sliding_window=None)


@pytest.fixture(autouse=True)
def _fresh_probe():
    xpu_platform.ipex_xpu_status.cache_clear()
    from vllm_core.plugins import load_general_plugins

    load_general_plugins()
    yield
    xpu_platform.ipex_xpu_status.cache_clear()


def fake_ipex(monkeypatch, module):
    def load():
        if isinstance(module, Exception):
            raise module
        return module
    monkeypatch.setattr(xpu_platform, "import_ipex", load)
    xpu_platform.ipex_xpu_status.cache_clear()


def ipex_module(xpu=True, paged=True):
    ops = types.SimpleNamespace(reshape_and_cache=print, flash_attn_varlen_func=print)
    return types.SimpleNamespace(
        __version__="2.8.10+xpu", xpu=object() if xpu else None,
        llm=types.SimpleNamespace(modules=types.SimpleNamespace(
            PagedAttention=ops if paged else object()), functional=object()))


def test_detection(monkeypatch):
    monkeypatch.setattr(detection, "xpu_available", lambda: True)
    assert vllm_core_xpu.detect() == "vllm_core_xpu.platform.XpuPlatform"
    monkeypatch.setattr(detection, "xpu_available", lambda: False)
    assert "torch.xpu.is_available() is False" in vllm_core_xpu.detect().reason


def test_broken_driver_is_reported_as_failed(monkeypatch):
    def boom():
        raise RuntimeError("level_zero backend failed with error: 2029031430")
    monkeypatch.setattr(detection, "xpu_available", boom)
    [report] = [r for r in discover_platform_plugins(allow_list=["xpu"]) if r.name == "xpu"]
    assert report.status is PluginStatus.FAILED and "level_zero" in report.reason


def test_real_probe_on_this_machine():
    expected = hasattr(torch, "xpu") and torch.xpu.is_available()
    assert detection.xpu_available() is expected


def test_identity_and_config(monkeypatch):
    fake_ipex(monkeypatch, ImportError("No module named 'intel_extension_for_pytorch'"))
    assert (XpuPlatform.name, XpuPlatform.device_type,
            XpuPlatform.dist_backend) == ("xpu", "xpu", "xccl")
    assert XpuPlatform.default_dtype() == "bfloat16" and not XpuPlatform.supports_graph_capture()
    cfg = EngineConfig(model=ModelConfig(model="m"), graph_batch_sizes=[1, 2])
    XpuPlatform.check_and_update_config(cfg)
    assert cfg.model.dtype == "bfloat16" and cfg.platform_name == "xpu"
    assert cfg.graph_batch_sizes == [] and cfg.extra["xpu"]["ipex"] is False
    assert "not installed" in cfg.extra["xpu"]["ipex_reason"]
    eps = {(ep.group, ep.name): ep.value for ep in md.distribution("vllm-core-xpu").entry_points}
    assert eps[("vllm.platform_plugins", "xpu")] == "vllm_core_xpu:detect"
    assert eps[("vllm.general_plugins", "xpu")] == "vllm_core_xpu:register"
    assert XpuPlatform.worker_class() == "vllm_core_xpu.worker.XpuWorker"


@pytest.mark.parametrize("module,usable,words", [
    (ImportError("No module named 'intel_extension_for_pytorch'"), False, "not installed"),
    (AttributeError("module 'os' has no attribute 'exit'"), False, "failed to import"),
    (ipex_module(xpu=False), False, "not an XPU build"),
    (ipex_module(paged=False), False, "lacks the paged ops"),
    (ipex_module(), True, ""),
])
def test_ipex_capability(monkeypatch, module, usable, words):
    fake_ipex(monkeypatch, module)
    ok, why = xpu_platform.ipex_xpu_status()
    assert ok is usable and words in why
    assert (XpuPlatform.attention_backends()[0] == "ipex_paged") is usable


def test_backend_choice_by_capability(monkeypatch):
    from vllm_core_cpu import ipex as cpu_ipex

    fake_ipex(monkeypatch, ipex_module())
    monkeypatch.setattr(cpu_ipex, "import_ipex", ipex_module)
    cpu_ipex.ipex_status.cache_clear()
    try:
        assert XpuPlatform.attention_backends() == ["ipex_paged", "triton", "reference"]
        assert select_attention_backend(XpuPlatform, **SELECT).name == "ipex_paged"
        cfg = EngineConfig(model=ModelConfig(model="m"))
        cfg.cache.block_size = 8
        with pytest.raises(ValueError, match="block_size 8 is not served by IPEX"):
            XpuPlatform.check_and_update_config(cfg)
    finally:
        cpu_ipex.ipex_status.cache_clear()
    fake_ipex(monkeypatch, ImportError("absent"))
    assert XpuPlatform.attention_backends() == ["triton", "reference"]
    assert select_attention_backend(XpuPlatform, **SELECT).name == "triton"
    # a head size Triton does not serve: selection moves on to the reference backend
    assert select_attention_backend(XpuPlatform, **{**SELECT, "head_size": 48}).name == \
        "reference"
    monkeypatch.setattr(xpu_platform, "triton_kernels_available", lambda: False)
    assert XpuPlatform.attention_backends() == ["reference"]


def test_layer_ops_choice(monkeypatch):
    from vllm_core_triton.ops import TritonLayerOps

    from vllm_core_cpu import ipex as cpu_ipex

    fake_ipex(monkeypatch, ImportError("absent"))
    assert isinstance(xpu_worker.choose_layer_ops(), TritonLayerOps)
    monkeypatch.setattr(xpu_worker, "triton_kernels_available", lambda: False)
    assert xpu_worker.choose_layer_ops() is None
    fake_ipex(monkeypatch, ipex_module())
    monkeypatch.setattr(cpu_ipex, "import_ipex", ipex_module)
    assert isinstance(xpu_worker.choose_layer_ops(), cpu_ipex.IpexLayerOps)


def test_triton_layer_ops_under_the_interpreter():
    """The Triton layer kernels an XPU without IPEX would use, against the torch ops."""
    from vllm_core_triton.ops import TritonLayerOps

    from vllm_core.model_executor.layers.ops import TorchLayerOps

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(5, 64, generator=g).to(dev), torch.rand(64, generator=g).to(dev)
    y = torch.randn(5, 128, generator=g).to(dev)
    ops, ref = TritonLayerOps(), TorchLayerOps()
    torch.testing.assert_close(ops.rms_norm(x, w, 1e-6), ref.rms_norm(x, w, 1e-6))
    torch.testing.assert_close(ops.silu_and_mul(y), ref.silu_and_mul(y))


@pytest.mark.xpu_device
def test_real_intel_gpu():
    assert vllm_core_xpu.detect() == "vllm_core_xpu.platform.XpuPlatform"
    assert XpuPlatform.device_facts().device_count >= 1
    assert XpuPlatform.free_memory_bytes() > 0


@pytest.mark.xpu_device
def test_real_intel_gpu_engine_greedy():
    """On an Intel GPU: the engine runs the default model and matches the reference backend."""
    from vllm_core import LLM, SamplingParams

    params = SamplingParams(max_tokens=8, temperature=0)
    prompts = ["Hello, my name is", "The capital of France is"]
    chosen = LLM(dtype="float16", max_model_len=256).generate(prompts, params, use_tqdm=False)
    ref = LLM(dtype="float16", max_model_len=256, attention_backend="reference").generate(
        prompts, params, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in chosen] == [o.outputs[0].token_ids for o in ref]
