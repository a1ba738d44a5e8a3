"""CudaPlatform and its detection, with the torch probes faked at their boundary.

Tests marked ``gpu`` need a real NVIDIA GPU (the device machine); the rest run anywhere.
"""

from __future__ import annotations

import importlib.metadata as md

import pytest

import vllm_core_cuda
from vllm_core.config import EngineConfig, ModelConfig
from vllm_core.platforms.discovery import NotDetected
from vllm_core.platforms.interface import PRIORITY_ACCELERATOR, Platform
from vllm_core_cuda import detection
from vllm_core_cuda import platform as cuda_platform
from vllm_core_cuda.platform import CudaPlatform, default_graph_batch_sizes


def fake_torch(monkeypatch, *, cuda=None, hip=None, devices=0):
    monkeypatch.setattr(detection, "torch_version_attrs", lambda: {"cuda": cuda, "hip": hip})
    monkeypatch.setattr(detection, "visible_device_count", lambda: devices)


def test_detection_rules(monkeypatch):
    fake_torch(monkeypatch, cuda="12.8", devices=2)
    assert vllm_core_cuda.detect() == "vllm_core_cuda.platform.CudaPlatform"
    fake_torch(monkeypatch, cuda="12.8", devices=0)
    result = vllm_core_cuda.detect()
    assert isinstance(result, NotDetected) and "sees no NVIDIA device" in result.reason
    fake_torch(monkeypatch, cuda=None, hip="6.3", devices=1)
    assert "ROCm build" in vllm_core_cuda.detect().reason
    fake_torch(monkeypatch, cuda=None, devices=0)
    assert "CPU build" in vllm_core_cuda.detect().reason


def test_detection_without_torch(monkeypatch):
    def boom():
        raise ImportError("No module named 'torch'")

    monkeypatch.setattr(detection, "torch_version_attrs", boom)
    assert vllm_core_cuda.detect() == NotDetected("torch is not installed")


def test_identity():
    assert issubclass(CudaPlatform, Platform)
    assert CudaPlatform.name == "cuda" and CudaPlatform.priority == PRIORITY_ACCELERATOR
    assert (CudaPlatform.device_type, CudaPlatform.dist_backend,
            CudaPlatform.device_control_env_var) == ("cuda", "nccl", "CUDA_VISIBLE_DEVICES")
    assert CudaPlatform.attention_backends() == ["triton", "flash_attn", "flashinfer"]
    assert CudaPlatform.worker_class() == "vllm_core_cuda.worker.CudaWorker"
    assert CudaPlatform.supports_graph_capture()


@pytest.mark.parametrize("cap,dtype", [((7, 5), "float16"), ((8, 0), "bfloat16"),
                                       ((9, 0), "bfloat16"), ((6, 1), "float16")])
def test_default_dtype_by_capability(monkeypatch, cap, dtype):
    monkeypatch.setattr(cuda_platform, "device_capability", lambda index=0: cap)
    assert CudaPlatform.default_dtype() == dtype


def test_graph_batch_sizes():
    sizes = default_graph_batch_sizes(512)
    assert sizes[:6] == [1, 2, 4, 8, 16, 24] and sizes[-1] == 512
    assert all(b - a == 8 for a, b in zip(sizes[3:], sizes[4:], strict=False))
    assert default_graph_batch_sizes(256)[-1] == 256
    assert default_graph_batch_sizes(3) == [1, 2, 4]        # padded up to a captured size
    assert default_graph_batch_sizes(10) == [1, 2, 4, 8, 16]
    assert default_graph_batch_sizes(4096)[-1] == 512
    with pytest.raises(ValueError, match="max_num_seqs"):
        default_graph_batch_sizes(0)


def test_check_and_update_config(monkeypatch):
    monkeypatch.setattr(cuda_platform, "device_capability", lambda index=0: (9, 0))
    cfg = EngineConfig(model=ModelConfig(model="m"))
    CudaPlatform.check_and_update_config(cfg)
    assert cfg.model.dtype == "bfloat16" and cfg.cache.block_size == 16
    assert cfg.graph_batch_sizes == default_graph_batch_sizes(256)
    assert cfg.platform_name == "cuda"
    eager = EngineConfig(model=ModelConfig(model="m"), enforce_eager=True)
    CudaPlatform.check_and_update_config(eager)
    assert eager.graph_batch_sizes == []
    given = EngineConfig(model=ModelConfig(model="m"), graph_batch_sizes=[8, 1, 8])
    CudaPlatform.check_and_update_config(given)
    assert given.graph_batch_sizes == [1, 8]


def test_bf16_refused_before_ampere(monkeypatch):
    monkeypatch.setattr(cuda_platform, "device_capability", lambda index=0: (7, 5))
    cfg = EngineConfig(model=ModelConfig(model="m", dtype="bfloat16"))
    with pytest.raises(ValueError, match="bfloat16 needs compute capability >= 8.0.*7.5"):
        CudaPlatform.check_and_update_config(cfg)
    auto = EngineConfig(model=ModelConfig(model="m"))
    CudaPlatform.check_and_update_config(auto)
    assert auto.model.dtype == "float16"


def test_entry_points_and_hooks():
    eps = {(ep.group, ep.name): ep.value for ep in md.distribution("vllm-core-cuda").entry_points}
    assert eps[("vllm.platform_plugins", "cuda")] == "vllm_core_cuda:detect"
    assert eps[("vllm.general_plugins", "cuda")] == "vllm_core_cuda:register"
    from vllm_core.plugins import create_plugin_manager
    from vllm_core_cuda import hooks

    seen = {}
    pm = create_plugin_manager(register_backend=lambda n, p: seen.setdefault(n, p),
                               with_builtin=False)
    pm.register(hooks)
    assert set(seen) == {"triton", "flash_attn", "flashinfer"}


def test_registered_backend_paths_import():
    """Every class path the hooks register exists (the kernel libraries themselves may not)."""
    from vllm_core.attention.backend import AttentionBackend
    from vllm_core.plugins.loading import import_object
    from vllm_core_cuda.hooks import ATTENTION_BACKENDS

    for name, path in ATTENTION_BACKENDS.items():
        cls = import_object(path)
        assert issubclass(cls, AttentionBackend), name


@pytest.mark.gpu
def test_real_gpu_is_detected_and_described():
    assert vllm_core_cuda.detect() == "vllm_core_cuda.platform.CudaPlatform"
    facts = CudaPlatform.device_facts()
    assert facts.device_count >= 1 and facts.total_memory_bytes > 0
    assert 0 < CudaPlatform.free_memory_bytes() <= facts.total_memory_bytes
    major = int(facts.capability.split(".")[0])
    assert CudaPlatform.default_dtype() == ("bfloat16" if major >= 8 else "float16")
    CudaPlatform.set_device(0)
    CudaPlatform.seed_everything(0)
    CudaPlatform.synchronize()
    CudaPlatform.empty_cache()


@pytest.mark.parametrize("module,cls_name,package", [
    ("flash_attn_backend", "FlashAttentionBackend", "flash_attn"),
    ("flashinfer_backend", "FlashInferBackend", "flashinfer"),
])
def test_vendor_backends_report_missing_package(module: str, cls_name: str, package: str):
    import importlib
    import importlib.util

    cls = getattr(importlib.import_module(f"vllm_core_cuda.attention.{module}"), cls_name)
    reasons = cls.unsupported_reasons(head_size=128, dtype="bfloat16", kv_cache_dtype="auto",
                                      block_size=cls.preferred_block_size, sliding_window=None)
    if importlib.util.find_spec(package) is None:
        assert reasons == [f"package {package} is not installed"]
    else:
        assert reasons == []
    assert cls.unsupported_reasons(head_size=128, dtype="float32", kv_cache_dtype="auto",
                                   block_size=cls.preferred_block_size, sliding_window=None)
