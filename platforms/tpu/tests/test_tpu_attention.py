"""The TPU plugin's attention backends against the core's reference backend (the oracle).

``xla_paged`` is plain torch, so it runs on the host and on XLA's CPU device; ``pallas`` is
checked with torch_xla's own non-kernel implementation of the ragged paged attention op
(``use_kernel=False``), which validates everything this plugin feeds the kernel (KV layout,
kv_lens, page_indices, cu_q_lens, num_seqs); the Pallas kernel itself needs a real TPU.
"""

from __future__ import annotations

import pytest
import torch

from vllm_core.attention.backend import CommonAttentionMetadata
from vllm_core.attention.backends.reference import ReferenceAttentionBackend
from vllm_core_tpu import attention as tpu_attn
from vllm_core_tpu.attention import (
    PallasAttentionBackend,
    PallasAttentionMetadataBuilder,
    XlaAttentionMetadataBuilder,
    XlaPagedAttentionBackend,
)

H, HKV, D, BS, NB = 4, 2, 16, 4, 24
PAGES = 6                       # pages per request (max_model_len 24)


def make_step(q_lens, ctx_lens, t_pad, r_pad, seed=0):
    """A mixed batch (decodes first) in both metadata forms plus caches holding the context."""
    g = torch.Generator().manual_seed(seed)
    r = len(q_lens)
    seq = [c + q for c, q in zip(ctx_lens, q_lens)]
    perm = torch.randperm(NB - 1, generator=g) + 1                 # block 0 is the null block
    tables, used = [], 0
    for s in seq:
        n = -(-s // BS)
        tables.append(perm[used:used + n].tolist())
        used += n
    table = torch.zeros(r, PAGES, dtype=torch.long)
    for i, row in enumerate(tables):
        table[i, :len(row)] = torch.tensor(row)
    qsl = torch.tensor([0] + list(torch.tensor(q_lens).cumsum(0)), dtype=torch.long)
    positions = torch.cat([torch.arange(c, c + q) for c, q in zip(ctx_lens, q_lens)])
    req = torch.repeat_interleave(torch.arange(r), torch.tensor(q_lens))
    slots = table[req, positions // BS] * BS + positions % BS
    n = int(qsl[-1])
    common = CommonAttentionMetadata(
        query_start_loc=qsl, seq_lens=torch.tensor(seq), context_lens=torch.tensor(ctx_lens),
        block_table=table, slot_mapping=slots, query_start_loc_cpu=qsl,
        seq_lens_cpu=torch.tensor(seq), num_reqs=r, num_tokens=n,
        num_decodes=sum(1 for q in q_lens if q == 1), max_query_len=max(q_lens),
        max_seq_len=max(seq), block_size=BS)
    pad_qsl = torch.full((r_pad + 1,), n, dtype=torch.long)
    pad_qsl[:r + 1] = qsl
    pad_seq = torch.zeros(r_pad, dtype=torch.long)
    pad_seq[:r] = torch.tensor(seq)
    pad_table = torch.zeros(r_pad, PAGES, dtype=torch.long)
    pad_table[:r] = table
    pad_slots = torch.zeros(t_pad, dtype=torch.long)
    pad_slots[:n] = slots
    padded = CommonAttentionMetadata(
        query_start_loc=pad_qsl, seq_lens=pad_seq, context_lens=pad_seq * 0,
        block_table=pad_table, slot_mapping=pad_slots, query_start_loc_cpu=pad_qsl,
        seq_lens_cpu=pad_seq, num_reqs=r, num_tokens=n, num_decodes=common.num_decodes,
        max_query_len=common.max_query_len, max_seq_len=common.max_seq_len, block_size=BS)
    k_all = torch.randn(NB, BS, HKV, D, generator=g)
    v_all = torch.randn(NB, BS, HKV, D, generator=g)
    ref_cache = torch.stack((k_all, v_all))
    tpu_cache = torch.stack((k_all, v_all), dim=3).reshape(NB, BS, 2 * HKV, D)
    q = torch.randn(t_pad, H, D, generator=g)
    k = torch.randn(t_pad, HKV, D, generator=g)
    v = torch.randn(t_pad, HKV, D, generator=g)
    return common, padded, ref_cache, tpu_cache, q, k, v


def reference(common, cache, q, k, v, window=None):
    n = common.num_tokens
    impl = ReferenceAttentionBackend.get_impl_cls()(H, D, D ** -0.5, HKV, window)
    md = ReferenceAttentionBackend.get_builder_cls()(BS, torch.device("cpu")).build(common)
    return impl.forward(q[:n], k[:n], v[:n], cache, md)


def run_tpu(backend, builder_cls, padded, cache, q, k, v, device, window=None):
    impl = backend.get_impl_cls()(H, D, D ** -0.5, HKV, window)
    md = builder_cls(BS, device).build(padded)
    return impl.forward(q.to(device), k.to(device), v.to(device), cache, md)


BATCHES = [([1, 1, 5, 3], [6, 0, 4, 0]), ([1], [9]), ([7], [0]), ([1, 2, 8], [13, 3, 7])]


@pytest.mark.parametrize("q_lens,ctx_lens", BATCHES)
@pytest.mark.parametrize("window", [None, 3])
def test_xla_paged_matches_reference_on_host(q_lens, ctx_lens, window):
    common, padded, ref_cache, cache, q, k, v = make_step(q_lens, ctx_lens, t_pad=32, r_pad=4)
    want = reference(common, ref_cache, q, k, v, window)
    got = run_tpu(XlaPagedAttentionBackend, XlaAttentionMetadataBuilder, padded, cache, q, k, v,
                  torch.device("cpu"), window)
    n = common.num_tokens
    assert got.shape == (32, H * D)
    torch.testing.assert_close(got[:n], want, rtol=1e-5, atol=1e-5)
    assert torch.isfinite(got).all()                      # padding rows stay finite
    # the cache now holds the new K/V at their slots, interleaved like the reference's
    keys = cache.view(-1, 2 * HKV, D)[common.slot_mapping]
    torch.testing.assert_close(keys[:, 0::2], k[:n])
    torch.testing.assert_close(keys[:, 1::2], v[:n])


def test_profiling_forward_attends_within_each_request():
    common, padded, ref_cache, _cache, q, k, v = make_step([3, 5], [0, 0], t_pad=16, r_pad=2)
    empty = torch.empty(0)
    want = reference(common, empty, q, k, v)
    got = run_tpu(XlaPagedAttentionBackend, XlaAttentionMetadataBuilder, padded, empty, q, k, v,
                  torch.device("cpu"))
    torch.testing.assert_close(got[:8], want, rtol=1e-5, atol=1e-5)


def test_xla_paged_on_the_xla_device():
    import torch_xla

    dev = torch_xla.device()
    common, padded, ref_cache, cache, q, k, v = make_step(*BATCHES[0], t_pad=16, r_pad=4)
    want = reference(common, ref_cache, q, k, v)
    xla_cache = cache.to(dev)
    got = run_tpu(XlaPagedAttentionBackend, XlaAttentionMetadataBuilder, padded, xla_cache,
                  q, k, v, dev)
    torch_xla.sync()
    torch.testing.assert_close(got.cpu()[:common.num_tokens], want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(xla_cache.cpu().view(-1, 2 * HKV, D)[common.slot_mapping][:, 0::2],
                               k[:common.num_tokens])


@pytest.mark.parametrize("q_lens,ctx_lens", BATCHES)
def test_pallas_inputs_drive_the_ragged_op(q_lens, ctx_lens):
    """torch_xla's ragged_paged_attention (non-kernel path) on what we feed the kernel."""
    common, padded, ref_cache, cache, q, k, v = make_step(q_lens, ctx_lens, t_pad=32, r_pad=4)
    want = reference(common, ref_cache, q, k, v)

    class HostPallasBuilder(PallasAttentionMetadataBuilder):
        use_kernel = False

    got = run_tpu(PallasAttentionBackend, HostPallasBuilder, padded, cache, q, k, v,
                  torch.device("cpu"))
    n = common.num_tokens
    torch.testing.assert_close(got[:n], want, rtol=1e-5, atol=1e-5)
    inputs = tpu_attn.pallas_inputs(padded)
    assert inputs["num_seqs"].tolist() == [len(q_lens)]
    assert inputs["page_indices"].shape == (4, PAGES)
    assert inputs["cu_q_lens"][-1] == n and inputs["kv_lens"].dtype == torch.int32


def test_pallas_refuses_off_tpu_and_selection_falls_back(monkeypatch):
    from vllm_core.attention.selector import select_attention_backend
    from vllm_core.plugins import load_general_plugins
    from vllm_core_tpu.platform import TpuPlatform

    load_general_plugins()
    monkeypatch.setattr(tpu_attn.runtime, "pjrt_device_type", lambda: "CPU")
    reasons = PallasAttentionBackend.unsupported_reasons(
        head_size=64, dtype="bfloat16", kv_cache_dtype="auto", block_size=16,
        sliding_window=None)
    assert reasons == ["the ragged paged attention kernel needs a TPU (the PJRT device is CPU)"]
    chosen = select_attention_backend(TpuPlatform, head_size=64, dtype="bfloat16",
                                      kv_cache_dtype="auto", block_size=16, sliding_window=None)
    assert chosen is XlaPagedAttentionBackend
    monkeypatch.setattr(tpu_attn.runtime, "pjrt_device_type", lambda: "TPU")
    monkeypatch.setattr(tpu_attn.runtime, "pallas_available", lambda: True)
    chosen = select_attention_backend(TpuPlatform, head_size=64, dtype="bfloat16",
                                      kv_cache_dtype="auto", block_size=16, sliding_window=None)
    assert chosen is PallasAttentionBackend
    monkeypatch.setattr(tpu_attn.runtime, "pallas_available", lambda: False)
    assert "JAX is not installed" in PallasAttentionBackend.unsupported_reasons(
        head_size=64, dtype="bfloat16", kv_cache_dtype="auto", block_size=16,
        sliding_window=None)[0]
    with pytest.raises(ValueError, match="dtype float16 not in"):
        select_attention_backend(TpuPlatform, head_size=64, dtype="float16",
                                 kv_cache_dtype="auto", block_size=16, sliding_window=None)
