"""The reference backend against a per-request loop written straight from the definition."""

from __future__ import annotations

import pytest
import torch

from vllm_core.attention.backends.reference import ReferenceAttentionBackend as Backend
from vllm_core.model_executor.batch_utils import make_batch_layout

BS = 4


def naive_attention(q, k_ctx, v_ctx, context_len, scale, window=None):
    """q [n, H, D] at positions context_len.., k/v_ctx [S, Hk, D] for positions 0..S-1."""
    group = q.shape[1] // k_ctx.shape[1]
    out = torch.empty_like(q)
    for i in range(q.shape[0]):
        pos = context_len + i
        lo = 0 if window is None else max(0, pos - window + 1)
        for h in range(q.shape[1]):
            keys = k_ctx[lo:pos + 1, h // group]
            weights = torch.softmax((keys @ q[i, h]) * scale, dim=0)
            out[i, h] = weights @ v_ctx[lo:pos + 1, h // group]
    return out.reshape(q.shape[0], -1)


def make_case(context_lens, query_lens, heads=6, kv_heads=2, head=40, dtype=torch.float32,
              block_ids=None, seed=0):
    gen = torch.Generator().manual_seed(seed)
    layout = make_batch_layout(context_lens, query_lens, BS, block_ids=block_ids)
    seq_lens = [c + q for c, q in zip(context_lens, query_lens, strict=True)]
    full_k = [torch.randn(s, kv_heads, head, generator=gen).to(dtype) for s in seq_lens]
    full_v = [torch.randn(s, kv_heads, head, generator=gen).to(dtype) for s in seq_lens]
    q = torch.randn(sum(query_lens), heads, head, generator=gen).to(dtype)
    cache = torch.zeros(Backend.get_kv_cache_shape(layout.num_blocks + 2, BS, kv_heads, head),
                        dtype=dtype)
    for r, c in enumerate(context_lens):        # pre-fill the cached context
        for p in range(c):
            blk = layout.block_ids[r][p // BS]
            cache[0, blk, p % BS] = full_k[r][p]
            cache[1, blk, p % BS] = full_v[r][p]
    new_k = torch.cat([full_k[r][c:] for r, c in enumerate(context_lens)])
    new_v = torch.cat([full_v[r][c:] for r, c in enumerate(context_lens)])
    return layout, q, new_k, new_v, cache, full_k, full_v


def run(layout, q, k, v, cache, heads, kv_heads, head, window=None):
    impl = Backend.get_impl_cls()(heads, head, head ** -0.5, kv_heads, window)
    md = Backend.get_builder_cls()(BS, torch.device("cpu")).build(layout.metadata)
    return impl.forward(q, k, v, cache, md)


@pytest.mark.parametrize("window", [None, 3])
@pytest.mark.parametrize("heads,kv_heads,head", [(6, 2, 40), (4, 4, 16), (8, 1, 80)])
def test_mixed_batch_matches_naive(heads, kv_heads, head, window):
    # two decodes first, then a prefill chunk with context, then a fresh prompt
    context_lens, query_lens = [5, 9, 6, 0], [1, 1, 7, 3]
    blocks = [[4, 1], [9, 2, 7], [3, 8, 6, 12], [5]]
    layout, q, k, v, cache, fk, fv = make_case(context_lens, query_lens, heads, kv_heads, head,
                                               block_ids=blocks)
    assert layout.metadata.num_decodes == 2
    out = run(layout, q, k, v, cache, heads, kv_heads, head, window)
    assert out.shape == (sum(query_lens), heads * head)
    starts = [0, 1, 2, 9]
    for r, (c, n) in enumerate(zip(context_lens, query_lens, strict=True)):
        ref = naive_attention(q[starts[r]:starts[r] + n], fk[r], fv[r], c, head ** -0.5, window)
        torch.testing.assert_close(out[starts[r]:starts[r] + n], ref, atol=1e-5, rtol=1e-5)


def test_new_kv_written_at_slot_mapping():
    layout, q, k, v, cache, fk, fv = make_case([3, 0], [2, 5], 4, 2, 8)
    run(layout, q, k, v, cache, 4, 2, 8)
    flat_k = cache[0].reshape(-1, 2, 8)
    flat_v = cache[1].reshape(-1, 2, 8)
    torch.testing.assert_close(flat_k[layout.metadata.slot_mapping.long()], k)
    torch.testing.assert_close(flat_v[layout.metadata.slot_mapping.long()], v)
    # every position of request 0 (cached + new) reads back through its block table
    for p in range(5):
        blk = layout.block_ids[0][p // BS]
        torch.testing.assert_close(cache[0, blk, p % BS], fk[0][p])


def test_empty_cache_profiling_attends_to_new_tokens_only():
    layout, q, k, v, _, fk, fv = make_case([0, 0], [6, 3], 4, 2, 8)
    out = run(layout, q, k, v, torch.empty(0), 4, 2, 8)
    torch.testing.assert_close(out[:6], naive_attention(q[:6], fk[0], fv[0], 0, 8 ** -0.5))
    torch.testing.assert_close(out[6:], naive_attention(q[6:], fk[1], fv[1], 0, 8 ** -0.5))


def test_bfloat16_and_padded_token_rows():
    layout, q, k, v, cache, fk, fv = make_case([2, 0], [1, 4], 4, 2, 16, dtype=torch.bfloat16)
    pad = 3     # rows beyond num_tokens (e.g. graph padding) come back as zeros
    q_p = torch.cat([q, torch.randn(pad, 4, 16).bfloat16()])
    k_p = torch.cat([k, torch.randn(pad, 2, 16).bfloat16()])
    v_p = torch.cat([v, torch.randn(pad, 2, 16).bfloat16()])
    out = run(layout, q_p, k_p, v_p, cache, 4, 2, 16)
    assert out.dtype == torch.bfloat16 and out.shape == (8, 64)
    assert torch.all(out[5:] == 0)
    ref = naive_attention(q[1:].float(), fk[1].float(), fv[1].float(), 0, 0.25)
    torch.testing.assert_close(out[1:5].float(), ref, atol=2e-2, rtol=2e-2)


def test_backend_declarations():
    assert Backend.name == "reference"
    assert Backend.get_kv_cache_shape(10, 16, 2, 64) == (2, 10, 16, 2, 64)
    assert Backend.unsupported_reasons(head_size=40, dtype="bfloat16", kv_cache_dtype="auto",
                                       block_size=5, sliding_window=128) == []
    assert Backend.unsupported_reasons(head_size=40, dtype="int8", kv_cache_dtype="auto",
                                       block_size=16, sliding_window=None)
