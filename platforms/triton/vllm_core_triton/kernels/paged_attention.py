"""Paged attention over a mixed batch of decodes and prefill chunks, in one Triton launch.

Inputs follow ``vllm_core.attention.backend``: one flat token axis (decodes first, then prefill
chunks, though the kernel does not rely on the order), ``query_start_loc`` [num_reqs + 1],
``seq_lens`` [num_reqs] (tokens in the KV after this step), ``block_table``
[num_reqs, max_blocks] and a per-layer KV cache of shape
``(2, num_blocks, block_size, num_kv_heads, head_size)`` (index 0 keys, 1 values). The new
tokens' K/V must already be in the cache (``reshape_and_cache``), except in *new-KV mode*
(``kv_cache=None``, memory profiling), where every request's chunk is its whole context and K/V
are read straight from ``key``/``value``.

Work decomposition. Program ``(q_block, kv_head, split)`` takes ``BLOCK_Q`` consecutive query
tokens of one request and all ``GQA`` query heads that share ``kv_head``: its tile has
``BLOCK_M = BLOCK_Q * GQA_PAD`` rows (row ``m`` is token ``m // GQA_PAD``, head
``kv_head * GQA + m % GQA_PAD``), so each K/V tile is loaded once for the whole head group.
The program walks the request's KV in tiles of ``TILE_N`` tokens (each token's page looked up
in the block table, so ``TILE_N`` is independent of the page size), up to the causal limit of
its last query token, with an fp32 online softmax (base 2). Long contexts are split across
``NUM_SPLITS`` programs (flash-decoding): each writes its normalised partial output and its
running max / sum, and ``_reduce_splits_kernel`` merges them. With one split the kernel
writes the output directly.

Mapping programs to requests: with ``BLOCK_Q == 1`` program ``i`` is token ``i``; otherwise
request ``r`` owns program ids from ``query_start_loc[r] // BLOCK_Q + r``, an upper bound of
the blocks before it, so ``num_tokens // BLOCK_Q + num_reqs`` programs cover any batch and the
spare ones exit at once. Both are found by a binary search over ``query_start_loc`` on the
device: lengths are read from device tensors only, host integers only shape the launch, so a
launch configuration is correct for any lengths (CUDA-graph safe). ``num_reqs`` is not
specialised on (``do_not_specialize``: Triton would otherwise compile separate variants for 1
and for multiples of 16), so the start-up warm-up compiles the one variant every batch uses.

Masking: query token at absolute position ``p`` sees key positions ``k <= p`` (and
``p - k < sliding_window`` when a window is set). Head sizes are padded to a power of two
with masks. Pure Triton: no vendor intrinsics, so ROCm and XPU can reuse it.

A float8 cache is widened to the query dtype on load (exact). Its per-layer scales
(``k_scale`` / ``v_scale``, ``vllm_core.attention.kv_scales``) are folded in rather than
multiplied into every element: ``k_scale`` into the softmax scale, ``v_scale`` into the
normalised output (both read from device memory: CUDA-graph safe).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from vllm_core_triton.kernels.reshape_and_cache import kv_scaled

_NEG_BIG = tl.constexpr(-1.0e30)  # finite "minus infinity" for running maxima: keeps exp2 free of inf - inf
_LOG2E = 1.4426950408889634


@triton.jit
def _find_request(query_start_loc_ptr, num_reqs, pid, BLOCK_Q: tl.constexpr):
    """Largest request r with start(r) <= pid (start as in the module docstring)."""
    lo = 0
    hi = num_reqs
    while lo < hi:
        mid = (lo + hi) // 2
        start = tl.load(query_start_loc_ptr + mid)
        if BLOCK_Q > 1:
            start = start // BLOCK_Q + mid
        if start <= pid:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1


@triton.jit(do_not_specialize=["num_reqs"])
def _paged_attention_kernel(
    out_ptr, q_ptr, k_ptr, v_ptr,
    block_table_ptr, query_start_loc_ptr, seq_lens_ptr,
    part_o_ptr, part_ml_ptr, k_scale_ptr, v_scale_ptr,
    scale_log2, num_reqs, num_heads,
    stride_qt, stride_qh, stride_ot, stride_oh,
    stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh,
    stride_bt,
    HEAD_SIZE: tl.constexpr, HEAD_PAD: tl.constexpr,
    GQA: tl.constexpr, GQA_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_Q: tl.constexpr, TILE_N: tl.constexpr,
    PAGE: tl.constexpr, NUM_SPLITS: tl.constexpr, SLIDING_WINDOW: tl.constexpr,
    KV_FROM_NEW: tl.constexpr, IEEE_DOT: tl.constexpr, KV_SCALED: tl.constexpr,
):
    pid = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)

    req = _find_request(query_start_loc_ptr, num_reqs, pid, BLOCK_Q)
    q_start = tl.load(query_start_loc_ptr + req)
    q_len = tl.load(query_start_loc_ptr + req + 1) - q_start
    if BLOCK_Q > 1:
        q_block = pid - (q_start // BLOCK_Q + req)
    else:
        q_block = pid - q_start
    if q_block * BLOCK_Q >= q_len:
        return
    if KV_FROM_NEW:
        seq_len = q_len
    else:
        seq_len = tl.load(seq_lens_ptr + req)
    context_len = seq_len - q_len

    offs_m = tl.arange(0, BLOCK_M)
    tok_local = q_block * BLOCK_Q + offs_m // GQA_PAD
    head_in_group = offs_m % GQA_PAD
    row_valid = (tok_local < q_len) & (head_in_group < GQA)
    tok = (q_start + tok_local).to(tl.int64)
    head = kv_head * GQA + head_in_group
    q_pos = context_len + tok_local

    offs_d = tl.arange(0, HEAD_PAD)
    d_mask = offs_d < HEAD_SIZE
    q = tl.load(q_ptr + tok[:, None] * stride_qt + head[:, None] * stride_qh + offs_d[None, :],
                mask=row_valid[:, None] & d_mask[None, :], other=0.0)

    # KV range this q-block needs: causal end of its last token, window start of its first.
    kv_end = context_len + tl.minimum(q_block * BLOCK_Q + BLOCK_Q, q_len)
    tile_lo = 0
    if SLIDING_WINDOW > 0:
        tile_lo = tl.maximum(context_len + q_block * BLOCK_Q - SLIDING_WINDOW + 1, 0) // TILE_N
    tile_hi = tl.cdiv(kv_end, TILE_N)
    per_split = tl.cdiv(tile_hi - tile_lo, NUM_SPLITS)
    t_begin = tile_lo + split * per_split
    t_end = tl.minimum(t_begin + per_split, tile_hi)

    if KV_SCALED:
        scale_log2 = scale_log2 * tl.load(k_scale_ptr)
    m_i = tl.full([BLOCK_M], _NEG_BIG, tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_PAD], tl.float32)
    offs_n0 = tl.arange(0, TILE_N)
    for t in range(t_begin, t_end):
        offs_n = t * TILE_N + offs_n0
        n_mask = offs_n < kv_end
        if KV_FROM_NEW:
            kv_tok = (q_start + offs_n).to(tl.int64)
            k_off = kv_tok[:, None] * stride_kt
            v_off = kv_tok[:, None] * stride_vt
        else:
            page = tl.load(block_table_ptr + req * stride_bt + offs_n // PAGE, mask=n_mask,
                           other=0).to(tl.int64)
            in_page = (offs_n % PAGE)[:, None]
            k_off = page[:, None] * stride_kb + in_page * stride_kt
            v_off = page[:, None] * stride_vb + in_page * stride_vt
        kv_mask = n_mask[:, None] & d_mask[None, :]
        k = tl.load(k_ptr + k_off + kv_head * stride_kh + offs_d[None, :], mask=kv_mask,
                    other=0.0).to(q.dtype)          # an fp8 cache is widened here
        if IEEE_DOT:
            s = tl.dot(q, tl.trans(k), input_precision="ieee")
        else:
            s = tl.dot(q, tl.trans(k))
        s = s * scale_log2
        allowed = (offs_n[None, :] <= q_pos[:, None]) & n_mask[None, :]
        if SLIDING_WINDOW > 0:
            allowed = allowed & (q_pos[:, None] - offs_n[None, :] < SLIDING_WINDOW)
        s = tl.where(allowed, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.exp2(s - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_ptr + v_off + kv_head * stride_vh + offs_d[None, :], mask=kv_mask,
                    other=0.0).to(q.dtype)
        if IEEE_DOT:
            pv = tl.dot(p.to(v.dtype), v, input_precision="ieee")
        else:
            pv = tl.dot(p.to(v.dtype), v)
        acc = acc * alpha[:, None] + pv
        m_i = m_new

    l_safe = tl.where(l_i > 0.0, l_i, 1.0)
    o = acc / l_safe[:, None]
    if KV_SCALED:
        o = o * tl.load(v_scale_ptr)
    out_mask = row_valid[:, None] & d_mask[None, :]
    if NUM_SPLITS == 1:
        tl.store(out_ptr + tok[:, None] * stride_ot + head[:, None] * stride_oh
                 + offs_d[None, :], o.to(out_ptr.dtype.element_ty), mask=out_mask)
    else:
        row = (tok * num_heads + head) * NUM_SPLITS + split
        tl.store(part_o_ptr + row[:, None] * HEAD_PAD + offs_d[None, :], o, mask=out_mask)
        tl.store(part_ml_ptr + row * 2, m_i, mask=row_valid)
        tl.store(part_ml_ptr + row * 2 + 1, l_i, mask=row_valid)


@triton.jit
def _reduce_splits_kernel(
    out_ptr, part_o_ptr, part_ml_ptr, num_heads, stride_ot, stride_oh,
    HEAD_SIZE: tl.constexpr, HEAD_PAD: tl.constexpr,
    NUM_SPLITS: tl.constexpr, SPLITS_PAD: tl.constexpr,
):
    """out[t, h] = sum_s w_s o_s / sum_s w_s with w_s = l_s * 2^(m_s - max m)."""
    tok = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)
    offs_s = tl.arange(0, SPLITS_PAD)
    s_mask = offs_s < NUM_SPLITS
    row = (tok * num_heads + head) * NUM_SPLITS + offs_s
    m = tl.load(part_ml_ptr + row * 2, mask=s_mask, other=_NEG_BIG)
    l_s = tl.load(part_ml_ptr + row * 2 + 1, mask=s_mask, other=0.0)
    w = l_s * tl.exp2(m - tl.max(m, 0))
    offs_d = tl.arange(0, HEAD_PAD)
    d_mask = offs_d < HEAD_SIZE
    o = tl.load(part_o_ptr + row[:, None] * HEAD_PAD + offs_d[None, :],
                mask=s_mask[:, None] & d_mask[None, :], other=0.0)
    res = tl.sum(o * w[:, None], 0) / tl.sum(w, 0)
    tl.store(out_ptr + tok * stride_ot + head * stride_oh + offs_d,
             res.to(out_ptr.dtype.element_ty), mask=d_mask)


@dataclass(slots=True, frozen=True)
class AttentionLaunch:
    """Launch shape of one ``paged_attention`` call (host-side choice; any is correct)."""

    block_q: int
    block_m: int
    tile_n: int
    num_splits: int
    num_warps: int
    num_stages: int


@functools.lru_cache(maxsize=16)
def device_parallelism(device: torch.device) -> int:
    """Number of compute units (SMs / CUs / Xe cores) of ``device``; 1 where unknown."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    if device.type == "xpu" and hasattr(torch, "xpu"):
        props = torch.xpu.get_device_properties(device)
        return int(getattr(props, "gpu_subslice_count", 64))
    return 1


def plan_launch(*, num_tokens: int, num_reqs: int, max_query_len: int, max_seq_len: int,
                num_kv_heads: int, num_queries_per_kv: int, head_size: int,
                num_compute_units: int, num_splits: int | None = None,
                tile_n: int | None = None, num_warps: int | None = None,
                num_stages: int | None = None) -> AttentionLaunch:
    """Choose tile sizes and the split count from host-known batch facts.

    Decode-only batches (``max_query_len == 1``) use one token per program and
    ``BLOCK_M = max(16, GQA_PAD)`` rows; batches with chunks pack up to 64 rows. Contexts are
    split only when the grid alone is less than one wave (fewer programs than compute units),
    into enough splits for about two waves, each keeping at least 512 KV tokens: on an H200
    (132 SMs), Llama-8B decode at batch 64 (512 programs) ran 5-50% slower with 2-4 splits
    than with none (the partial buffers and the reduction launch cost more than the extra
    parallelism gives). Explicit arguments override the heuristics (benchmarks, tests).
    """
    gqa_pad = triton.next_power_of_2(num_queries_per_kv)
    if max_query_len <= 1:
        block_q = 1
    else:
        block_q = max(1, min(triton.next_power_of_2(max_query_len), 64 // gqa_pad))
    block_m = max(16, block_q * gqa_pad)
    if tile_n is None:
        tile_n = 64 if head_size <= 128 else 32
    if num_splits is None:
        grid0 = num_tokens if block_q == 1 else num_tokens // block_q + num_reqs
        programs = grid0 * num_kv_heads
        num_splits = 1
        if programs < num_compute_units:
            num_splits = min(math.ceil(2 * num_compute_units / programs),
                             max(1, max_seq_len // 512), 32)
    if num_warps is None:
        num_warps = 4 if block_m <= 64 else 8
    if num_stages is None:
        num_stages = 2
    return AttentionLaunch(block_q=block_q, block_m=block_m, tile_n=tile_n,
                           num_splits=max(1, num_splits), num_warps=num_warps,
                           num_stages=num_stages)


def paged_attention(query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                    *, query_start_loc: torch.Tensor, seq_lens: torch.Tensor,
                    block_table: torch.Tensor, scale: float, launch: AttentionLaunch,
                    sliding_window: int | None = None, kv_from_new: bool = False,
                    out: torch.Tensor | None = None, k_scale: torch.Tensor | None = None,
                    v_scale: torch.Tensor | None = None) -> torch.Tensor:
    """Attention of every new query token to its request's context; returns [T, H, D].

    ``query`` [T, H, D]. Paged mode: ``key_cache``/``value_cache`` [num_blocks, block_size,
    KVH, D] (the two halves of the layer's cache). New-KV mode (``kv_from_new``): they are the
    new tokens' key/value [T, KVH, D] and ``seq_lens``/``block_table`` are ignored. The last
    dimension of every tensor must be contiguous. ``launch`` comes from ``plan_launch``.
    ``k_scale`` / ``v_scale``: a float8 cache's one-element float32 scales (both or neither;
    ignored for other caches and in new-KV mode).
    """
    num_tokens, num_heads, head_size = query.shape
    num_kv_heads = key_cache.shape[-2]
    if num_heads % num_kv_heads:
        raise ValueError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads "
                         f"({num_kv_heads})")
    for name, t in (("query", query), ("key_cache", key_cache), ("value_cache", value_cache)):
        if t.stride(-1) != 1:
            raise ValueError(f"{name} must be contiguous in its last dimension")
    if out is None:
        out = torch.empty_like(query)
    num_reqs = query_start_loc.shape[0] - 1
    if num_tokens == 0 or num_reqs == 0:
        return out
    gqa = num_heads // num_kv_heads
    gqa_pad = triton.next_power_of_2(gqa)
    head_pad = max(16, triton.next_power_of_2(head_size))
    lc = launch
    if lc.block_m < lc.block_q * gqa_pad:
        raise ValueError(f"launch.block_m ({lc.block_m}) < block_q * GQA_PAD "
                         f"({lc.block_q * gqa_pad})")
    grid0 = num_tokens if lc.block_q == 1 else num_tokens // lc.block_q + num_reqs
    if kv_from_new:
        page, skb, skt, skh = 1, 0, key_cache.stride(0), key_cache.stride(1)
        svb, svt, svh = 0, value_cache.stride(0), value_cache.stride(1)
        bt, stride_bt = query_start_loc, 0
    else:
        page = key_cache.shape[1]
        skb, skt, skh = key_cache.stride(0), key_cache.stride(1), key_cache.stride(2)
        svb, svt, svh = value_cache.stride(0), value_cache.stride(1), value_cache.stride(2)
        bt, stride_bt = block_table, block_table.stride(0)
    if lc.num_splits > 1:
        part_o = torch.empty((num_tokens, num_heads, lc.num_splits, head_pad),
                             dtype=torch.float32, device=query.device)
        part_ml = torch.empty((num_tokens, num_heads, lc.num_splits, 2), dtype=torch.float32,
                              device=query.device)
    else:
        part_o = part_ml = out  # unused
    scaled = not kv_from_new and kv_scaled(key_cache, k_scale, v_scale)
    _paged_attention_kernel[(grid0, num_kv_heads, lc.num_splits)](
        out, query, key_cache, value_cache,
        bt, query_start_loc, seq_lens,
        part_o, part_ml, k_scale if scaled else seq_lens, v_scale if scaled else seq_lens,
        scale * _LOG2E, num_reqs, num_heads,
        query.stride(0), query.stride(1), out.stride(0), out.stride(1),
        skb, skt, skh, svb, svt, svh, stride_bt,
        HEAD_SIZE=head_size, HEAD_PAD=head_pad, GQA=gqa, GQA_PAD=gqa_pad,
        BLOCK_M=lc.block_m, BLOCK_Q=lc.block_q, TILE_N=lc.tile_n, PAGE=page,
        NUM_SPLITS=lc.num_splits, SLIDING_WINDOW=sliding_window or 0,
        KV_FROM_NEW=kv_from_new, IEEE_DOT=query.dtype == torch.float32, KV_SCALED=scaled,
        num_warps=lc.num_warps, num_stages=lc.num_stages,
    )
    if lc.num_splits > 1:
        _reduce_splits_kernel[(num_tokens, num_heads)](
            out, part_o, part_ml, num_heads, out.stride(0), out.stride(1),
            HEAD_SIZE=head_size, HEAD_PAD=head_pad, NUM_SPLITS=lc.num_splits,
            SPLITS_PAD=triton.next_power_of_2(lc.num_splits), num_warps=4,
        )
    return out
