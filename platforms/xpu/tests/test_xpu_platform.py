"""XpuPlatform and its detection with the torch.xpu probe faked."""

from __future__ import annotations

import importlib.metadata as md

import pytest
import vllm_core_xpu
from vllm_core_xpu import detection
from vllm_core_xpu.platform import XpuPlatform

from vllm_core.config import EngineConfig, ModelConfig


def test_detection(monkeypatch):
    monkeypatch.setattr(detection, "xpu_available", lambda: True)
    assert vllm_core_xpu.detect() == "vllm_core_xpu.platform.XpuPlatform"
    monkeypatch.setattr(detection, "xpu_available", lambda: False)
    assert "torch.xpu.is_available() is False" in vllm_core_xpu.detect().reason


def test_real_probe_on_this_machine():
    import torch

    expected = hasattr(torch, "xpu") and torch.xpu.is_available()
    assert detection.xpu_available() is expected


def test_identity_and_config():
    assert (XpuPlatform.name, XpuPlatform.device_type, XpuPlatform.dispatch_key,
            XpuPlatform.dist_backend) == ("xpu", "xpu", "XPU", "xccl")
    assert XpuPlatform.default_dtype() == "bfloat16"
    cfg = EngineConfig(model=ModelConfig(model="m"))
    XpuPlatform.check_and_update_config(cfg)
    assert cfg.model.dtype == "bfloat16" and cfg.platform_name == "xpu"
    eps = {(ep.group, ep.name): ep.value for ep in md.distribution("vllm-core-xpu").entry_points}
    assert eps[("vllm.platform_plugins", "xpu")] == "vllm_core_xpu:detect"


@pytest.mark.xpu_device
def test_real_intel_gpu():
    assert vllm_core_xpu.detect() == "vllm_core_xpu.platform.XpuPlatform"
    assert XpuPlatform.device_facts().device_count >= 1
    assert XpuPlatform.free_memory_bytes() > 0
