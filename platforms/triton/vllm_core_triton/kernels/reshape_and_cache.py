"""Write the new tokens' K/V into a paged KV cache through ``slot_mapping``.

Cache layout (one layer): ``(2, num_blocks, block_size, num_kv_heads, head_size)``; token ``t``
goes to block ``slot_mapping[t] // block_size``, offset ``slot_mapping[t] % block_size``. A
negative slot (padding) is skipped. One program per token copies all its KV heads. With
``k_scale`` / ``v_scale`` (a float8 cache's per-layer scales, ``vllm_core.attention.kv_scales``)
the stored values are ``fp8(k / k_scale)``, ``fp8(v / v_scale)``, rounded to nearest and
saturated (the GPU's ``cvt.rn.satfinite``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _reshape_and_cache_kernel(
    key_ptr, value_ptr, k_cache_ptr, v_cache_ptr, slot_mapping_ptr, k_scale_ptr, v_scale_ptr,
    stride_kt, stride_kh, stride_vt, stride_vh,
    stride_cb, stride_ct, stride_ch,
    NUM_KV_HEADS: tl.constexpr, HEADS_PAD: tl.constexpr,
    HEAD_SIZE: tl.constexpr, HEAD_PAD: tl.constexpr, PAGE: tl.constexpr,
    KV_SCALED: tl.constexpr, QMAX: tl.constexpr,
):
    tok = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_mapping_ptr + tok).to(tl.int64)
    if slot < 0:
        return
    offs_h = tl.arange(0, HEADS_PAD)
    offs_d = tl.arange(0, HEAD_PAD)
    mask = (offs_h < NUM_KV_HEADS)[:, None] & (offs_d < HEAD_SIZE)[None, :]
    dst = (slot // PAGE) * stride_cb + (slot % PAGE) * stride_ct \
        + offs_h[:, None] * stride_ch + offs_d[None, :]
    k = tl.load(key_ptr + tok * stride_kt + offs_h[:, None] * stride_kh + offs_d[None, :],
                mask=mask)
    v = tl.load(value_ptr + tok * stride_vt + offs_h[:, None] * stride_vh + offs_d[None, :],
                mask=mask)
    if KV_SCALED:
        k = k.to(tl.float32) / tl.load(k_scale_ptr)
        v = v.to(tl.float32) / tl.load(v_scale_ptr)
    if QMAX > 0:               # a float8 cache saturates (whatever the GPU's cast does)
        k = tl.minimum(tl.maximum(k.to(tl.float32), -QMAX), QMAX)
        v = tl.minimum(tl.maximum(v.to(tl.float32), -QMAX), QMAX)
    tl.store(k_cache_ptr + dst, k.to(k_cache_ptr.dtype.element_ty), mask=mask)
    tl.store(v_cache_ptr + dst, v.to(v_cache_ptr.dtype.element_ty), mask=mask)


def reshape_and_cache(key: torch.Tensor, value: torch.Tensor, kv_cache: torch.Tensor,
                      slot_mapping: torch.Tensor, k_scale: torch.Tensor | None = None,
                      v_scale: torch.Tensor | None = None) -> None:
    """Scatter ``key``/``value`` [T, KVH, D] into ``kv_cache`` (2, NB, BS, KVH, D) in place.

    ``slot_mapping`` [T] (int32/int64) holds each token's slot; entries < 0 are skipped. Key
    and value may be strided views (e.g. slices of a fused QKV output) but must be contiguous
    in the head dimension; the cache's two halves must have equal strides. ``k_scale`` /
    ``v_scale``: one-element float32 tensors on the cache's device, used only for a float8
    cache (both or neither).
    """
    num_tokens, num_kv_heads, head_size = key.shape
    if value.shape != key.shape:
        raise ValueError(f"value shape {tuple(value.shape)} != key shape {tuple(key.shape)}")
    if kv_cache.dim() != 5 or kv_cache.shape[0] != 2 or kv_cache.shape[3:] != key.shape[1:]:
        raise ValueError(f"kv_cache shape {tuple(kv_cache.shape)} does not match "
                         f"(2, num_blocks, block_size, {num_kv_heads}, {head_size})")
    if slot_mapping.shape[0] < num_tokens:
        raise ValueError(f"slot_mapping has {slot_mapping.shape[0]} entries for "
                         f"{num_tokens} tokens")
    if key.stride(-1) != 1 or value.stride(-1) != 1 or kv_cache.stride(-1) != 1:
        raise ValueError("key, value and kv_cache must be contiguous in the head dimension")
    if num_tokens == 0:
        return
    k_cache, v_cache = kv_cache[0], kv_cache[1]
    scaled = kv_scaled(kv_cache, k_scale, v_scale)
    _reshape_and_cache_kernel[(num_tokens,)](
        key, value, k_cache, v_cache, slot_mapping,
        k_scale if scaled else slot_mapping, v_scale if scaled else slot_mapping,
        key.stride(0), key.stride(1), value.stride(0), value.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        NUM_KV_HEADS=num_kv_heads, HEADS_PAD=triton.next_power_of_2(num_kv_heads),
        HEAD_SIZE=head_size, HEAD_PAD=triton.next_power_of_2(head_size),
        PAGE=kv_cache.shape[2], KV_SCALED=scaled, QMAX=fp8_limit(kv_cache), num_warps=4,
    )


def fp8_limit(kv_cache: torch.Tensor) -> float:
    """The largest finite value of a float8 cache (stores clamp to it), 0.0 for others."""
    if kv_cache.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        return float(torch.finfo(kv_cache.dtype).max)
    return 0.0


def kv_scaled(kv_cache: torch.Tensor, k_scale: torch.Tensor | None,
              v_scale: torch.Tensor | None) -> bool:
    """Whether the kernels apply the scales: a float8 cache with both scales given."""
    if (k_scale is None) != (v_scale is None):
        raise ValueError("give both k_scale and v_scale, or neither")
    return k_scale is not None and kv_cache.dtype in (torch.float8_e4m3fn, torch.float8_e5m2)
