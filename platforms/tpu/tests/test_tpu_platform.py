"""TpuPlatform and its detection with the probes faked (no runtime is started)."""

from __future__ import annotations

import importlib.metadata as md

import pytest
import vllm_core_tpu
from vllm_core_tpu import detection
from vllm_core_tpu.platform import TpuPlatform

from vllm_core.config import EngineConfig, ModelConfig


def fake(monkeypatch, xla, libtpu, chips):
    monkeypatch.setattr(detection, "xla_importable", lambda: xla)
    monkeypatch.setattr(detection, "libtpu_importable", lambda: libtpu)
    monkeypatch.setattr(detection, "tpu_chip_count", lambda: chips)


@pytest.mark.parametrize("xla,libtpu,chips,words", [
    (True, True, 4, None),
    (True, False, 8, None),
    (False, False, 4, "neither torch_xla nor libtpu"),
    (True, True, 0, "no TPU chip visible"),
    (False, True, 4, "torch_xla is not installed"),
])
def test_detection_rules(monkeypatch, xla, libtpu, chips, words):
    fake(monkeypatch, xla, libtpu, chips)
    result = vllm_core_tpu.detect()
    if words is None:
        assert result == "vllm_core_tpu.platform.TpuPlatform"
    else:
        assert not result and words in result.reason


def test_identity_and_config():
    assert (TpuPlatform.name, TpuPlatform.device_type, TpuPlatform.dispatch_key,
            TpuPlatform.dist_backend) == ("tpu", "xla", "XLA", "xla")
    assert TpuPlatform.default_dtype() == "bfloat16"
    cfg = EngineConfig(model=ModelConfig(model="m"), graph_batch_sizes=[1])
    TpuPlatform.check_and_update_config(cfg)
    assert cfg.model.dtype == "bfloat16" and cfg.graph_batch_sizes == []
    with pytest.raises(ValueError, match="does not support dtype 'float16'"):
        TpuPlatform.check_and_update_config(EngineConfig(model=ModelConfig(model="m",
                                                                           dtype="float16")))
    eps = {(ep.group, ep.name): ep.value for ep in md.distribution("vllm-core-tpu").entry_points}
    assert eps[("vllm.platform_plugins", "tpu")] == "vllm_core_tpu:detect"


@pytest.mark.tpu_device
def test_real_tpu():
    assert vllm_core_tpu.detect() == "vllm_core_tpu.platform.TpuPlatform"
    assert TpuPlatform.device_facts().device_count >= 1
    assert TpuPlatform.free_memory_bytes() > 0
