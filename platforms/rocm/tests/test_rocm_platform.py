"""RocmPlatform and its detection with faked torch probes."""

from __future__ import annotations

import importlib.metadata as md
from types import SimpleNamespace

import pytest
import vllm_core_rocm
from vllm_core_rocm import detection
from vllm_core_rocm.platform import RocmPlatform

from vllm_core.config import EngineConfig, ModelConfig
from vllm_core.platforms.discovery import NotDetected


def fake(monkeypatch, hip, devices):
    monkeypatch.setattr(detection, "torch_hip_version", lambda: hip)
    monkeypatch.setattr(detection, "visible_device_count", lambda: devices)


def test_detection_rules(monkeypatch):
    fake(monkeypatch, "6.3.42131", 8)
    assert vllm_core_rocm.detect() == "vllm_core_rocm.platform.RocmPlatform"
    fake(monkeypatch, "6.3.42131", 0)
    assert "sees no AMD device" in vllm_core_rocm.detect().reason
    fake(monkeypatch, None, 1)
    result = vllm_core_rocm.detect()
    assert isinstance(result, NotDetected) and "not a ROCm build" in result.reason


def test_identity_and_defaults():
    assert RocmPlatform.name == "rocm"
    assert (RocmPlatform.device_type, RocmPlatform.dist_backend,
            RocmPlatform.device_control_env_var) == ("cuda", "nccl", "HIP_VISIBLE_DEVICES")
    assert RocmPlatform.default_dtype() == "bfloat16"
    assert RocmPlatform.attention_backends() == ["triton"]
    assert RocmPlatform.supports_graph_capture()


def test_config_graph_sizes_and_bf16_without_capability_probe(monkeypatch):
    import vllm_core_cuda.platform as cuda_platform

    def no_probe(index=0):
        raise AssertionError("ROCm must not apply the CUDA capability rule")

    monkeypatch.setattr(cuda_platform, "device_capability", no_probe)
    cfg = EngineConfig(model=ModelConfig(model="m"))
    RocmPlatform.check_and_update_config(cfg)
    assert cfg.model.dtype == "bfloat16" and cfg.platform_name == "rocm"
    assert cfg.graph_batch_sizes[:4] == [1, 2, 4, 8]
    eager = EngineConfig(model=ModelConfig(model="m"), enforce_eager=True)
    RocmPlatform.check_and_update_config(eager)
    assert eager.graph_batch_sizes == []


def test_device_facts_use_gcn_arch(monkeypatch):
    import vllm_core_rocm.platform as rocm_platform

    props = SimpleNamespace(name="AMD Instinct MI300X", gcnArchName="gfx942:sramecc+:xnack-",
                            total_memory=192 << 30)
    monkeypatch.setattr(rocm_platform, "device_count", lambda: 1)
    monkeypatch.setattr(rocm_platform, "device_properties", lambda index=0: props)
    facts = RocmPlatform.device_facts()
    assert facts.capability == "gfx942" and facts.device_name == "AMD Instinct MI300X"


def test_entry_points_and_shared_triton_backend():
    eps = {(ep.group, ep.name): ep.value for ep in md.distribution("vllm-core-rocm").entry_points}
    assert eps[("vllm.platform_plugins", "rocm")] == "vllm_core_rocm:detect"
    from vllm_core_cuda.hooks import ATTENTION_BACKENDS as CUDA
    from vllm_core_rocm.hooks import ATTENTION_BACKENDS as ROCM

    assert ROCM["triton"] == CUDA["triton"]


@pytest.mark.rocm_device
def test_real_amd_gpu():
    assert vllm_core_rocm.detect() == "vllm_core_rocm.platform.RocmPlatform"
    assert RocmPlatform.device_facts().device_count >= 1
    assert RocmPlatform.free_memory_bytes() > 0
