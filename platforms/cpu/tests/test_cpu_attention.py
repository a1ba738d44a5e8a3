"""CPU paged attention vs a per-request oracle on mixed batches (decodes + prefill chunks)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vllm_core.attention.backend import CommonAttentionMetadata
from vllm_core_cpu.attention import CpuPagedAttentionBackend


def oracle(q, k_full, v_full, ctx_len, scale, window=None):
    """q [n, H, D]; k/v_full [ctx_len + n, Hkv, D] -> [n, H*D], causal with offset (and keys
    ``> position - window`` only, with a sliding window)."""
    n, h, d = q.shape
    g = h // k_full.shape[1]
    k = k_full.repeat_interleave(g, dim=1).transpose(0, 1)
    v = v_full.repeat_interleave(g, dim=1).transpose(0, 1)
    scores = (q.transpose(0, 1).float() @ k.float().transpose(1, 2)) * scale
    qpos = torch.arange(n)[:, None] + ctx_len
    kpos = torch.arange(k_full.shape[0])[None, :]
    scores = scores.masked_fill(kpos > qpos, float("-inf"))
    if window is not None:
        scores = scores.masked_fill(kpos <= qpos - window, float("-inf"))
    return (F.softmax(scores, -1) @ v.float()).transpose(0, 1).reshape(n, h * d)


def build_case(q_lens, ctx_lens, h, hkv, d, bs, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    num_reqs = len(q_lens)
    seq_lens = [c + q for c, q in zip(ctx_lens, q_lens)]
    blocks_needed = [math.ceil(s / bs) for s in seq_lens]
    num_blocks = sum(blocks_needed) + 3
    perm = (torch.randperm(num_blocks - 1, generator=g) + 1).tolist()   # scattered, no block 0
    tables, it = [], iter(perm)
    for nb in blocks_needed:
        tables.append([next(it) for _ in range(nb)])
    cache = torch.zeros(CpuPagedAttentionBackend.get_kv_cache_shape(num_blocks, bs, hkv, d),
                        dtype=dtype)
    full_k = [torch.randn(s, hkv, d, generator=g).to(dtype) for s in seq_lens]
    full_v = [torch.randn(s, hkv, d, generator=g).to(dtype) for s in seq_lens]
    for r in range(num_reqs):                 # earlier context already in the cache
        for pos in range(ctx_lens[r]):
            blk, off = tables[r][pos // bs], pos % bs
            cache[0, blk, off] = full_k[r][pos]
            cache[1, blk, off] = full_v[r][pos]
    q = [torch.randn(n, h, d, generator=g).to(dtype) for n in q_lens]
    slots = []
    for r in range(num_reqs):
        for pos in range(ctx_lens[r], seq_lens[r]):
            slots.append(tables[r][pos // bs] * bs + pos % bs)
    max_nb = max(blocks_needed)
    bt = torch.zeros(num_reqs, max_nb, dtype=torch.long)
    for r, t in enumerate(tables):
        bt[r, : len(t)] = torch.tensor(t)
    qsl = torch.tensor([0] + list(torch.tensor(q_lens).cumsum(0).tolist()))
    common = CommonAttentionMetadata(
        query_start_loc=qsl, seq_lens=torch.tensor(seq_lens), context_lens=torch.tensor(ctx_lens),
        block_table=bt, slot_mapping=torch.tensor(slots), query_start_loc_cpu=qsl,
        seq_lens_cpu=torch.tensor(seq_lens), num_reqs=num_reqs, num_tokens=sum(q_lens),
        num_decodes=sum(1 for n in q_lens if n == 1), max_query_len=max(q_lens),
        max_seq_len=max(seq_lens), block_size=bs)
    new_k = torch.cat([full_k[r][ctx_lens[r]:] for r in range(num_reqs)])
    new_v = torch.cat([full_v[r][ctx_lens[r]:] for r in range(num_reqs)])
    return common, cache, torch.cat(q), new_k, new_v, q, full_k, full_v


@pytest.mark.parametrize("q_lens,ctx_lens", [
    ([1, 1, 1], [5, 17, 40]),                  # decodes only, different lengths
    ([7], [0]),                                # one first chunk (causal fast path)
    ([1, 1, 9, 4], [3, 30, 0, 0]),             # decodes + two first chunks
    ([1, 6, 13], [20, 16, 5]),                 # chunks with earlier context
])
# head sizes 32/64/128 run the C++ kernel, the others the SDPA fallback
@pytest.mark.parametrize("h,hkv,d", [(4, 4, 16), (6, 2, 40), (8, 1, 8), (6, 2, 64), (8, 1, 128),
                                     (4, 4, 32)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mixed_batch_matches_oracle(q_lens, ctx_lens, h, hkv, d, dtype):
    bs = 8
    common, cache, q, new_k, new_v, qs, full_k, full_v = build_case(q_lens, ctx_lens, h, hkv, d,
                                                                    bs, dtype)
    # decodes must come first in the batch layout
    order = sorted(range(len(q_lens)), key=lambda r: q_lens[r] != 1)
    assert order == list(range(len(q_lens)))
    scale = d ** -0.5
    builder = CpuPagedAttentionBackend.get_builder_cls()(bs, torch.device("cpu"))
    impl = CpuPagedAttentionBackend.get_impl_cls()(h, d, scale, hkv)
    out = impl.forward(q, new_k, new_v, cache, builder.build(common))
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    start = 0
    for r, n in enumerate(q_lens):
        ref = oracle(qs[r], full_k[r], full_v[r], ctx_lens[r], scale)
        torch.testing.assert_close(out[start:start + n].float(), ref, atol=tol, rtol=tol)
        start += n
    # the new K/V landed in the cache at their slots
    flat_k = cache[0].view(-1, hkv, d)
    torch.testing.assert_close(flat_k[common.slot_mapping], new_k)


def test_profiling_with_empty_cache_runs():
    common, _, q, k, v, *_ = build_case([1, 5], [0, 0], 4, 2, 16, 8, torch.float32)
    builder = CpuPagedAttentionBackend.get_builder_cls()(8, torch.device("cpu"))
    impl = CpuPagedAttentionBackend.get_impl_cls()(4, 16, 0.25, 2)
    out = impl.forward(q, k, v, torch.empty(0), builder.build(common))
    assert out.shape == (6, 64) and torch.isfinite(out).all()


def test_kernel_is_built_and_used_for_supported_heads():
    from vllm_core_cpu.kernels import load_kernels

    assert load_kernels(), "the C++ paged-attention kernel did not build"
    impl = CpuPagedAttentionBackend.get_impl_cls()
    assert impl(6, 64, 0.125, 2).use_kernel and not impl(6, 40, 0.125, 2).use_kernel


def test_sdpa_fallback_matches_kernel():
    common, cache, q, k, v, *_ = build_case([1, 1, 9, 4], [3, 30, 0, 12], 6, 2, 64, 8,
                                            torch.float32)
    builder = CpuPagedAttentionBackend.get_builder_cls()(8, torch.device("cpu"))
    impl = CpuPagedAttentionBackend.get_impl_cls()(6, 64, 0.125, 2)
    with_kernel = impl.forward(q, k, v, cache.clone(), builder.build(common))
    impl.use_kernel = False
    fallback = impl.forward(q, k, v, cache.clone(), builder.build(common))
    torch.testing.assert_close(with_kernel, fallback, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("q_lens,ctx_lens", [
    ([1, 1, 9, 4], [3, 30, 0, 0]),             # decodes + first chunks longer than the window
    ([1, 6, 13], [20, 16, 5]),                 # chunks with earlier context
])
# the kernel (64, 256) and the SDPA path (40)
@pytest.mark.parametrize("h,hkv,d", [(6, 2, 64), (6, 2, 40), (4, 1, 256)])
@pytest.mark.parametrize("window", [1, 5])
def test_sliding_window_matches_oracle(q_lens, ctx_lens, h, hkv, d, window):
    """A layer built with a sliding window sees only keys (position - window, position]."""
    common, cache, q, new_k, new_v, qs, full_k, full_v = build_case(q_lens, ctx_lens, h, hkv, d,
                                                                    8, torch.float32)
    scale = d ** -0.5
    builder = CpuPagedAttentionBackend.get_builder_cls()(8, torch.device("cpu"))
    impl = CpuPagedAttentionBackend.get_impl_cls()(h, d, scale, hkv, window)
    assert impl.use_kernel == (d != 40)
    md = builder.build(common)
    out = impl.forward(q, new_k, new_v, cache, md)
    # a global layer of the same step (same metadata) still sees every key
    full = CpuPagedAttentionBackend.get_impl_cls()(h, d, scale, hkv).forward(
        q, new_k, new_v, cache, md)
    start = 0
    for r, n in enumerate(q_lens):
        ref = oracle(qs[r], full_k[r], full_v[r], ctx_lens[r], scale, window)
        torch.testing.assert_close(out[start:start + n], ref, atol=1e-4, rtol=1e-4)
        ref_full = oracle(qs[r], full_k[r], full_v[r], ctx_lens[r], scale)
        torch.testing.assert_close(full[start:start + n], ref_full, atol=1e-4, rtol=1e-4)
        start += n


def fused_and_unfused(impl, q, k, v, cache, common, q_lens, rot, bs):
    """``impl.forward_with_rotary`` into ``cache``'s clone, and the core's torch rotary (fp32,
    rounded to the activation dtype) then ``impl.forward`` into ``cache``: ``(fused output,
    unfused output, the fused run's cache)``."""
    from vllm_core.model_executor.layers.ops import TorchLayerOps
    from vllm_core.model_executor.layers.rotary_embedding import RotaryEmbedding

    d, dtype = q.shape[-1], q.dtype
    rope = RotaryEmbedding(d, rot, 4096, 10000.0, None, TorchLayerOps())
    positions = common.seq_lens_cpu.repeat_interleave(torch.tensor(q_lens)) - torch.cat(
        [torch.arange(x, 0, -1) for x in q_lens])
    builder = CpuPagedAttentionBackend.get_builder_cls()(bs, torch.device("cpu"))
    fused_cache = cache.clone()
    got = impl.forward_with_rotary(q, k, v, fused_cache, builder.build(common), positions,
                                   rope.cos_sin_cache)
    rq, rk = TorchLayerOps().rotary(positions, q.float(), k.float(), rope.cos_sin_cache, d)
    want = impl.forward(rq.to(dtype), rk.to(dtype), v, cache, builder.build(common))
    return got, want, fused_cache


@pytest.mark.parametrize("q_lens,ctx_lens", [
    ([1, 1, 1], [5, 17, 40]),                  # decodes only
    ([1, 6, 13], [20, 16, 5]),                 # decodes + chunks with earlier context
])
@pytest.mark.parametrize("h,hkv,d,rot", [(9, 3, 64, 64), (6, 2, 64, 48), (4, 1, 128, 128)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_rotary_matches_rotary_then_forward(q_lens, ctx_lens, h, hkv, d, rot, dtype):
    """``forward_with_rotary`` (one C++ call: neox rotary of q / k, cache write, attention)
    against the core's torch rotary followed by ``forward``, on strided q / k / v views of one
    fused projection as the decoder hands them; partial rotary leaves the other channels."""
    bs = 8
    common, cache, q, k, v, *_ = build_case(q_lens, ctx_lens, h, hkv, d, bs, dtype, seed=2)
    fused = torch.cat([q.flatten(1), k.flatten(1), v.flatten(1)], dim=1)   # qkv_proj's output
    n = q.shape[0]
    q, k, v = (t.view(n, -1, d) for t in fused.split([h * d, hkv * d, hkv * d], dim=1))
    assert not q.is_contiguous()
    impl = CpuPagedAttentionBackend.get_impl_cls()(h, d, d ** -0.5, hkv)
    assert impl.fuses_rotary
    got, want, fused_cache = fused_and_unfused(impl, q, k, v, cache, common, q_lens, rot, bs)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got.float(), want.float(), atol=tol, rtol=tol)
    torch.testing.assert_close(fused_cache.float(), cache.float(), atol=tol, rtol=tol)


def test_fused_rotary_rejects_a_position_outside_the_cache():
    common, cache, q, k, v, *_ = build_case([1], [3], 4, 2, 64, 8, torch.float32)
    builder = CpuPagedAttentionBackend.get_builder_cls()(8, torch.device("cpu"))
    impl = CpuPagedAttentionBackend.get_impl_cls()(4, 64, 0.125, 2)
    with pytest.raises(RuntimeError, match="outside the rotary cache"):
        impl.forward_with_rotary(q, k, v, cache, builder.build(common), torch.tensor([3]),
                                 torch.zeros(2, 64))
