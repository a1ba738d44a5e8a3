"""The example backend against a dense oracle: full causal attention over whole sequences."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout too

from vllm_core.attention.backend import CommonAttentionMetadata  # noqa: E402
from vllm_core_example_vendor.attention import ExamplePagedAttentionBackend  # noqa: E402

BLOCK = 4
HEADS, KV_HEADS, HEAD = 4, 2, 8


def dense(q_full, k_full, v_full, window=None):
    """Causal attention of every position of one sequence: [S, H*D]."""
    s = q_full.shape[0]
    pos = torch.arange(s)
    mask = pos[None, :] <= pos[:, None]
    if window is not None:
        mask &= pos[None, :] > pos[:, None] - window
    k = k_full.transpose(0, 1).repeat_interleave(HEADS // KV_HEADS, 0)
    v = v_full.transpose(0, 1).repeat_interleave(HEADS // KV_HEADS, 0)
    o = F.scaled_dot_product_attention(q_full.transpose(0, 1), k, v, attn_mask=mask,
                                       scale=1 / math.sqrt(HEAD))
    return o.transpose(0, 1).reshape(s, HEADS * HEAD)


def make_step(context_lens, new_lens, num_blocks=32, seed=0):
    """Sequences, a cache holding their contexts, and the metadata of one step (decodes first)."""
    g = torch.Generator().manual_seed(seed)
    seqs = []
    for c, n in zip(context_lens, new_lens, strict=True):
        s = c + n
        seqs.append((torch.randn(s, HEADS, HEAD, generator=g),
                     torch.randn(s, KV_HEADS, HEAD, generator=g),
                     torch.randn(s, KV_HEADS, HEAD, generator=g)))
    cache = torch.zeros(ExamplePagedAttentionBackend.get_kv_cache_shape(num_blocks, BLOCK,
                                                                        KV_HEADS, HEAD))
    max_blocks = max(-(-(c + n) // BLOCK) for c, n in zip(context_lens, new_lens, strict=True))
    table = torch.zeros(len(seqs), max_blocks, dtype=torch.int32)
    free = list(range(num_blocks - 1, 0, -1))          # block 0 is the null block; scrambled
    slots, q, k, v = [], [], [], []
    for r, ((qs, ks, vs), c, n) in enumerate(zip(seqs, context_lens, new_lens, strict=True)):
        for b in range(-(-(c + n) // BLOCK)):
            table[r, b] = free.pop(0 if b % 2 else -1)
        for p in range(c + n):
            slot = int(table[r, p // BLOCK]) * BLOCK + p % BLOCK
            if p < c:                                   # already cached context
                cache[0].view(-1, KV_HEADS, HEAD)[slot] = ks[p]
                cache[1].view(-1, KV_HEADS, HEAD)[slot] = vs[p]
            else:
                slots.append(slot)
        q.append(qs[c:])
        k.append(ks[c:])
        v.append(vs[c:])
    qsl = torch.tensor([0, *torch.tensor(new_lens).cumsum(0).tolist()], dtype=torch.int32)
    seq_lens = torch.tensor([c + n for c, n in zip(context_lens, new_lens, strict=True)],
                            dtype=torch.int32)
    common = CommonAttentionMetadata(
        query_start_loc=qsl, seq_lens=seq_lens, context_lens=torch.tensor(context_lens),
        block_table=table, slot_mapping=torch.tensor(slots, dtype=torch.int64),
        query_start_loc_cpu=qsl, seq_lens_cpu=seq_lens, num_reqs=len(seqs),
        num_tokens=sum(new_lens), num_decodes=sum(1 for n in new_lens if n == 1),
        max_query_len=max(new_lens), max_seq_len=int(seq_lens.max()), block_size=BLOCK)
    return seqs, cache, common, torch.cat(q), torch.cat(k), torch.cat(v)


def run(common, cache, q, k, v, window=None):
    backend = ExamplePagedAttentionBackend
    meta = backend.get_builder_cls()(BLOCK, torch.device("cpu")).build(common)
    impl = backend.get_impl_cls()(HEADS, HEAD, 1 / math.sqrt(HEAD), KV_HEADS,
                                  sliding_window=window)
    return impl.forward(q, k, v, cache, meta)


@pytest.mark.parametrize("window", [None, 5])
def test_mixed_batch_matches_dense_attention(window):
    # two decodes (contexts 5 and 17), a prefill chunk after 8 cached tokens, a fresh prompt
    context, new = [5, 17, 8, 0], [1, 1, 6, 4]
    seqs, cache, common, q, k, v = make_step(context, new)
    out = run(common, cache, q, k, v, window)
    assert out.shape == (sum(new), HEADS * HEAD)
    start = 0
    for (qs, ks, vs), c, n in zip(seqs, context, new, strict=True):
        expected = dense(qs, ks, vs, window)[c:]
        torch.testing.assert_close(out[start:start + n], expected, atol=1e-5, rtol=1e-5)
        start += n


def test_new_tokens_are_written_at_slot_mapping():
    seqs, cache, common, q, k, v = make_step([3, 0], [1, 5])
    run(common, cache, q, k, v)
    flat_k = cache[0].view(-1, KV_HEADS, HEAD)
    flat_v = cache[1].view(-1, KV_HEADS, HEAD)
    torch.testing.assert_close(flat_k[common.slot_mapping], k)
    torch.testing.assert_close(flat_v[common.slot_mapping], v)
    assert flat_k[:BLOCK].abs().sum() == 0, "the null block 0 must stay untouched"


def test_profiling_with_empty_cache_attends_to_new_tokens_only():
    seqs, _cache, common, q, k, v = make_step([0, 0], [3, 5])
    out = run(common, torch.empty(0), q, k, v)
    torch.testing.assert_close(out[:3], dense(*seqs[0]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[3:], dense(*seqs[1]), atol=1e-5, rtol=1e-5)


def test_backend_declares_what_it_refuses():
    reasons = ExamplePagedAttentionBackend.unsupported_reasons(
        head_size=64, dtype="float16", kv_cache_dtype="fp8", block_size=16, sliding_window=None)
    assert any("float16" in r for r in reasons) and any("fp8" in r for r in reasons)
    assert ExamplePagedAttentionBackend.unsupported_reasons(
        head_size=64, dtype="bfloat16", kv_cache_dtype="auto", block_size=16,
        sliding_window=4096) == []
