"""Per-ISA configuration rules of the CPU plugin (x86 / Arm / POWER), thread binding, and the
capability-based choice of IPEX, with every probe faked at its boundary (/proc/cpuinfo text,
platform.machine(), NUMA node lists, the process affinity, ``import intel_extension_for_pytorch``).
"""

from __future__ import annotations

import logging
import types

import pytest
import torch

from vllm_core.attention.selector import select_attention_backend
from vllm_core.config import EngineConfig, ModelConfig
from vllm_core_cpu import ipex, isa
from vllm_core_cpu import platform as cpu_platform
from vllm_core_cpu.platform import CpuPlatform, parse_cpu_list, plan_thread_binding

SAPPHIRE_RAPIDS = "flags\t\t: sse avx avx2 avx512f avx512_bf16 avx512_vnni amx_bf16 amx_tile\n"
ICELAKE = "flags\t\t: sse avx avx2 avx512f avx512_vnni\n"
ZEN3 = "flags\t\t: sse avx avx2 fma\n"
GRAVITON3 = "Features\t: fp asimd sve sve2 bf16 i8mm\n"       # Neoverse V1
GRAVITON2 = "Features\t: fp asimd asimdhp atomics\n"           # Neoverse N1: no BF16
POWER9 = "cpu\t\t: POWER9 (raw), altivec supported\n"
POWER10 = "cpu\t\t: POWER10 (architected), altivec supported\n"

REAL_NUMA_NODES, REAL_AFFINITY = cpu_platform.numa_nodes, cpu_platform.affinity

CPUS = {"spr": (SAPPHIRE_RAPIDS, "x86_64"), "icx": (ICELAKE, "x86_64"), "zen3": (ZEN3, "x86_64"),
        "graviton3": (GRAVITON3, "aarch64"), "graviton2": (GRAVITON2, "aarch64"),
        "power9": (POWER9, "ppc64le"), "power10": (POWER10, "ppc64le")}


@pytest.fixture(autouse=True)
def _clean(monkeypatch):
    for var in ("VLLM_CPU_NUM_THREADS", "VLLM_CPU_KVCACHE_SPACE", "VLLM_CPU_OMP_THREADS_BIND"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(cpu_platform, "affinity", lambda: [0, 1, 2, 3, 4, 5, 6, 7])
    monkeypatch.setattr(cpu_platform, "numa_nodes", lambda: {0: [0, 1, 2, 3], 1: [4, 5, 6, 7]})
    ipex.ipex_status.cache_clear()
    yield
    ipex.ipex_status.cache_clear()


def use_cpu(monkeypatch, name: str) -> None:
    text, machine = CPUS[name]
    monkeypatch.setattr(isa, "read_cpuinfo", lambda: text)
    monkeypatch.setattr(isa, "machine", lambda: machine)


def no_ipex(monkeypatch):
    def missing():
        raise ImportError("No module named 'intel_extension_for_pytorch'")
    monkeypatch.setattr(ipex, "import_ipex", missing)


def configured(dtype: str = "auto") -> EngineConfig:
    cfg = EngineConfig(model=ModelConfig(model="m", dtype=dtype))
    CpuPlatform.check_and_update_config(cfg)
    return cfg


# ------------------------------------------------------------------------------- dtypes
@pytest.mark.parametrize("cpu,default,refused", [
    ("spr", "bfloat16", []),                       # AMX / AVX512_BF16: bf16 by default
    ("icx", "float32", []),                        # AVX512 without BF16: bf16 only emulated
    ("zen3", "float32", []),
    ("graviton3", "bfloat16", []),                 # Arm with BF16
    ("graviton2", "float32", ["bfloat16"]),        # Arm without BF16: refused
    ("power9", "float32", ["bfloat16", "float16"]),
    ("power10", "float32", ["float16"]),           # POWER10 MMA computes bf16
])
def test_dtype_rules_per_isa(monkeypatch, cpu, default, refused):
    use_cpu(monkeypatch, cpu)
    no_ipex(monkeypatch)
    cfg = configured()
    assert cfg.model.dtype == default
    for dtype in ("bfloat16", "float32", "float16"):
        if dtype in refused:
            with pytest.raises(ValueError, match=f"dtype {dtype}"):
                configured(dtype)
        else:
            assert configured(dtype).model.dtype == dtype


def test_emulated_bf16_on_x86_warns(monkeypatch, caplog):
    use_cpu(monkeypatch, "zen3")
    no_ipex(monkeypatch)
    # plugin loggers are under the package logger, which does not propagate to caplog's root
    monkeypatch.setattr(logging.getLogger("vllm_core"), "propagate", True)
    with caplog.at_level("WARNING", logger="vllm_core"):
        assert configured("bfloat16").model.dtype == "bfloat16"
    assert "emulated" in caplog.text


def test_isa_recorded_in_config(monkeypatch):
    use_cpu(monkeypatch, "graviton3")
    cfg = configured()
    assert cfg.extra["cpu_isa"] == "aarch64 NEON SVE SVE2 BF16"
    assert cfg.extra["cpu_ipex"] is False               # IPEX is an x86 choice only


# ------------------------------------------------------------------------------- threads
def test_parse_cpu_list():
    assert parse_cpu_list("0-3,8,10-11\n") == [0, 1, 2, 3, 8, 10, 11]
    for bad in ("", "a-b", "3-1", "1,,x"):
        with pytest.raises(ValueError, match="bad CPU list"):
            parse_cpu_list(bad)


def test_binding_plans():
    usable = [0, 1, 2, 3, 4, 5, 6, 7]
    nodes = {0: [0, 1, 2, 3], 1: [4, 5, 6, 7]}
    assert plan_thread_binding(None, usable, nodes) == [0, 1, 2, 3]        # auto: node 0
    assert plan_thread_binding("auto", [5, 6], nodes) == [5, 6]            # first node we own
    assert plan_thread_binding("auto", [0, 1], {}) == [0, 1]               # no NUMA info
    assert plan_thread_binding("nobind", usable, nodes) is None
    assert plan_thread_binding("2-5", usable, nodes) == [2, 3, 4, 5]
    with pytest.raises(ValueError, match="outside this process's affinity"):
        plan_thread_binding("6-9", usable, nodes)


def test_threads_follow_binding(monkeypatch):
    use_cpu(monkeypatch, "spr")
    no_ipex(monkeypatch)
    cfg = configured()
    assert cfg.extra["cpu_threads_bind"] == [0, 1, 2, 3] and cfg.num_threads == 4
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "4-6")
    cfg = configured()
    assert cfg.extra["cpu_threads_bind"] == [4, 5, 6] and cfg.num_threads == 3
    monkeypatch.setenv("VLLM_CPU_NUM_THREADS", "2")                       # explicit wins
    assert configured().num_threads == 2
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0-99")
    with pytest.raises(ValueError, match="VLLM_CPU_OMP_THREADS_BIND=0-99"):
        configured()


def test_apply_thread_binding_pins_this_process(monkeypatch):
    calls = []
    monkeypatch.setattr(cpu_platform.os, "sched_setaffinity", lambda pid, cores: calls.append(
        (pid, list(cores))))
    threads = torch.get_num_threads()
    try:
        cfg = EngineConfig(model=ModelConfig(model="m"), num_threads=1,
                           extra={"cpu_threads_bind": [0]})
        cpu_platform.apply_thread_binding(cfg)
        assert calls == [(0, [0])] and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)


def test_real_probes_answer():
    nodes = REAL_NUMA_NODES()
    assert all(cpus for cpus in nodes.values())
    assert set(REAL_AFFINITY()) <= {c for cpus in nodes.values() for c in cpus} or not nodes


# ------------------------------------------------------------------------------- IPEX
class FakePagedAttention:
    """Stand-in for ``ipex.llm.modules.PagedAttention`` with IPEX's documented semantics:
    caches [num_blocks, num_kv_heads, block_size, head_size]; causal masking aligned to the
    end of each request's keys."""

    calls: list[str] = []

    @classmethod
    def reshape_and_cache(cls, key, value, key_cache, value_cache, slot_mapping):
        cls.calls.append("reshape_and_cache")
        bs = key_cache.shape[2]
        for i, slot in enumerate(slot_mapping.tolist()):
            key_cache[slot // bs, :, slot % bs] = key[i]
            value_cache[slot // bs, :, slot % bs] = value[i]

    @classmethod
    def flash_attn_varlen_func(cls, out, query, key_cache, value_cache, cu_q, cu_kv, max_q,
                               max_kv, scale, causal, block_tables, alibi, window_left,
                               window_right):
        cls.calls.append("flash_attn_varlen_func")
        assert causal and alibi is None and window_right == -1
        bs, hkv = key_cache.shape[2], key_cache.shape[1]
        for r in range(len(cu_q) - 1):
            q = query[cu_q[r]:cu_q[r + 1]]
            kv_len = int(cu_kv[r + 1] - cu_kv[r])
            blocks = block_tables[r, : -(-kv_len // bs)].long()
            k = key_cache[blocks].permute(0, 2, 1, 3).reshape(-1, hkv, q.shape[-1])[:kv_len]
            v = value_cache[blocks].permute(0, 2, 1, 3).reshape(-1, hkv, q.shape[-1])[:kv_len]
            g = q.shape[1] // hkv
            k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
            scores = torch.einsum("qhd,khd->hqk", q, k) * scale
            qpos = torch.arange(kv_len - q.shape[0], kv_len)[:, None]
            visible = torch.arange(kv_len)[None, :] <= qpos
            if window_left >= 0:
                visible &= torch.arange(kv_len)[None, :] >= qpos - window_left
            scores = scores.masked_fill(~visible, float("-inf"))
            out[cu_q[r]:cu_q[r + 1]] = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v)


def fake_ipex_module():
    def rms_norm(x, w, eps):
        xf = x.float()
        return w * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)

    def add_rms_norm(residual, x, w, bias, eps, add_back):
        total = x + residual
        if add_back:
            residual.copy_(total)
        return rms_norm(total, w, eps)

    functional = types.SimpleNamespace(
        rms_norm=rms_norm, add_rms_norm=add_rms_norm,
        silu_mul=lambda x, y, out=None: torch.nn.functional.silu(x) * y)
    modules = types.SimpleNamespace(PagedAttention=FakePagedAttention)
    return types.SimpleNamespace(__version__="2.13.0+cpu",
                                 llm=types.SimpleNamespace(modules=modules,
                                                           functional=functional))


def test_ipex_status_present_absent_broken(monkeypatch):
    no_ipex(monkeypatch)
    status = ipex.ipex_status()
    assert not status.available and "not installed" in status.reason
    ipex.ipex_status.cache_clear()

    def aborts():   # what IPEX does next to another torch release (it calls os.exit)
        raise AttributeError("module 'os' has no attribute 'exit'")
    monkeypatch.setattr(ipex, "import_ipex", aborts)
    assert "failed to import: AttributeError" in ipex.ipex_status().reason
    ipex.ipex_status.cache_clear()

    old = types.SimpleNamespace(__version__="1.13.0", llm=None)
    monkeypatch.setattr(ipex, "import_ipex", lambda: old)
    assert "lacks PagedAttention" in ipex.ipex_status().reason
    ipex.ipex_status.cache_clear()

    monkeypatch.setattr(ipex, "import_ipex", fake_ipex_module)
    assert ipex.ipex_status() == ipex.IpexStatus(True, "2.13.0+cpu")


def test_ipex_chosen_by_capability_on_x86_only(monkeypatch):
    from vllm_core.plugins import load_general_plugins

    load_general_plugins()
    select = dict(head_size=64, dtype="bfloat16", kv_cache_dtype="auto", block_size=16,
                  sliding_window=None)
    use_cpu(monkeypatch, "spr")
    no_ipex(monkeypatch)
    assert CpuPlatform.attention_backends() == ["cpu_paged", "reference"]
    assert select_attention_backend(CpuPlatform, **select).name == "cpu_paged"
    refused = ipex.IpexPagedAttentionBackend.unsupported_reasons(**select)
    assert "intel-extension-for-pytorch is not installed" in refused[0]
    ipex.ipex_status.cache_clear()
    monkeypatch.setattr(ipex, "import_ipex", fake_ipex_module)
    assert CpuPlatform.attention_backends() == ["ipex_paged", "cpu_paged", "reference"]
    assert select_attention_backend(CpuPlatform, **select).name == "ipex_paged"
    assert configured().extra["cpu_ipex"] is True
    # an unsupported head size moves selection on to the torch backend
    assert select_attention_backend(CpuPlatform, **{**select, "head_size": 48}).name == \
        "cpu_paged"
    use_cpu(monkeypatch, "graviton3")
    assert CpuPlatform.attention_backends() == ["cpu_paged", "reference"]
    assert isinstance(ipex.preferred_layer_ops(), ipex.IpexLayerOps)


@pytest.mark.parametrize("window", [None, 4])
def test_ipex_backend_plumbing_matches_reference(monkeypatch, window):
    """The backend's calls into IPEX (layouts, cu_seqlens, block tables, window) reproduce the
    reference backend on a mixed batch, through the faked IPEX ops."""
    from vllm_core.attention.backend import CommonAttentionMetadata
    from vllm_core.attention.backends.reference import ReferenceAttentionBackend

    monkeypatch.setattr(ipex, "import_ipex", fake_ipex_module)
    FakePagedAttention.calls = []
    h, hkv, d, bs, nb = 4, 2, 32, 4, 12
    g = torch.Generator().manual_seed(0)
    q_lens, ctx = [1, 1, 3], [5, 0, 6]
    seq = [a + b for a, b in zip(q_lens, ctx)]
    table = torch.tensor([[1, 2, 0], [3, 0, 0], [4, 5, 6]])
    qsl = torch.tensor([0, 1, 2, 5])
    pos = torch.cat([torch.arange(c, c + q) for c, q in zip(ctx, q_lens)])
    req = torch.repeat_interleave(torch.arange(3), torch.tensor(q_lens))
    slots = table[req, pos // bs] * bs + pos % bs
    common = CommonAttentionMetadata(
        query_start_loc=qsl, seq_lens=torch.tensor(seq), context_lens=torch.tensor(ctx),
        block_table=table, slot_mapping=slots, query_start_loc_cpu=qsl,
        seq_lens_cpu=torch.tensor(seq), num_reqs=3, num_tokens=5, num_decodes=2,
        max_query_len=3, max_seq_len=9, block_size=bs)
    k_ctx = torch.randn(nb, bs, hkv, d, generator=g)
    v_ctx = torch.randn(nb, bs, hkv, d, generator=g)
    q = torch.randn(5, h, d, generator=g)
    k = torch.randn(5, hkv, d, generator=g)
    v = torch.randn(5, hkv, d, generator=g)
    ref_cache = torch.stack((k_ctx, v_ctx))
    ref_impl = ReferenceAttentionBackend.get_impl_cls()(h, d, d ** -0.5, hkv, window)
    want = ref_impl.forward(q, k, v, ref_cache, ReferenceAttentionBackend.get_builder_cls()(
        bs, torch.device("cpu")).build(common))
    backend = ipex.IpexPagedAttentionBackend
    cache = torch.stack((k_ctx, v_ctx)).permute(0, 1, 3, 2, 4).contiguous()
    assert cache.shape == backend.get_kv_cache_shape(nb, bs, hkv, d)
    impl = backend.get_impl_cls()(h, d, d ** -0.5, hkv, window)
    got = impl.forward(q, k, v, cache, backend.get_builder_cls()(bs, torch.device("cpu"))
                       .build(common))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert FakePagedAttention.calls == ["reshape_and_cache", "flash_attn_varlen_func"]
    # profiling (empty cache) never calls IPEX
    empty = impl.forward(q, k, v, torch.empty(0), backend.get_builder_cls()(
        bs, torch.device("cpu")).build(common))
    assert empty.shape == want.shape and FakePagedAttention.calls[-1] == "flash_attn_varlen_func"


def test_ipex_layer_ops_match_torch_ops(monkeypatch):
    from vllm_core.model_executor.layers.ops import TorchLayerOps

    monkeypatch.setattr(ipex, "import_ipex", fake_ipex_module)
    ops, ref = ipex.IpexLayerOps(), TorchLayerOps()
    x, res, w = torch.randn(3, 8), torch.randn(3, 8), torch.rand(8)
    torch.testing.assert_close(ops.rms_norm(x, w, 1e-6), ref.rms_norm(x, w, 1e-6))
    out, new_res = ops.fused_add_rms_norm(x, res.clone(), w, 1e-6)
    want_out, want_res = ref.fused_add_rms_norm(x, res.clone(), w, 1e-6)
    torch.testing.assert_close(out, want_out)
    torch.testing.assert_close(new_res, want_res)
    y = torch.randn(3, 16)
    torch.testing.assert_close(ops.silu_and_mul(y), ref.silu_and_mul(y))
