"""RocmPlatform and its detection with faked torch probes (torch.version.hip, device count,
gcnArchName); the shared Triton backend under the interpreter; the device tests."""

from __future__ import annotations

import importlib.metadata as md
from types import SimpleNamespace

import pytest
import torch

import vllm_core_rocm
from vllm_core.attention.selector import select_attention_backend
from vllm_core.config import EngineConfig, ModelConfig
from vllm_core.platforms.discovery import NotDetected, PluginStatus, discover_platform_plugins
from vllm_core_rocm import detection
from vllm_core_rocm import platform as rocm_platform
from vllm_core_rocm.platform import RocmPlatform, gfx_traits


def fake(monkeypatch, hip, devices):
    monkeypatch.setattr(detection, "torch_hip_version", lambda: hip)
    monkeypatch.setattr(detection, "visible_device_count", lambda: devices)


def fake_arch(monkeypatch, arch: str) -> None:
    monkeypatch.setattr(rocm_platform, "gcn_arch", lambda index=0: arch)


def test_detection_rules(monkeypatch):
    fake(monkeypatch, "6.3.42131", 8)
    assert vllm_core_rocm.detect() == "vllm_core_rocm.platform.RocmPlatform"
    fake(monkeypatch, "6.3.42131", 0)
    assert "sees no AMD device" in vllm_core_rocm.detect().reason
    fake(monkeypatch, None, 1)
    result = vllm_core_rocm.detect()
    assert isinstance(result, NotDetected) and "not a ROCm build" in result.reason


def test_real_probe_on_this_machine():
    result = vllm_core_rocm.detect()
    if torch.version.hip is None:
        assert "not a ROCm build" in result.reason


def test_broken_driver_is_reported_as_failed(monkeypatch):
    def boom():
        raise RuntimeError("HIP error: hipErrorNoBinaryForGpu")

    fake(monkeypatch, "6.3.42131", 1)
    monkeypatch.setattr(detection, "visible_device_count", boom)
    [report] = [r for r in discover_platform_plugins(allow_list=["rocm"]) if r.name == "rocm"]
    assert report.status is PluginStatus.FAILED and "hipErrorNoBinaryForGpu" in report.reason


def test_identity_and_defaults():
    assert RocmPlatform.name == "rocm"
    assert (RocmPlatform.device_type, RocmPlatform.dist_backend,
            RocmPlatform.device_control_env_var) == ("cuda", "nccl", "HIP_VISIBLE_DEVICES")
    assert RocmPlatform.attention_backends() == ["triton"]
    assert RocmPlatform.supports_graph_capture()          # HIP graphs via torch.cuda.CUDAGraph
    assert RocmPlatform.worker_class() == "vllm_core_cuda.worker.CudaWorker"


@pytest.mark.parametrize("arch,dtype,fp8,wave", [
    ("gfx942:sramecc+:xnack-", "bfloat16", "float8_e4m3fnuz", 64),     # MI300X
    ("gfx950", "bfloat16", "float8_e4m3fn", 64),                       # MI355X
    ("gfx90a:sramecc+:xnack-", "bfloat16", None, 64),                  # MI250X
    ("gfx908", "float16", None, 64),                                   # MI100
    ("gfx1100", "bfloat16", None, 32),                                 # RX 7900 XTX
    ("gfx1201", "bfloat16", "float8_e4m3fn", 32),                      # RX 9070
])
def test_arch_defaults_in_config(monkeypatch, arch, dtype, fp8, wave):
    import vllm_core_cuda.platform as cuda_platform

    def no_probe(index=0):
        raise AssertionError("ROCm must not apply the CUDA capability rule")

    monkeypatch.setattr(cuda_platform, "device_capability", no_probe)
    fake_arch(monkeypatch, arch)
    cfg = EngineConfig(model=ModelConfig(model="m"))
    RocmPlatform.check_and_update_config(cfg)
    assert cfg.model.dtype == dtype and cfg.platform_name == "rocm"
    assert cfg.cache.block_size == 16
    assert cfg.extra["rocm"] == {"gcn_arch": arch.split(":")[0], "fp8_dtype": fp8,
                                 "wave_size": wave}
    if fp8 is not None:
        assert isinstance(getattr(torch, fp8), torch.dtype)           # a real torch dtype
    assert cfg.graph_batch_sizes[:4] == [1, 2, 4, 8]
    eager = EngineConfig(model=ModelConfig(model="m"), enforce_eager=True)
    RocmPlatform.check_and_update_config(eager)
    assert eager.graph_batch_sizes == []


def test_refusals(monkeypatch):
    fake_arch(monkeypatch, "gfx906")
    assert gfx_traits("gfx906").bf16 is False
    with pytest.raises(ValueError, match="bfloat16 is not supported on gfx906"):
        RocmPlatform.check_and_update_config(EngineConfig(model=ModelConfig(model="m",
                                                                            dtype="bf16")))
    fake_arch(monkeypatch, "gfx942")
    cfg = EngineConfig(model=ModelConfig(model="m"))
    cfg.cache.block_size = 8
    with pytest.raises(ValueError, match="block_size 8 is not served by the Triton"):
        RocmPlatform.check_and_update_config(cfg)
    bad_kv = EngineConfig(model=ModelConfig(model="m"))
    bad_kv.cache.kv_cache_dtype = "fp8"
    with pytest.raises(ValueError, match="kv_cache_dtype 'fp8'"):
        RocmPlatform.check_and_update_config(bad_kv)


def test_device_facts_use_gcn_arch(monkeypatch):
    props = SimpleNamespace(name="AMD Instinct MI300X", gcnArchName="gfx942:sramecc+:xnack-",
                            total_memory=192 << 30, multi_processor_count=304)
    monkeypatch.setattr(rocm_platform, "device_count", lambda: 1)
    monkeypatch.setattr(rocm_platform, "device_properties", lambda index=0: props)
    facts = RocmPlatform.device_facts()
    assert facts.capability == "gfx942" and facts.device_name == "AMD Instinct MI300X"
    assert facts.details["compute_units"] == 304
    assert facts.details["fp8_dtype"] == "float8_e4m3fnuz"
    assert facts.total_memory_bytes == 192 << 30


def test_entry_points_and_shared_triton_backend():
    eps = {(ep.group, ep.name): ep.value for ep in md.distribution("vllm-core-rocm").entry_points}
    assert eps[("vllm.platform_plugins", "rocm")] == "vllm_core_rocm:detect"
    assert eps[("vllm.general_plugins", "rocm")] == "vllm_core_rocm:register"
    from vllm_core_cuda.hooks import ATTENTION_BACKENDS as CUDA
    from vllm_core_rocm.hooks import ATTENTION_BACKENDS as ROCM

    assert ROCM["triton"] == CUDA["triton"]


def test_backend_selection_and_refusals(monkeypatch):
    from vllm_core.plugins import load_general_plugins

    load_general_plugins()
    select = dict(head_size=64, dtype="bfloat16", kv_cache_dtype="auto", block_size=16,
                  sliding_window=None)
    assert select_attention_backend(RocmPlatform, **select).name == "triton"
    with pytest.raises(ValueError, match=r"triton: head size 48 not in"):
        select_attention_backend(RocmPlatform, **{**select, "head_size": 48})
    import importlib.util

    # AttentionBackend.unsupported_reasons asks importlib whether "triton" is installed
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match="package triton is not installed"):
        select_attention_backend(RocmPlatform, **select)


def test_triton_backend_under_the_interpreter_matches_reference():
    """The Triton attention the ROCm platform selects, run on a small mixed batch (under
    TRITON_INTERPRET=1 without a GPU) against the reference backend."""
    from vllm_core_triton.attention import TritonAttentionBackend

    from vllm_core.attention.backend import CommonAttentionMetadata
    from vllm_core.attention.backends.reference import ReferenceAttentionBackend

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    g = torch.Generator().manual_seed(0)
    h, hkv, d, bs, nb = 4, 2, 32, 16, 8
    q_lens, ctx = [1, 5], [20, 3]
    seq = [a + b for a, b in zip(q_lens, ctx)]
    table = torch.tensor([[3, 5], [6, 0]])
    qsl = torch.tensor([0, 1, 6])
    pos = torch.cat([torch.arange(c, c + q) for c, q in zip(ctx, q_lens)])
    req = torch.repeat_interleave(torch.arange(2), torch.tensor(q_lens))
    slots = table[req, pos // bs] * bs + pos % bs
    common = CommonAttentionMetadata(
        query_start_loc=qsl.to(dev), seq_lens=torch.tensor(seq).to(dev),
        context_lens=torch.tensor(ctx).to(dev), block_table=table.to(dev),
        slot_mapping=slots.to(dev), query_start_loc_cpu=qsl, seq_lens_cpu=torch.tensor(seq),
        num_reqs=2, num_tokens=6, num_decodes=1, max_query_len=5, max_seq_len=21,
        block_size=bs)
    cache = torch.randn(2, nb, bs, hkv, d, generator=g).to(dev)
    q, k, v = (torch.randn(6, n, d, generator=g).to(dev) for n in (h, hkv, hkv))
    outs = []
    for backend in (ReferenceAttentionBackend, TritonAttentionBackend):
        impl = backend.get_impl_cls()(h, d, d ** -0.5, hkv, None)
        md_ = backend.get_builder_cls()(bs, dev).build(common)
        outs.append(impl.forward(q, k, v, cache.clone(), md_))
    torch.testing.assert_close(outs[1], outs[0], rtol=2e-4, atol=2e-4)


@pytest.mark.rocm_device
def test_real_amd_gpu():
    assert vllm_core_rocm.detect() == "vllm_core_rocm.platform.RocmPlatform"
    facts = RocmPlatform.device_facts()
    assert facts.device_count >= 1 and facts.capability.startswith("gfx")
    assert RocmPlatform.free_memory_bytes() > 0


@pytest.mark.rocm_device
def test_real_amd_gpu_engine_greedy_parity_and_hip_graphs():
    """On an AMD GPU: the engine with HIP graphs gives the same greedy tokens as eager mode."""
    from vllm_core import LLM, SamplingParams

    params = SamplingParams(max_tokens=8, temperature=0)
    prompts = ["Hello, my name is", "The capital of France is"]
    graphs = LLM(dtype="float16", max_model_len=256).generate(prompts, params, use_tqdm=False)
    eager = LLM(dtype="float16", max_model_len=256, enforce_eager=True).generate(
        prompts, params, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in graphs] == [o.outputs[0].token_ids for o in eager]
