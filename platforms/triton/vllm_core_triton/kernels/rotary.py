"""Rotary position embedding (GPT-NeoX style), in place on q and k.

``cos_sin_cache`` [max_position, rot_dim] holds ``cat(cos, sin, -1)`` per position, each half
``rot_dim // 2`` wide (computed on the host by the model, Llama-3 scaling included). For each
head the first ``rot_dim`` features are split in halves x1, x2 and replaced by
``x1 * cos - x2 * sin`` and ``x2 * cos + x1 * sin`` (fp32 arithmetic, rounded to the input
dtype); features past ``rot_dim`` are untouched. One program rotates all heads of one token.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from vllm_core_triton.kernels.reshape_and_cache import fp8_limit, kv_scaled


@triton.jit
def _rotate_heads(x_ptr, stride_h, cos, sin, NUM_HEADS: tl.constexpr, HEADS_PAD: tl.constexpr,
                  HALF: tl.constexpr, HALF_PAD: tl.constexpr):
    offs_h = tl.arange(0, HEADS_PAD)
    offs_d = tl.arange(0, HALF_PAD)
    mask = (offs_h < NUM_HEADS)[:, None] & (offs_d < HALF)[None, :]
    p1 = x_ptr + offs_h[:, None] * stride_h + offs_d[None, :]
    x1 = tl.load(p1, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(p1 + HALF, mask=mask, other=0.0).to(tl.float32)
    tl.store(p1, (x1 * cos - x2 * sin).to(x_ptr.dtype.element_ty), mask=mask)
    tl.store(p1 + HALF, (x2 * cos + x1 * sin).to(x_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _cos_sin(positions_ptr, tok, cache_ptr, stride_cache, HALF: tl.constexpr,
             HALF_PAD: tl.constexpr):
    """cos and sin rows [1, HALF_PAD] (float32) of token ``tok``'s position."""
    pos = tl.load(positions_ptr + tok).to(tl.int64)
    offs_d = tl.arange(0, HALF_PAD)
    d_mask = offs_d < HALF
    cos = tl.load(cache_ptr + pos * stride_cache + offs_d, mask=d_mask, other=0.0)
    sin = tl.load(cache_ptr + pos * stride_cache + HALF + offs_d, mask=d_mask, other=0.0)
    return cos.to(tl.float32)[None, :], sin.to(tl.float32)[None, :]


@triton.jit
def _rotary_kernel(
    q_ptr, k_ptr, positions_ptr, cache_ptr,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_cache,
    NUM_Q_HEADS: tl.constexpr, Q_HEADS_PAD: tl.constexpr,
    NUM_K_HEADS: tl.constexpr, K_HEADS_PAD: tl.constexpr,
    HALF: tl.constexpr, HALF_PAD: tl.constexpr,
):
    tok = tl.program_id(0).to(tl.int64)
    cos, sin = _cos_sin(positions_ptr, tok, cache_ptr, stride_cache, HALF, HALF_PAD)
    _rotate_heads(q_ptr + tok * stride_qt, stride_qh, cos, sin, NUM_Q_HEADS, Q_HEADS_PAD,
                  HALF, HALF_PAD)
    _rotate_heads(k_ptr + tok * stride_kt, stride_kh, cos, sin, NUM_K_HEADS, K_HEADS_PAD,
                  HALF, HALF_PAD)


def _heads(x: torch.Tensor, head_size: int, name: str) -> torch.Tensor:
    if x.shape[-1] % head_size:
        raise ValueError(f"{name} last dim {x.shape[-1]} is not a multiple of head_size "
                         f"{head_size}")
    v = x.view(x.shape[0], -1, head_size) if x.dim() == 2 else x
    if v.dim() != 3 or v.shape[-1] != head_size or v.stride(-1) != 1:
        raise ValueError(f"{name} must be [T, heads * {head_size}] or [T, heads, {head_size}] "
                         f"with a contiguous last dimension, got {tuple(x.shape)}")
    return v


def rotary_embedding(positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor,
                     cos_sin_cache: torch.Tensor,
                     head_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate ``query`` and ``key`` in place at ``positions`` [T]; returns them.

    query [T, Hq * head_size] or [T, Hq, head_size]; key likewise with its own head count.
    """
    q = _heads(query, head_size, "query")
    k = _heads(key, head_size, "key")
    rot_dim = cos_sin_cache.shape[-1]
    if rot_dim % 2 or rot_dim > head_size:
        raise ValueError(f"cos_sin_cache width {rot_dim} must be even and <= head_size "
                         f"{head_size}")
    if positions.numel() != q.shape[0] or k.shape[0] != q.shape[0]:
        raise ValueError(f"positions ({positions.numel()}), query ({q.shape[0]}) and key "
                         f"({k.shape[0]}) must have the same number of tokens")
    cache = cos_sin_cache if cos_sin_cache.stride(-1) == 1 else cos_sin_cache.contiguous()
    if q.shape[0]:
        half = rot_dim // 2
        _rotary_kernel[(q.shape[0],)](
            q, k, positions.reshape(-1), cache,
            q.stride(0), q.stride(1), k.stride(0), k.stride(1), cache.stride(0),
            NUM_Q_HEADS=q.shape[1], Q_HEADS_PAD=triton.next_power_of_2(q.shape[1]),
            NUM_K_HEADS=k.shape[1], K_HEADS_PAD=triton.next_power_of_2(k.shape[1]),
            HALF=half, HALF_PAD=triton.next_power_of_2(half), num_warps=4,
        )
    return query, key


@triton.jit
def _rotary_cache_kernel(
    q_ptr, k_ptr, v_ptr, positions_ptr, cache_ptr, k_cache_ptr, v_cache_ptr, slot_mapping_ptr,
    k_scale_ptr, v_scale_ptr,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_cache,
    stride_cb, stride_ct, stride_ch,
    NUM_Q_HEADS: tl.constexpr, Q_HEADS_PAD: tl.constexpr,
    NUM_KV_HEADS: tl.constexpr, KV_HEADS_PAD: tl.constexpr,
    HALF: tl.constexpr, HALF_PAD: tl.constexpr, HEAD_SIZE: tl.constexpr,
    HEAD_PAD: tl.constexpr, PAGE: tl.constexpr, KV_SCALED: tl.constexpr,
    QMAX: tl.constexpr,
):
    tok = tl.program_id(0).to(tl.int64)
    cos, sin = _cos_sin(positions_ptr, tok, cache_ptr, stride_cache, HALF, HALF_PAD)
    _rotate_heads(q_ptr + tok * stride_qt, stride_qh, cos, sin, NUM_Q_HEADS, Q_HEADS_PAD,
                  HALF, HALF_PAD)
    slot = tl.load(slot_mapping_ptr + tok).to(tl.int64)
    if slot >= 0:
        offs_d = tl.arange(0, HALF_PAD)
        d_mask = offs_d < HALF
        offs_h = tl.arange(0, KV_HEADS_PAD)
        h_mask = offs_h < NUM_KV_HEADS
        dst = (slot // PAGE) * stride_cb + (slot % PAGE) * stride_ct + offs_h[:, None] * stride_ch
        # K: the rotated halves, then any features past the rotary dims as they are
        mask = h_mask[:, None] & d_mask[None, :]
        src = k_ptr + tok * stride_kt + offs_h[:, None] * stride_kh + offs_d[None, :]
        x1 = tl.load(src, mask=mask, other=0.0).to(tl.float32)
        x2 = tl.load(src + HALF, mask=mask, other=0.0).to(tl.float32)
        ty = k_cache_ptr.dtype.element_ty
        kd = k_ptr.dtype.element_ty
        k1 = (x1 * cos - x2 * sin).to(kd)
        k2 = (x2 * cos + x1 * sin).to(kd)
        if KV_SCALED:
            ks = tl.load(k_scale_ptr)
            k1 = k1.to(tl.float32) / ks
            k2 = k2.to(tl.float32) / ks
        if QMAX > 0:           # a float8 cache saturates (whatever the GPU's cast does)
            k1 = tl.minimum(tl.maximum(k1.to(tl.float32), -QMAX), QMAX)
            k2 = tl.minimum(tl.maximum(k2.to(tl.float32), -QMAX), QMAX)
        tl.store(k_cache_ptr + dst + offs_d[None, :], k1.to(ty), mask=mask)
        tl.store(k_cache_ptr + dst + HALF + offs_d[None, :], k2.to(ty), mask=mask)
        offs_f = tl.arange(0, HEAD_PAD)
        if 2 * HALF < HEAD_SIZE:
            tail = h_mask[:, None] & ((offs_f >= 2 * HALF) & (offs_f < HEAD_SIZE))[None, :]
            kt = tl.load(k_ptr + tok * stride_kt + offs_h[:, None] * stride_kh + offs_f[None, :],
                         mask=tail)
            if KV_SCALED:
                kt = kt.to(tl.float32) / tl.load(k_scale_ptr)
            if QMAX > 0:
                kt = tl.minimum(tl.maximum(kt.to(tl.float32), -QMAX), QMAX)
            tl.store(k_cache_ptr + dst + offs_f[None, :], kt.to(ty), mask=tail)
        full = h_mask[:, None] & (offs_f < HEAD_SIZE)[None, :]
        v = tl.load(v_ptr + tok * stride_vt + offs_h[:, None] * stride_vh + offs_f[None, :],
                    mask=full)
        if KV_SCALED:
            v = v.to(tl.float32) / tl.load(v_scale_ptr)
        if QMAX > 0:
            v = tl.minimum(tl.maximum(v.to(tl.float32), -QMAX), QMAX)
        tl.store(v_cache_ptr + dst + offs_f[None, :], v.to(v_cache_ptr.dtype.element_ty),
                 mask=full)


def rotary_and_cache(positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor,
                     value: torch.Tensor, cos_sin_cache: torch.Tensor, kv_cache: torch.Tensor,
                     slot_mapping: torch.Tensor, k_scale: torch.Tensor | None = None,
                     v_scale: torch.Tensor | None = None) -> torch.Tensor:
    """``rotary_embedding`` on ``query`` (in place, returned) and on ``key``, whose rotated
    values go straight into ``kv_cache`` together with ``value`` (as ``reshape_and_cache`` would
    write them; ``key`` itself is left unrotated). One launch instead of two. Shapes as in
    ``rotary_embedding`` and ``reshape_and_cache``; negative slots skip the cache write; a
    float8 cache's ``k_scale`` / ``v_scale`` as in ``reshape_and_cache``."""
    head_size = kv_cache.shape[-1]
    q = _heads(query, head_size, "query")
    k = _heads(key, head_size, "key")
    v = _heads(value, head_size, "value")
    rot_dim = cos_sin_cache.shape[-1]
    if rot_dim % 2 or rot_dim > head_size:
        raise ValueError(f"cos_sin_cache width {rot_dim} must be even and <= head_size "
                         f"{head_size}")
    if kv_cache.dim() != 5 or kv_cache.shape[0] != 2 or kv_cache.shape[3:] != k.shape[1:]:
        raise ValueError(f"kv_cache shape {tuple(kv_cache.shape)} does not match "
                         f"(2, num_blocks, block_size, {k.shape[1]}, {head_size})")
    n = q.shape[0]
    if positions.numel() < n or k.shape[0] != n or v.shape != k.shape or \
            slot_mapping.shape[0] < n:
        raise ValueError("positions, query, key, value and slot_mapping must cover the same "
                         "tokens")
    cache = cos_sin_cache if cos_sin_cache.stride(-1) == 1 else cos_sin_cache.contiguous()
    if n:
        half = rot_dim // 2
        k_cache, v_cache = kv_cache[0], kv_cache[1]
        scaled = kv_scaled(kv_cache, k_scale, v_scale)
        _rotary_cache_kernel[(n,)](
            q, k, v, positions.reshape(-1), cache, k_cache, v_cache, slot_mapping,
            k_scale if scaled else slot_mapping, v_scale if scaled else slot_mapping,
            q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
            cache.stride(0), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
            NUM_Q_HEADS=q.shape[1], Q_HEADS_PAD=triton.next_power_of_2(q.shape[1]),
            NUM_KV_HEADS=k.shape[1], KV_HEADS_PAD=triton.next_power_of_2(k.shape[1]),
            HALF=half, HALF_PAD=triton.next_power_of_2(half), HEAD_SIZE=head_size,
            HEAD_PAD=triton.next_power_of_2(head_size), PAGE=kv_cache.shape[2],
            KV_SCALED=scaled, QMAX=fp8_limit(kv_cache), num_warps=4,
        )
    return query
