"""TpuPlatform and its detection with the probes faked (no runtime is started)."""

from __future__ import annotations

import importlib.metadata as md

import pytest

import vllm_core_tpu
from vllm_core.config import EngineConfig, ModelConfig
from vllm_core_tpu import detection
from vllm_core_tpu.platform import TpuPlatform


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


def test_broken_probe_is_reported_as_failed(monkeypatch):
    """A probe that raises (a broken driver) makes discovery report the plugin as failed."""
    from vllm_core.platforms.discovery import PluginStatus, discover_platform_plugins

    def boom():
        raise OSError("permission denied: /dev/vfio/0")

    fake(monkeypatch, True, True, 4)
    monkeypatch.setattr(detection, "tpu_chip_count", boom)
    [report] = [r for r in discover_platform_plugins(allow_list=["tpu"]) if r.name == "tpu"]
    assert report.status is PluginStatus.FAILED and "permission denied" in report.reason


def test_chip_probe_on_this_machine():
    assert detection.tpu_chip_count() >= 0


def test_buckets_and_backends_in_config():
    cfg = EngineConfig(model=ModelConfig(model="m", dtype="float32"))
    cfg.scheduler.max_num_batched_tokens = 64
    cfg.scheduler.max_num_seqs = 256
    TpuPlatform.check_and_update_config(cfg)
    assert cfg.scheduler.max_num_seqs == 64                 # never more rows than tokens
    assert cfg.extra["tpu_buckets"] == {"tokens": [16, 32, 64],
                                        "requests": [1, 2, 4, 8, 16, 32, 64], "max_graphs": 18}
    assert cfg.extra["tpu_precompile"] is True
    assert TpuPlatform.attention_backends() == ["pallas", "xla_paged"]
    assert TpuPlatform.worker_class() == "vllm_core_tpu.worker.TpuWorker"
    default = EngineConfig(model=ModelConfig(model="m"))
    TpuPlatform.check_and_update_config(default)
    assert default.scheduler.max_num_batched_tokens == 512 and default.cache.block_size == 16


def test_identity_and_config():
    assert (TpuPlatform.name, TpuPlatform.device_type,
            TpuPlatform.dist_backend) == ("tpu", "xla", "xla")
    assert TpuPlatform.default_dtype() == "bfloat16"
    cfg = EngineConfig(model=ModelConfig(model="m"), graph_batch_sizes=[1])
    TpuPlatform.check_and_update_config(cfg)
    assert cfg.model.dtype == "bfloat16" and cfg.graph_batch_sizes == []
    with pytest.raises(ValueError, match="does not support dtype 'float16'"):
        TpuPlatform.check_and_update_config(EngineConfig(model=ModelConfig(model="m",
                                                                           dtype="float16")))
    eps = {(ep.group, ep.name): ep.value for ep in md.distribution("vllm-core-tpu").entry_points}
    assert eps[("vllm.platform_plugins", "tpu")] == "vllm_core_tpu:detect"
    assert eps[("vllm.general_plugins", "tpu")] == "vllm_core_tpu:register"


@pytest.mark.tpu_device
def test_real_tpu():
    assert vllm_core_tpu.detect() == "vllm_core_tpu.platform.TpuPlatform"
    assert TpuPlatform.device_facts().device_count >= 1
    assert TpuPlatform.free_memory_bytes() > 0
