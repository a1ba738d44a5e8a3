"""Triton kernels and the "triton" attention backend against torch / HF references.

Without a GPU the kernels run under ``TRITON_INTERPRET=1`` (set by conftest.py) on small shapes;
with one (``torch.cuda.is_available()``) the same tests run on larger shapes and fp16 too.
Run from the repository root: ``PYTHONPATH=.:platforms/cuda pytest platforms/cuda/tests/test_kernels.py``.
"""

from __future__ import annotations

import math

import pytest
import torch
from vllm_core_triton.attention import TritonAttentionBackend
from vllm_core_triton.kernels import (
    fused_add_rms_norm,
    paged_attention,
    plan_launch,
    reshape_and_cache,
    rms_norm,
    rotary_embedding,
    silu_and_mul,
)

from vllm_core.attention.backend import CommonAttentionMetadata

ON_GPU = torch.cuda.is_available()
DEVICE = torch.device("cuda" if ON_GPU else "cpu")
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# Triton's interpreter computes tl.dot on bfloat16's raw bits (it documents no bf16 support,
# triton-lang/triton#11584), so bf16 attention runs on the GPU only; fp16 covers the
# low-precision path of the kernel under the interpreter.
ATTN_DTYPES = DTYPES if ON_GPU else [torch.float32, torch.float16]
LOW = torch.bfloat16 if ON_GPU else torch.float16
TOL = {torch.float32: 2e-4, torch.bfloat16: 2e-2, torch.float16: 4e-3}


# ------------------------------------------------------------------------ paged batch helpers
def _batch(q_lens: list[int], ctx_lens: list[int], block_size: int, num_blocks: int,
           gen: torch.Generator) -> dict:
    """Block tables over randomly scattered blocks (never block 0), padded with 0."""
    seq_lens = [q + c for q, c in zip(q_lens, ctx_lens, strict=True)]
    need = [math.ceil(s / block_size) for s in seq_lens]
    if sum(need) > num_blocks - 1:
        raise ValueError("test batch needs more blocks than the cache has")
    perm = (torch.randperm(num_blocks - 1, generator=gen) + 1).tolist()
    table = torch.zeros(len(q_lens), max(need), dtype=torch.int64)
    slots = []
    for r, n in enumerate(need):
        table[r, :n] = torch.tensor(perm[:n])
        perm = perm[n:]
        pos = torch.arange(ctx_lens[r], seq_lens[r])
        slots.append(table[r, pos // block_size] * block_size + pos % block_size)
    qsl = torch.tensor([0] + q_lens).cumsum(0)
    return dict(query_start_loc=qsl, seq_lens=torch.tensor(seq_lens), block_table=table,
                slot_mapping=torch.cat(slots), context_lens=torch.tensor(ctx_lens))


def _ref_attention(query: torch.Tensor, kv_cache: torch.Tensor, b: dict, scale: float,
                   sliding_window: int | None = None) -> torch.Tensor:
    """Straightforward float64 paged attention over the same inputs."""
    num_heads = query.shape[1]
    block_size = kv_cache.shape[2]
    out = torch.empty(query.shape, dtype=torch.float64)
    qsl, seq_lens = b["query_start_loc"].tolist(), b["seq_lens"].tolist()
    for r in range(len(seq_lens)):
        qs, qe, seq = qsl[r], qsl[r + 1], seq_lens[r]
        pos = torch.arange(seq)
        blocks = b["block_table"][r, pos // block_size]
        k = kv_cache[0].cpu()[blocks, pos % block_size].double()
        v = kv_cache[1].cpu()[blocks, pos % block_size].double()
        gqa = num_heads // k.shape[1]
        k, v = k.repeat_interleave(gqa, 1), v.repeat_interleave(gqa, 1)
        q = query[qs:qe].cpu().double()
        s = torch.einsum("qhd,khd->hqk", q, k) * scale
        qpos = seq - (qe - qs) + torch.arange(qe - qs)
        allowed = pos[None, :] <= qpos[:, None]
        if sliding_window:
            allowed &= qpos[:, None] - pos[None, :] < sliding_window
        s = s.masked_fill(~allowed, float("-inf"))
        out[qs:qe] = torch.einsum("hqk,khd->qhd", s.softmax(-1), v)
    return out


def _rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out = out.cpu().double()
    assert not out.isnan().any(), "NaN in output"
    return ((out - ref).norm() / ref.norm()).item()


def _dev(b: dict) -> dict:
    return {k: v.to(DEVICE) for k, v in b.items()}


# Mixed batches: decodes first (q_len 1), then chunks (with and without prior context).
if ON_GPU:
    MIXED = ([1] * 24 + [300, 77, 513], [0, 1, 15, 16, 17, 255, 1000, 2047] * 3 + [0, 1200, 333])
    NUM_KV_HEADS, HEAD_SIZES, BLOCK_SIZES = 8, [64, 128, 80], [16, 32]
else:
    MIXED = ([1, 1, 1, 7, 13], [0, 17, 40, 0, 21])
    NUM_KV_HEADS, HEAD_SIZES, BLOCK_SIZES = 2, [64], [16]


# GPU: every (dtype, split) pair; interpreter: fp32 unsplit and fp16 split, to stay fast.
MIXED_CASES = ([(d, k) for d in ATTN_DTYPES for k in (None, 3)] if ON_GPU
               else [(torch.float32, None), (torch.float16, 3)])


@pytest.mark.parametrize("dtype,num_splits", MIXED_CASES)
@pytest.mark.parametrize("gqa", [1, 4, 8])
def test_paged_attention_mixed_batch(dtype: torch.dtype, gqa: int, num_splits: int | None):
    gen = torch.Generator().manual_seed(gqa * 7 + (num_splits or 0))
    head_size, block_size = HEAD_SIZES[0], BLOCK_SIZES[0]
    q_lens, ctx_lens = MIXED
    num_blocks = 2 + sum(math.ceil((q + c) / block_size) for q, c in zip(q_lens, ctx_lens, strict=True))
    b = _batch(q_lens, ctx_lens, block_size, num_blocks, gen)
    num_heads = NUM_KV_HEADS * gqa
    query = torch.randn(sum(q_lens), num_heads, head_size, generator=gen).to(dtype)
    kv_cache = torch.randn(2, num_blocks, block_size, NUM_KV_HEADS, head_size,
                           generator=gen).to(dtype)
    scale = head_size ** -0.5
    launch = plan_launch(num_tokens=sum(q_lens), num_reqs=len(q_lens),
                         max_query_len=max(q_lens),
                         max_seq_len=max(q + c for q, c in zip(q_lens, ctx_lens, strict=True)),
                         num_kv_heads=NUM_KV_HEADS, num_queries_per_kv=gqa,
                         head_size=head_size, num_compute_units=132 if ON_GPU else 1,
                         num_splits=num_splits, tile_n=None if ON_GPU else 16)
    kv_dev, bd = kv_cache.to(DEVICE), _dev(b)
    out = paged_attention(query.to(DEVICE), kv_dev[0], kv_dev[1],
                          query_start_loc=bd["query_start_loc"], seq_lens=bd["seq_lens"],
                          block_table=bd["block_table"], scale=scale, launch=launch)
    assert _rel_err(out, _ref_attention(query, kv_cache, b, scale)) < TOL[dtype]


@pytest.mark.parametrize("head_size", HEAD_SIZES[1:] or [96])
@pytest.mark.parametrize("block_size", BLOCK_SIZES[-1:])
def test_paged_attention_head_and_block_sizes(head_size: int, block_size: int):
    """Other head sizes (including a padded non-power of two) and page sizes, GQA 4."""
    gen = torch.Generator().manual_seed(head_size + block_size)
    q_lens, ctx_lens = MIXED
    num_blocks = 3 + sum(math.ceil((q + c) / block_size) for q, c in zip(q_lens, ctx_lens, strict=True))
    b = _batch(q_lens, ctx_lens, block_size, num_blocks, gen)
    num_heads = NUM_KV_HEADS * 4
    query = torch.randn(sum(q_lens), num_heads, head_size, generator=gen).to(LOW)
    kv_cache = torch.randn(2, num_blocks, block_size, NUM_KV_HEADS, head_size,
                           generator=gen).to(LOW)
    launch = plan_launch(num_tokens=sum(q_lens), num_reqs=len(q_lens),
                         max_query_len=max(q_lens), max_seq_len=max(b["seq_lens"].tolist()),
                         num_kv_heads=NUM_KV_HEADS, num_queries_per_kv=4, head_size=head_size,
                         num_compute_units=132 if ON_GPU else 1, num_splits=2,
                         tile_n=None if ON_GPU else 32)
    kv_dev, bd = kv_cache.to(DEVICE), _dev(b)
    out = paged_attention(query.to(DEVICE), kv_dev[0], kv_dev[1],
                          query_start_loc=bd["query_start_loc"], seq_lens=bd["seq_lens"],
                          block_table=bd["block_table"], scale=0.1, launch=launch)
    assert _rel_err(out, _ref_attention(query, kv_cache, b, 0.1)) < TOL[LOW]


@pytest.mark.parametrize("num_splits", [None, 4])
def test_paged_attention_decode_only_and_sliding_window(num_splits: int | None):
    gen = torch.Generator().manual_seed(5)
    block_size, head_size, gqa = BLOCK_SIZES[0], HEAD_SIZES[0], 4
    ctx_lens = [0, 3, 31, 64, 100] if not ON_GPU else [0, 3, 31, 64, 100, 4095] * 20
    q_lens = [1] * len(ctx_lens)
    num_blocks = 2 + sum(math.ceil((c + 1) / block_size) for c in ctx_lens)
    b = _batch(q_lens, ctx_lens, block_size, num_blocks, gen)
    query = torch.randn(len(q_lens), NUM_KV_HEADS * gqa, head_size, generator=gen)
    kv_cache = torch.randn(2, num_blocks, block_size, NUM_KV_HEADS, head_size, generator=gen)
    kv_dev, bd = kv_cache.to(DEVICE), _dev(b)
    for window in (None, 24):
        launch = plan_launch(num_tokens=len(q_lens), num_reqs=len(q_lens), max_query_len=1,
                             max_seq_len=max(ctx_lens) + 1, num_kv_heads=NUM_KV_HEADS,
                             num_queries_per_kv=gqa, head_size=head_size,
                             num_compute_units=132 if ON_GPU else 1, num_splits=num_splits,
                             tile_n=None if ON_GPU else 16)
        assert launch.block_q == 1
        out = paged_attention(query.to(DEVICE), kv_dev[0], kv_dev[1],
                              query_start_loc=bd["query_start_loc"], seq_lens=bd["seq_lens"],
                              block_table=bd["block_table"], scale=0.125, launch=launch,
                              sliding_window=window)
        ref = _ref_attention(query, kv_cache, b, 0.125, sliding_window=window)
        assert _rel_err(out, ref) < TOL[torch.float32]


def test_reshape_and_cache_scatters_and_skips_padding():
    gen = torch.Generator().manual_seed(3)
    num_blocks, block_size, kvh, head = 9, 16, 3, 80
    kv_cache = torch.randn(2, num_blocks, block_size, kvh, head, generator=gen)
    before = kv_cache.clone()
    slots = torch.tensor([17, 16, 5, -1, 140, 3])
    # key/value as strided views of one fused buffer, like a QKV projection's output
    fused = torch.randn(len(slots), 2 * kvh * head + 8, generator=gen)
    key = fused[:, : kvh * head].view(-1, kvh, head)
    value = fused[:, kvh * head: 2 * kvh * head].view(-1, kvh, head)
    cache_dev = kv_cache.to(DEVICE)
    reshape_and_cache(key.to(DEVICE), value.to(DEVICE), cache_dev, slots.to(DEVICE))
    expected = before.clone()
    for t, s in enumerate(slots.tolist()):
        if s >= 0:
            expected[0, s // block_size, s % block_size] = key[t]
            expected[1, s // block_size, s % block_size] = value[t]
    assert torch.equal(cache_dev.cpu(), expected)


def _common(b: dict, block_size: int) -> CommonAttentionMetadata:
    q_lens = (b["query_start_loc"][1:] - b["query_start_loc"][:-1]).tolist()
    bd = _dev(b)
    return CommonAttentionMetadata(
        query_start_loc=bd["query_start_loc"], seq_lens=bd["seq_lens"],
        context_lens=bd["context_lens"], block_table=bd["block_table"],
        slot_mapping=bd["slot_mapping"], query_start_loc_cpu=b["query_start_loc"],
        seq_lens_cpu=b["seq_lens"], num_reqs=len(q_lens), num_tokens=sum(q_lens),
        num_decodes=sum(1 for q in q_lens if q == 1), max_query_len=max(q_lens),
        max_seq_len=int(b["seq_lens"].max()), block_size=block_size)


def _backend_case(gen: torch.Generator, gqa: int, dtype: torch.dtype) -> tuple:
    """A mixed batch for the Triton backend: (batch, kv_cache, query [T, H, D], key, value)."""
    block_size, head_size = BLOCK_SIZES[0], HEAD_SIZES[0]
    q_lens, ctx_lens = MIXED
    num_blocks = 4 + sum(math.ceil((q + c) / block_size)
                         for q, c in zip(q_lens, ctx_lens, strict=True))
    b = _batch(q_lens, ctx_lens, block_size, num_blocks, gen)
    shape = TritonAttentionBackend.get_kv_cache_shape(num_blocks, block_size, NUM_KV_HEADS,
                                                      head_size)
    kv_cache = torch.randn(shape, generator=gen).to(dtype)
    T = sum(q_lens)
    query = torch.randn(T, NUM_KV_HEADS * gqa, head_size, generator=gen).to(dtype)
    key = torch.randn(T, NUM_KV_HEADS, head_size, generator=gen).to(dtype)
    value = torch.randn(T, NUM_KV_HEADS, head_size, generator=gen).to(dtype)
    return b, kv_cache, query, key, value


@pytest.mark.parametrize("dtype", [LOW])
def test_triton_backend_forward_writes_then_attends(dtype: torch.dtype):
    gen = torch.Generator().manual_seed(11)
    block_size, head_size, gqa = BLOCK_SIZES[0], HEAD_SIZES[0], 4
    num_heads = NUM_KV_HEADS * gqa
    q_lens, ctx_lens = MIXED
    b, kv_cache, query, key, value = _backend_case(gen, gqa, dtype)
    T = sum(q_lens)
    query = query.reshape(T, num_heads * head_size)
    builder = TritonAttentionBackend.get_builder_cls()(block_size, DEVICE)
    md = builder.build(_common(b, block_size))
    impl = TritonAttentionBackend.get_impl_cls()(num_heads, head_size, head_size ** -0.5,
                                                NUM_KV_HEADS)
    cache_dev = kv_cache.to(DEVICE)
    out = impl.forward(query.to(DEVICE), key.to(DEVICE), value.to(DEVICE), cache_dev, md)
    assert out.shape == (T, num_heads * head_size) and out.dtype == dtype
    slots = b["slot_mapping"]
    expected = kv_cache.clone()
    expected[0].view(-1, NUM_KV_HEADS, head_size)[slots] = key
    expected[1].view(-1, NUM_KV_HEADS, head_size)[slots] = value
    assert torch.equal(cache_dev.cpu(), expected)
    ref = _ref_attention(query.view(T, num_heads, head_size), expected, b, head_size ** -0.5)
    assert _rel_err(out.view(T, num_heads, head_size), ref) < TOL[dtype]

    # memory profiling: empty cache, each chunk attends to itself alone
    empty = torch.empty(0, device=DEVICE)
    out2 = impl.forward(query.to(DEVICE), key.to(DEVICE), value.to(DEVICE), empty,
                        builder.build(_common(b, block_size)))
    qsl = b["query_start_loc"].tolist()
    for r in range(len(q_lens)):
        qs, qe = qsl[r], qsl[r + 1]
        q = query[qs:qe].view(-1, num_heads, head_size).double().transpose(0, 1)
        k = key[qs:qe].double().repeat_interleave(gqa, 1).transpose(0, 1)
        v = value[qs:qe].double().repeat_interleave(gqa, 1).transpose(0, 1)
        ref_r = torch.nn.functional.scaled_dot_product_attention(
            q, k, v, is_causal=True, scale=head_size ** -0.5).transpose(0, 1)
        assert _rel_err(out2[qs:qe].view(-1, num_heads, head_size), ref_r) < TOL[dtype]


def test_triton_backend_fused_rotary_equals_rotary_then_forward():
    gen = torch.Generator().manual_seed(13)
    block_size, head_size, gqa = BLOCK_SIZES[0], HEAD_SIZES[0], 2
    num_heads = NUM_KV_HEADS * gqa
    b, kv_cache, query, key, value = _backend_case(gen, gqa, LOW)
    T = query.shape[0]
    positions = torch.randint(0, 256, (T,), generator=gen).to(DEVICE)
    cache = _cos_sin_cache(256, head_size).to(DEVICE)
    builder = TritonAttentionBackend.get_builder_cls()(block_size, DEVICE)
    impl = TritonAttentionBackend.get_impl_cls()(num_heads, head_size, head_size ** -0.5,
                                                NUM_KV_HEADS)
    assert impl.fuses_rotary
    for kv in (kv_cache, torch.empty(0)):                           # and memory profiling
        q1, k1 = rotary_embedding(positions, query.clone().to(DEVICE),
                                  key.clone().to(DEVICE), cache, head_size)
        kv1 = kv.clone().to(DEVICE)
        ref = impl.forward(q1, k1, value.to(DEVICE), kv1, builder.build(_common(b, block_size)))
        kv2 = kv.clone().to(DEVICE)
        out = impl.forward_with_rotary(query.clone().to(DEVICE), key.clone().to(DEVICE),
                                       value.to(DEVICE), kv2,
                                       builder.build(_common(b, block_size)), positions, cache)
        torch.testing.assert_close(out.cpu(), ref.cpu(), atol=0, rtol=0)
        torch.testing.assert_close(kv2.cpu(), kv1.cpu(), atol=0, rtol=0)


def test_triton_backend_declares_and_refuses():
    ok = TritonAttentionBackend.unsupported_reasons(head_size=128, dtype="bfloat16",
                                                    kv_cache_dtype="auto", block_size=16,
                                                    sliding_window=4096)
    assert ok == []
    bad = TritonAttentionBackend.unsupported_reasons(head_size=48, dtype="bfloat16",
                                                     kv_cache_dtype="int8", block_size=8,
                                                     sliding_window=None)
    assert len(bad) == 3 and any("int8" in r for r in bad) and any("48" in r for r in bad)
    assert TritonAttentionBackend.unsupported_reasons(    # FP8 KV cache (issue 15)
        head_size=128, dtype="bfloat16", kv_cache_dtype="fp8", block_size=16,
        sliding_window=None) == []
    assert TritonAttentionBackend.get_kv_cache_shape(10, 16, 8, 128) == (2, 10, 16, 8, 128)


# ------------------------------------------------------------------------ layer ops
ROWS, HIDDEN = (300, 4096) if ON_GPU else (5, 96)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_matches_hf(dtype: torch.dtype):
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    gen = torch.Generator().manual_seed(1)
    norm = LlamaRMSNorm(HIDDEN, eps=1e-5).to(dtype)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(HIDDEN, generator=gen))
    x = torch.randn(ROWS, HIDDEN, generator=gen).to(dtype) * 3
    res = torch.randn(ROWS, HIDDEN, generator=gen).to(dtype)
    w = norm.weight.detach().to(DEVICE)
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)
    with torch.no_grad():
        out = rms_norm(x.to(DEVICE), w, 1e-5)
        torch.testing.assert_close(out.cpu(), norm(x), **tol)
        out2, res2 = fused_add_rms_norm(x.to(DEVICE), res.to(DEVICE), w, 1e-5)
        # the interpreter rounds fp32 -> bf16 by truncation (the GPU rounds to nearest even)
        exact = ON_GPU or dtype != torch.bfloat16
        torch.testing.assert_close(res2.cpu(), x + res, **(dict(atol=0, rtol=0) if exact
                                                          else dict(atol=1e-2, rtol=8e-3)))
        torch.testing.assert_close(out2.cpu(), norm(x + res), **tol)


def _cos_sin_cache(max_pos: int, rot_dim: int) -> torch.Tensor:
    inv = 1.0 / (500000.0 ** (torch.arange(0, rot_dim, 2).float() / rot_dim))
    freqs = torch.outer(torch.arange(max_pos).float(), inv)
    return torch.cat([freqs.cos(), freqs.sin()], -1)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rotary_matches_hf(dtype: torch.dtype):
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    gen = torch.Generator().manual_seed(2)
    head, hq, hk = (128, 32, 8) if ON_GPU else (64, 4, 2)
    T = ROWS
    cache = _cos_sin_cache(4096, head)
    positions = torch.randint(0, 4096, (T,), generator=gen)
    q = torch.randn(T, hq * head, generator=gen).to(dtype)
    k = torch.randn(T, hk * head, generator=gen).to(dtype)
    half = cache[positions]
    cos = torch.cat([half[:, : head // 2]] * 2, -1)[None]
    sin = torch.cat([half[:, head // 2:]] * 2, -1)[None]
    q_ref, k_ref = apply_rotary_pos_emb(q.float().view(1, T, hq, head).transpose(1, 2),
                                        k.float().view(1, T, hk, head).transpose(1, 2),
                                        cos, sin)
    qd, kd = q.to(DEVICE), k.to(DEVICE)
    rotary_embedding(positions.to(DEVICE), qd, kd, cache.to(DEVICE), head)
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(qd.cpu().float(), q_ref.transpose(1, 2).reshape(T, -1), **tol)
    torch.testing.assert_close(kd.cpu().float(), k_ref.transpose(1, 2).reshape(T, -1), **tol)


@pytest.mark.parametrize("rot_dim", [32, 16])
def test_rotary_and_cache_equals_rotary_then_cache(rot_dim: int):
    from vllm_core_triton.kernels.rotary import rotary_and_cache

    gen = torch.Generator().manual_seed(12)
    tokens, hq, hkv, d, blocks, page = 5, 4, 2, 32, 6, 16
    cache = _cos_sin_cache(64, rot_dim)
    pos = torch.randint(0, 64, (tokens,), generator=gen)
    q = torch.randn(tokens, hq, d, generator=gen).to(LOW)
    k = torch.randn(tokens, hkv, d, generator=gen).to(LOW)
    v = torch.randn(tokens, hkv, d, generator=gen).to(LOW)
    slots = torch.tensor([3, 17, -1, 40, 90])                 # one padding row
    kv_ref = torch.zeros(2, blocks, page, hkv, d, dtype=LOW)
    q_ref, k_ref = rotary_embedding(pos.to(DEVICE), q.clone().to(DEVICE), k.clone().to(DEVICE),
                                    cache.to(DEVICE), d)
    kv_ref = kv_ref.to(DEVICE)
    reshape_and_cache(k_ref, v.to(DEVICE), kv_ref, slots.to(DEVICE))
    kv = torch.zeros(2, blocks, page, hkv, d, dtype=LOW, device=DEVICE)
    k_in = k.to(DEVICE)
    q_out = rotary_and_cache(pos.to(DEVICE), q.to(DEVICE), k_in, v.to(DEVICE),
                             cache.to(DEVICE), kv, slots.to(DEVICE))
    torch.testing.assert_close(q_out.cpu(), q_ref.cpu(), atol=0, rtol=0)
    torch.testing.assert_close(kv.cpu(), kv_ref.cpu(), atol=0, rtol=0)
    torch.testing.assert_close(k_in.cpu(), k, atol=0, rtol=0)      # key itself untouched


def test_rotary_partial_dim_leaves_tail():
    gen = torch.Generator().manual_seed(4)
    head, rot = 64, 32
    cache = _cos_sin_cache(64, rot)
    q = torch.randn(3, 2, head, generator=gen)
    k = torch.randn(3, 1, head, generator=gen)
    pos = torch.tensor([0, 5, 63])
    qd, kd = q.clone().to(DEVICE), k.clone().to(DEVICE)
    rotary_embedding(pos.to(DEVICE), qd, kd, cache.to(DEVICE), head)
    assert torch.equal(qd.cpu()[..., rot:], q[..., rot:])
    c, s = cache[pos, : rot // 2][:, None], cache[pos, rot // 2:][:, None]
    x1, x2 = k[..., : rot // 2], k[..., rot // 2: rot]
    torch.testing.assert_close(kd.cpu()[..., : rot // 2], x1 * c - x2 * s)
    torch.testing.assert_close(kd.cpu()[..., rot // 2: rot], x2 * c + x1 * s)


@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_and_mul_matches_torch(dtype: torch.dtype):
    gen = torch.Generator().manual_seed(6)
    inter = 14336 if ON_GPU else 72
    x = torch.randn(ROWS, 2 * inter, generator=gen).to(dtype) * 4
    out = silu_and_mul(x.to(DEVICE))
    ref = torch.nn.functional.silu(x[:, :inter]) * x[:, inter:]
    tol = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.float16: dict(atol=1e-3, rtol=4e-3),
           torch.bfloat16: dict(atol=1e-2, rtol=2e-2)}[dtype]
    torch.testing.assert_close(out.cpu(), ref, **tol)


@pytest.mark.parametrize("rows", [1, 3, 8])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gemv_matches_fp32_matmul(rows: int, dtype: torch.dtype):
    from vllm_core_triton.kernels.gemv import gemv

    gen = torch.Generator().manual_seed(9)
    n, k = (6144, 4096) if ON_GPU else (37, 1030)        # k not a multiple of the tile
    x = torch.randn(rows, k, generator=gen).to(dtype)
    w = (torch.randn(n, k, generator=gen) / k ** 0.5).to(dtype)
    b = torch.randn(n, generator=gen).to(dtype)
    ref = x.float() @ w.float().T
    out32 = gemv(x.to(DEVICE), w.to(DEVICE), out_dtype=torch.float32).cpu()
    torch.testing.assert_close(out32, ref, atol=1e-4, rtol=1e-4)        # fp32 accumulation
    out = gemv(x.to(DEVICE), w.to(DEVICE), b.to(DEVICE)).cpu()
    assert out.dtype == dtype
    torch.testing.assert_close(out, (ref + b.float()).to(dtype), atol=2e-2, rtol=2e-2)
    # row i depends only on row i: the first row alone gives the same bits
    torch.testing.assert_close(gemv(x[:1].to(DEVICE), w.to(DEVICE), b.to(DEVICE)).cpu(),
                               out[:1], atol=0, rtol=0)
    with pytest.raises(ValueError, match="1..8 rows"):
        gemv(torch.zeros(9, k, dtype=dtype, device=DEVICE), w.to(DEVICE))


@pytest.mark.parametrize("rows", [1, 2])
def test_gemv_with_silu_and_mul_matches_the_two_kernels(rows: int):
    from vllm_core_triton.kernels.gemv import gemv
    from vllm_core_triton.ops import TritonLayerOps

    gen = torch.Generator().manual_seed(11)
    n, inter = (4096, 14336) if ON_GPU else (24, 520)
    gate_up = (torch.randn(rows, 2 * inter, generator=gen) * 2).to(LOW).to(DEVICE)
    w = (torch.randn(n, inter, generator=gen) / inter ** 0.5).to(LOW).to(DEVICE)
    act = silu_and_mul(gate_up)
    ref = act.float() @ w.float().T
    fused = gemv(gate_up, w, out_dtype=torch.float32, silu_mul=True)
    torch.testing.assert_close(fused.cpu(), ref.cpu(), atol=1e-4, rtol=1e-4)
    ops = TritonLayerOps(gemv_max_rows=rows)
    torch.testing.assert_close(ops.silu_and_mul_linear(gate_up, w).float().cpu(),
                               ops.linear(act, w).float().cpu(), atol=1e-2, rtol=1e-2)
    with pytest.raises(ValueError, match="even number"):
        gemv(gate_up[:, :-1], w, silu_mul=True)


def test_layer_ops_linear_uses_gemv_only_for_small_batches(monkeypatch):
    from vllm_core_triton.kernels import gemv as gemv_mod
    from vllm_core_triton.ops import TritonLayerOps

    calls = []
    real = gemv_mod.gemv
    monkeypatch.setattr(gemv_mod, "gemv", lambda *a, **kw: calls.append(a[0].shape[0])
                        or real(*a, **kw))
    gen = torch.Generator().manual_seed(10)
    w = torch.randn(16, 64, generator=gen, dtype=torch.float16).to(DEVICE)
    ops = TritonLayerOps(gemv_max_rows=4)
    for rows in (1, 4, 5):
        x = torch.randn(rows, 64, generator=gen, dtype=torch.float16).to(DEVICE)
        torch.testing.assert_close(ops.linear(x, w).float().cpu(),
                                   (x.float() @ w.float().T).cpu(), atol=1e-2, rtol=1e-2)
    assert calls == [1, 4]
    assert TritonLayerOps().gemv_max_rows == 0


def test_triton_layer_ops_match_torch_layer_ops():
    from vllm_core_triton.ops import TritonLayerOps

    from vllm_core.model_executor.layers.ops import TorchLayerOps

    gen = torch.Generator().manual_seed(8)
    ours, ref = TritonLayerOps(), TorchLayerOps()
    x = torch.randn(ROWS, HIDDEN, generator=gen)
    r = torch.randn(ROWS, HIDDEN, generator=gen)
    w = torch.randn(HIDDEN, generator=gen)
    xd, rd, wd = x.to(DEVICE), r.to(DEVICE), w.to(DEVICE)
    torch.testing.assert_close(ours.rms_norm(xd, wd, 1e-6).cpu(), ref.rms_norm(x, w, 1e-6))
    for a, b in zip(ours.fused_add_rms_norm(xd, rd, wd, 1e-6),
                    ref.fused_add_rms_norm(x, r, w, 1e-6), strict=True):
        torch.testing.assert_close(a.cpu(), b)
    torch.testing.assert_close(ours.silu_and_mul(xd).cpu(), ref.silu_and_mul(x))
    cache = _cos_sin_cache(128, 32)
    pos = torch.randint(0, 128, (ROWS,), generator=gen)
    q = torch.randn(ROWS, 4, 32, generator=gen)
    k = torch.randn(ROWS, 2, 32, generator=gen)
    q_ref, k_ref = ref.rotary(pos, q.clone(), k.clone(), cache, 32)
    q_out, k_out = ours.rotary(pos.to(DEVICE), q.to(DEVICE), k.to(DEVICE), cache.to(DEVICE), 32)
    torch.testing.assert_close(q_out.cpu(), q_ref)
    torch.testing.assert_close(k_out.cpu(), k_ref)


@pytest.mark.gpu
@pytest.mark.parametrize("kv_dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_paged_attention_reads_an_fp8_cache(kv_dtype: torch.dtype):
    """``--kv-cache-dtype fp8``: the kernel widens the float8 cache to the query dtype; the
    result is that of the same cache values held in bf16."""
    gen = torch.Generator().manual_seed(5)
    head_size, block_size, gqa = HEAD_SIZES[0], BLOCK_SIZES[0], 4
    q_lens, ctx_lens = MIXED
    num_blocks = 2 + sum(math.ceil((q + c) / block_size) for q, c in zip(q_lens, ctx_lens, strict=True))
    b = _batch(q_lens, ctx_lens, block_size, num_blocks, gen)
    query = torch.randn(sum(q_lens), NUM_KV_HEADS * gqa, head_size, generator=gen)
    query = query.to(torch.bfloat16)
    kv8 = torch.randn(2, num_blocks, block_size, NUM_KV_HEADS, head_size,
                      generator=gen).to(kv_dtype)
    kv16 = kv8.to(torch.bfloat16)
    bd = _dev(b)
    launch = plan_launch(num_tokens=sum(q_lens), num_reqs=len(q_lens), max_query_len=max(q_lens),
                         max_seq_len=max(q + c for q, c in zip(q_lens, ctx_lens, strict=True)),
                         num_kv_heads=NUM_KV_HEADS, num_queries_per_kv=gqa,
                         head_size=head_size, num_compute_units=132)
    outs = [paged_attention(query.to(DEVICE), kv[0], kv[1], query_start_loc=bd["query_start_loc"],
                            seq_lens=bd["seq_lens"], block_table=bd["block_table"],
                            scale=head_size ** -0.5, launch=launch)
            for kv in (kv8.to(DEVICE), kv16.to(DEVICE))]
    torch.testing.assert_close(outs[0], outs[1], atol=1e-2, rtol=1e-2)
    # and reshape_and_cache writes new tokens into the fp8 cache (cast on write)
    key = torch.randn(3, NUM_KV_HEADS, head_size, device=DEVICE, dtype=torch.bfloat16)
    slots = torch.tensor([0, 1, block_size + 2], device=DEVICE)
    cache = torch.zeros(2, num_blocks, block_size, NUM_KV_HEADS, head_size, device=DEVICE,
                        dtype=kv_dtype)
    reshape_and_cache(key, key, cache, slots)
    flat = cache[0].view(-1, NUM_KV_HEADS, head_size)
    assert torch.equal(flat[slots].float(), key.to(kv_dtype).float())


# ------------------------------------------------------------------------ LoRA (SGMV)
@pytest.mark.parametrize("dtype,n_in", [(torch.float32, 48), (LOW, 48), (torch.float32, 1100)])
def test_lora_sgmv_matches_a_per_token_loop(dtype, n_in):
    """The core's ``sgmv`` LoRA mode with these kernels equals a per-token loop: prefill
    segments, interleaved decode rows, base-model tokens and padding rows."""
    import numpy as np
    from vllm_core_triton.kernels.lora import TritonLoRAKernels

    from vllm_core.lora.batch import LoRABatch

    gen = torch.Generator().manual_seed(0)
    slots, rank, outs = 3, 8, [40, 24, 24]           # n_in 1100: the split-K shrink
    a = (0.3 * torch.randn(slots, 3 * rank, n_in, generator=gen)).to(DEVICE, dtype)
    b = (0.3 * torch.randn(sum(outs), slots, rank, generator=gen)).to(DEVICE, dtype)
    shards = [(slice(0, 40), 0), (slice(40, 64), 1), (slice(64, 88), 2)]
    token_slots = np.array([2, -1, 0, 1, 2] + [0] * 19 + [-1] * 3 + [1] * 5, dtype=np.int64)
    x = torch.randn(len(token_slots), n_in, generator=gen).to(DEVICE, dtype)
    y0 = torch.randn(len(token_slots), sum(outs), generator=gen).to(DEVICE, dtype)
    expected = y0.float().clone()
    for t, s in enumerate(token_slots.tolist()):
        if s >= 0:
            xa = a[s].float() @ x[t].float()
            for rows, i in shards:
                expected[t, rows] += b[rows, s].float() @ xa[i * rank:(i + 1) * rank]
    batch = LoRABatch(slots, 64, DEVICE, dtype, "sgmv", kernels=TritonLoRAKernels())
    batch.set_step(token_slots, num_padded=40)
    got = batch.add_lora(y0.clone(), x, a, b, shards, rank)
    tol = TOL[dtype] * 10 if dtype != torch.float32 else TOL[dtype]
    torch.testing.assert_close(got.float(), expected, atol=tol, rtol=tol)


# ------------------------------------------------------------------------ FP8 KV cache
FP8_KV = [torch.float8_e4m3fn, torch.float8_e5m2]


def _fp8_cast(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """What the GPU's ``cvt.rn.satfinite`` does: round to nearest even, saturate."""
    limit = torch.finfo(dtype).max
    return x.float().clamp(-limit, limit).to(dtype)


@pytest.mark.parametrize("kv_dtype", FP8_KV)
@pytest.mark.parametrize("scales", [None, (0.25, 3.0)])
def test_fp8_cache_write_rounds_to_nearest_and_saturates(kv_dtype: torch.dtype, scales):
    """``reshape_and_cache`` and ``rotary_and_cache`` store K/V in a float8 cache as the
    correctly rounded float8 value of ``k / k_scale`` (``v / v_scale``), saturated at the
    format's largest finite value. Under the interpreter this relies on conftest's fix of its
    float8 narrowing."""
    from vllm_core_triton.kernels.rotary import rotary_and_cache

    gen = torch.Generator().manual_seed(11)
    n, kvh, d, bs = 24, 2, 32, 16
    key = torch.randn(n, kvh, d, generator=gen) * 3
    key[0, 0, :4] = torch.tensor([1000.0, -1000.0, 1e5, -1e5])      # past e4m3's 448
    value = torch.randn(n, kvh, d, generator=gen)
    slots = torch.randperm(3 * bs, generator=gen)[:n]
    ks, vs = scales or (1.0, 1.0)
    kw = {}
    if scales:
        kw = dict(k_scale=torch.tensor(ks, device=DEVICE), v_scale=torch.tensor(vs, device=DEVICE))
    cache = torch.zeros(2, 3, bs, kvh, d, dtype=kv_dtype, device=DEVICE)
    reshape_and_cache(key.to(DEVICE), value.to(DEVICE), cache, slots.to(DEVICE), **kw)
    flat = cache.view(2, -1, kvh, d)[:, slots.to(DEVICE)].cpu()
    assert torch.equal(flat[0].float(), _fp8_cast(key / ks, kv_dtype).float())
    assert torch.equal(flat[1].float(), _fp8_cast(value / vs, kv_dtype).float())

    cos_sin = _cos_sin_cache(64, d)
    pos = torch.randint(0, 64, (n,), generator=gen)
    q = torch.randn(n, 4, d, generator=gen)
    _, k_rot = rotary_embedding(pos.to(DEVICE), q.clone().to(DEVICE), key.clone().to(DEVICE),
                                cos_sin.to(DEVICE), d)
    k_rot = k_rot.cpu()
    cache.zero_()
    rotary_and_cache(pos.to(DEVICE), q.to(DEVICE), key.to(DEVICE), value.to(DEVICE),
                     cos_sin.to(DEVICE), cache, slots.to(DEVICE), **kw)
    flat = cache.view(2, -1, kvh, d)[:, slots.to(DEVICE)].cpu()
    assert torch.equal(flat[0].float(), _fp8_cast(k_rot / ks, kv_dtype).float())
    assert torch.equal(flat[1].float(), _fp8_cast(value / vs, kv_dtype).float())


@pytest.mark.parametrize("kv_dtype,num_splits,scales", [
    (torch.float8_e4m3fn, None, None), (torch.float8_e4m3fn, 3, (2.0, 0.05)),
    (torch.float8_e5m2, 3, None), (torch.float8_e5m2, None, (0.3, 7.0))])
def test_paged_attention_over_an_fp8_cache_equals_fp64_reference(kv_dtype: torch.dtype,
                                                                  num_splits: int | None,
                                                                  scales):
    """Decodes and prefill chunks (which read their own new K/V back from the fp8 cache,
    like decodes) attend exactly as a float64 attention over the widened cache times its
    scales: widening float8 is exact, so the only error is the float32 arithmetic of the
    kernel."""
    gen = torch.Generator().manual_seed(12)
    head_size, block_size, gqa = HEAD_SIZES[0], BLOCK_SIZES[0], 2
    q_lens, ctx_lens = MIXED
    num_blocks = 2 + sum(math.ceil((q + c) / block_size)
                         for q, c in zip(q_lens, ctx_lens, strict=True))
    b = _batch(q_lens, ctx_lens, block_size, num_blocks, gen)
    query = torch.randn(sum(q_lens), NUM_KV_HEADS * gqa, head_size, generator=gen)
    kv8 = (torch.randn(2, num_blocks, block_size, NUM_KV_HEADS, head_size, generator=gen)
           * 2).to(kv_dtype)
    launch = plan_launch(num_tokens=sum(q_lens), num_reqs=len(q_lens),
                         max_query_len=max(q_lens),
                         max_seq_len=max(q + c for q, c in zip(q_lens, ctx_lens, strict=True)),
                         num_kv_heads=NUM_KV_HEADS, num_queries_per_kv=gqa,
                         head_size=head_size, num_compute_units=132 if ON_GPU else 1,
                         num_splits=num_splits, tile_n=None if ON_GPU else 16)
    bd, kv_dev = _dev(b), kv8.to(DEVICE)
    ks, vs = scales or (1.0, 1.0)
    kw = {}
    if scales:
        kw = dict(k_scale=torch.tensor(ks, device=DEVICE), v_scale=torch.tensor(vs, device=DEVICE))
    out = paged_attention(query.to(DEVICE), kv_dev[0], kv_dev[1],
                          query_start_loc=bd["query_start_loc"], seq_lens=bd["seq_lens"],
                          block_table=bd["block_table"], scale=head_size ** -0.5,
                          launch=launch, **kw)
    ref = _ref_attention(query, kv8.float() * torch.tensor([ks, vs]).view(2, 1, 1, 1, 1), b,
                         head_size ** -0.5)
    assert _rel_err(out, ref) < TOL[torch.float32]


def test_verification_graph_batch_padded_by_step_buffers():
    """A verification batch (requests of at most q = 5 tokens, every token a logits row),
    staged in ``StepBuffers`` and padded by ``pad_token_batch`` to ``size + 1`` requests and
    ``size * q`` tokens, attended with ``build_for_capture``'s metadata (planned once for q
    tokens per request, as a verification graph is): the real rows equal the reference of
    the unpadded batch, the padding tokens write nothing to the cache, and the same metadata
    serves a second batch of other lengths (a replay)."""
    from vllm_core.worker.step_buffers import StepBuffers

    gen = torch.Generator().manual_seed(5)
    q, size, block_size, head_size, gqa = 5, 4, BLOCK_SIZES[0], HEAD_SIZES[0], 4
    num_heads, max_blocks, num_blocks = NUM_KV_HEADS * gqa, 8, 24
    bufs = StepBuffers(64, 16, max_blocks, DEVICE, pin_memory=False,
                       block_table_dtype=TritonAttentionBackend.block_table_dtype)
    T, R = size * q, size + 1
    common = CommonAttentionMetadata(
        query_start_loc=bufs.query_start_loc[:R + 1], seq_lens=bufs.seq_lens[:R],
        context_lens=bufs.context_lens[:R], block_table=bufs.block_table[:R],
        slot_mapping=bufs.slot_mapping[:T], query_start_loc_cpu=torch.zeros(R + 1),
        seq_lens_cpu=torch.zeros(R), num_reqs=R, num_tokens=T, num_decodes=0,
        max_query_len=q, max_seq_len=max_blocks * block_size, block_size=block_size)
    md = TritonAttentionBackend.get_builder_cls()(block_size, DEVICE).build_for_capture(
        common, max_blocks * block_size)
    impl = TritonAttentionBackend.get_impl_cls()(num_heads, head_size, head_size ** -0.5,
                                                NUM_KV_HEADS)
    for q_lens, ctx_lens in (([5, 1, 3], [17, 40, 0]), ([2, 5, 1, 4], [5, 9, 60, 1])):
        b = _batch(q_lens, ctx_lens, block_size, num_blocks, gen)
        n, t = len(q_lens), sum(q_lens)
        bufs.query_start_loc_np[:n + 1] = b["query_start_loc"].numpy()
        bufs.seq_lens_np[:n] = b["seq_lens"].numpy()
        bufs.context_lens_np[:n] = b["context_lens"].numpy()
        bufs.block_table_np[:n] = 0
        bufs.block_table_np[:n, :b["block_table"].shape[1]] = b["block_table"].numpy()
        bufs.slot_mapping_np[:t] = b["slot_mapping"].numpy()
        bufs.pad_token_batch(n, t, size, T)
        assert bufs.query_start_loc_np[R] == T and (bufs.slot_mapping_np[t:T] == -1).all()
        bufs.upload(T, R, T)
        kv_cache = torch.randn(TritonAttentionBackend.get_kv_cache_shape(
            num_blocks, block_size, NUM_KV_HEADS, head_size), generator=gen)
        query = torch.randn(T, num_heads, head_size, generator=gen)
        key = torch.randn(T, NUM_KV_HEADS, head_size, generator=gen)
        value = torch.randn(T, NUM_KV_HEADS, head_size, generator=gen)
        cache_dev = kv_cache.to(DEVICE)
        out = impl.forward(query.reshape(T, -1).to(DEVICE), key.to(DEVICE), value.to(DEVICE),
                           cache_dev, md)
        expected = kv_cache.clone()
        expected[0].view(-1, NUM_KV_HEADS, head_size)[b["slot_mapping"]] = key[:t]
        expected[1].view(-1, NUM_KV_HEADS, head_size)[b["slot_mapping"]] = value[:t]
        assert torch.equal(cache_dev.cpu(), expected)          # padding wrote nothing
        ref = _ref_attention(query[:t], expected, b, head_size ** -0.5)
        assert _rel_err(out[:t].view(t, num_heads, head_size), ref) < TOL[torch.float32]
        assert not out.isnan().any()


def test_decode_attention_tiles_env_sets_decode_launches_only(monkeypatch):
    """VLLM_TRITON_DECODE_ATTENTION_TILES (benchmarks' A/B of launch plans) applies to
    decode-only steps, leaves mixed steps to the heuristic and refuses a malformed value."""
    import dataclasses

    from vllm_core_triton import envs

    b, *_ = _backend_case(torch.Generator().manual_seed(3), 4, LOW)
    md = TritonAttentionBackend.get_builder_cls()(BLOCK_SIZES[0], DEVICE).build(
        _common(b, BLOCK_SIZES[0]))
    impl = TritonAttentionBackend.get_impl_cls()(NUM_KV_HEADS * 4, HEAD_SIZES[0], 0.1,
                                                NUM_KV_HEADS)
    decode = dataclasses.replace(md, max_query_len=1)
    heuristic, mixed = impl._plan(decode, False), impl._plan(md, False)
    monkeypatch.setenv("VLLM_TRITON_DECODE_ATTENTION_TILES", "128,8,3")
    plan = impl._plan(decode, False)
    assert (plan.tile_n, plan.num_warps, plan.num_stages) == (128, 8, 3) != (
        heuristic.tile_n, heuristic.num_warps, heuristic.num_stages)
    assert md.max_query_len > 1 and impl._plan(md, False) == mixed
    monkeypatch.setenv("VLLM_TRITON_DECODE_ATTENTION_TILES", "64,4")
    with pytest.raises(ValueError, match="VLLM_TRITON_DECODE_ATTENTION_TILES"):
        envs.decode_attention_tiles()
