"""CpuPlatform: identity, dtype default from the ISA, config rules, memory, entry points."""

from __future__ import annotations

import importlib.metadata as md
import logging
import os

import pytest

import vllm_core_cpu
from vllm_core.config import EngineConfig, ModelConfig
from vllm_core.platforms.interface import PRIORITY_CPU, Platform, PlatformKind
from vllm_core_cpu import isa
from vllm_core_cpu import platform as cpu_platform
from vllm_core_cpu.platform import CpuPlatform

AVX2 = "flags\t\t: sse sse2 avx avx2\n"
SPR = "flags\t\t: sse sse2 avx avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"


@pytest.fixture
def fake_cpu(monkeypatch):
    def use(text: str, machine: str = "x86_64") -> None:
        monkeypatch.setattr(isa, "read_cpuinfo", lambda: text)
        monkeypatch.setattr(isa, "machine", lambda: machine)
    return use


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for var in ("VLLM_CPU_NUM_THREADS", "VLLM_CPU_KVCACHE_SPACE", "VLLM_CPU_OMP_THREADS_BIND"):
        monkeypatch.delenv(var, raising=False)


def config(**kw) -> EngineConfig:
    return EngineConfig(model=ModelConfig(model="m", **kw))


def test_identity(monkeypatch):
    from vllm_core_cpu import ipex

    monkeypatch.setattr(ipex, "ipex_status", lambda: ipex.IpexStatus(False, reason="absent"))
    assert issubclass(CpuPlatform, Platform)
    assert CpuPlatform.name == "cpu" and CpuPlatform.kind is PlatformKind.CPU
    assert CpuPlatform.priority == PRIORITY_CPU
    assert (CpuPlatform.device_type, CpuPlatform.dist_backend) == ("cpu", "gloo")
    assert CpuPlatform.attention_backends() == ["cpu_paged", "reference"]
    assert CpuPlatform.worker_class() == "vllm_core_cpu.worker.CpuWorker"
    assert CpuPlatform.default_max_num_batched_tokens() == 2048
    assert not CpuPlatform.supports_graph_capture()


@pytest.mark.parametrize("text,machine,dtype", [
    (AVX2, "x86_64", "float32"),
    (SPR, "x86_64", "bfloat16"),
    ("Features\t: fp asimd sve bf16\n", "aarch64", "bfloat16"),
    ("Features\t: fp asimd\n", "aarch64", "float32"),
    ("cpu\t\t: POWER10 (architected)\n", "ppc64le", "float32"),
])
def test_default_dtype_follows_isa(fake_cpu, text, machine, dtype):
    fake_cpu(text, machine)
    assert CpuPlatform.default_dtype() == dtype
    cfg = config()
    CpuPlatform.check_and_update_config(cfg)
    assert cfg.model.dtype == dtype


def test_device_facts_report_isa(fake_cpu):
    fake_cpu(SPR)
    facts = CpuPlatform.device_facts()
    assert facts.capability == "x86_64 AVX2 AVX512 AVX512_BF16 AMX"
    assert facts.details["isa"] == ["AVX2", "AVX512", "AVX512_BF16", "AMX"]
    assert facts.device_count == 1 and facts.total_memory_bytes > 0


def test_threads_from_affinity_then_env(monkeypatch):
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    monkeypatch.setattr(cpu_platform, "usable_cores", lambda: 3)
    cfg = config()
    CpuPlatform.check_and_update_config(cfg)
    assert cfg.num_threads == 3
    monkeypatch.setenv("VLLM_CPU_NUM_THREADS", "5")
    cfg = config()
    CpuPlatform.check_and_update_config(cfg)
    assert cfg.num_threads == 5
    monkeypatch.setenv("VLLM_CPU_NUM_THREADS", "0")
    with pytest.raises(ValueError, match="VLLM_CPU_NUM_THREADS must be >= 1"):
        CpuPlatform.check_and_update_config(config())


def test_real_affinity_matches_os():
    assert cpu_platform.usable_cores() == len(os.sched_getaffinity(0))


def test_kv_cache_space_from_env(monkeypatch):
    cfg = config()
    CpuPlatform.check_and_update_config(cfg)
    assert cfg.cache.cache_space_bytes is None
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1.5")
    cfg = config()
    CpuPlatform.check_and_update_config(cfg)
    assert cfg.cache.cache_space_bytes == int(1.5 * (1 << 30))
    cfg = config()
    cfg.cache.cache_space_bytes = 123                  # an explicit budget wins
    CpuPlatform.check_and_update_config(cfg)
    assert cfg.cache.cache_space_bytes == 123


def test_base_rules_still_apply():
    cfg = config(dtype="half")
    cfg.graph_batch_sizes = [1, 2]
    CpuPlatform.check_and_update_config(cfg)
    assert cfg.model.dtype == "float16" and cfg.cache.block_size == 16
    assert cfg.scheduler.max_num_batched_tokens == 2048
    assert cfg.graph_batch_sizes == [] and cfg.platform_name == "cpu"
    bad = config()
    bad.cache.kv_cache_dtype = "float16"        # fp8 is supported (test_cpu_fp8_kv.py)
    with pytest.raises(ValueError, match="kv_cache_dtype 'float16'"):
        CpuPlatform.check_and_update_config(bad)


def test_free_memory_psutil_and_meminfo():
    free = CpuPlatform.free_memory_bytes()
    assert 0 < free <= cpu_platform.total_memory_bytes()
    meminfo = cpu_platform._meminfo_bytes("MemAvailable")
    assert meminfo > 0 and abs(meminfo - free) < 0.25 * cpu_platform.total_memory_bytes()


def test_detect_and_entry_points():
    assert vllm_core_cpu.detect() == "vllm_core_cpu.platform.CpuPlatform"
    eps = {(ep.group, ep.name): ep.value for ep in md.distribution("vllm-core-cpu").entry_points}
    assert eps[("vllm.platform_plugins", "cpu")] == "vllm_core_cpu:detect"
    assert eps[("vllm.general_plugins", "cpu")] == "vllm_core_cpu:register"


def test_hooks_register_cpu_paged_backend():
    from vllm_core.plugins import create_plugin_manager
    from vllm_core_cpu import hooks

    seen = []
    pm = create_plugin_manager(register_backend=lambda *a: seen.append(a), with_builtin=False)
    pm.register(hooks)
    assert seen == [("cpu_paged", "vllm_core_cpu.attention.CpuPagedAttentionBackend"),
                    ("ipex_paged", "vllm_core_cpu.ipex.IpexPagedAttentionBackend")]


def test_registered_backends_resolve():
    from vllm_core.attention.registry import get_backend_cls

    assert get_backend_cls("cpu_paged").__name__ == "CpuPagedAttentionBackend"
    assert get_backend_cls("reference").__name__ == "ReferenceAttentionBackend"


def test_kernel_build_clears_a_stale_torch_lock_and_keys_by_isa(tmp_path, monkeypatch, caplog):
    """A build killed mid-way leaves torch's ``lock`` file behind; the next start must not wait
    for it forever (it did: a server hung at start-up). The build folder is keyed by the ISA."""
    import os

    from torch.utils import cpp_extension

    from vllm_core.platforms.kernel_build import sources_key
    from vllm_core_cpu import kernels

    monkeypatch.setenv("VLLM_CACHE_ROOT", str(tmp_path))
    seen = {}

    def fake_load(*, build_directory, **kwargs):
        seen["dir"] = build_directory
        seen["stale_lock_left"] = os.path.exists(os.path.join(build_directory, "lock"))

    monkeypatch.setattr(cpp_extension, "load", fake_load)
    key = kernels.isa_key()
    assert len(key) == 10 and key == kernels.isa_key()
    import torch

    here = os.path.join(os.path.dirname(kernels.__file__), "csrc")
    sources = sources_key([os.path.join(here, s)
                           for s in kernels._SOURCES + kernels._HEADERS])
    build = tmp_path / "torch_extensions" / (
        f"cpu_kernels_torch{torch.__version__.replace('+', '_')}_{key}_{sources}")
    build.mkdir(parents=True)
    (build / "lock").write_text("")                  # left by a killed build
    # the user sees what reaches the package logger's handler; caplog reads the root logger
    monkeypatch.setattr(logging.getLogger("vllm_core"), "propagate", True)
    assert kernels.logger.name.startswith("vllm_core.")
    with caplog.at_level("INFO", logger="vllm_core"):
        kernels.load_kernels.__wrapped__()
    assert seen == {"dir": str(build), "stale_lock_left": False}
    assert "building the CPU kernels" in caplog.text       # a first start says why it waits
    (build / "vllm_core_cpu_kernels.so").write_bytes(b"")
    caplog.clear()
    with caplog.at_level("INFO", logger="vllm_core"):
        kernels.load_kernels.__wrapped__()
    assert "building the CPU kernels" not in caplog.text   # a built one loads silently
