"""Batched LoRA kernels (segmented gather-matmul, "SGMV"): ``shrink`` ``xa = x @ A[s].T`` and
``expand`` ``y += xa @ B[s].T`` where every token uses its own adapter slot ``s``.

Tokens are grouped by slot once per step, on the host (``sorted_idx``: the token rows of slot
0, then slot 1, ...), and cut into tiles of at most ``BLOCK_M`` tokens of one slot
(``tile_slot``, ``tile_row0``, ``tile_end``: the tile's slot and its range in ``sorted_idx``;
unused tiles are empty). A program takes one tile, so an adapter's weights are read once per
tile: a prefill segment is a real matmul, and the decode rows of one adapter share tiles (the
BGMV case is a tile of a few rows). Grid ``(cdiv(T, BLOCK_M) + S, output tiles)``: it depends
only on the step's padded token count, and the tiles are read on the device, so a captured
CUDA graph replays with the current step's grouping (programs of empty tiles return).

Layouts (the core's ``lora.batch``): ``a`` [S, n*R, K]; ``b`` [O, S, R]; ``xa`` [T, n*R]
float32; ``y`` [T, O_total] updated in place for the rows ``row0 .. row0 + O`` of one shard,
reading shrink columns ``col0 .. col0 + R``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _tile_rows(idx_ptr, slot_ptr, row0_ptr, end_ptr, BLOCK_M: tl.constexpr):
    tile = tl.program_id(0)
    slot = tl.load(slot_ptr + tile)
    row0 = tl.load(row0_ptr + tile)
    end = tl.load(end_ptr + tile)
    offs_m = row0 + tl.arange(0, BLOCK_M)
    m_mask = offs_m < end
    rows = tl.load(idx_ptr + offs_m, mask=m_mask, other=0)
    return slot, row0, end, rows, m_mask


@triton.jit
def _shrink_kernel(x_ptr, a_ptr, out_ptr, idx_ptr, slot_ptr, row0_ptr, end_ptr, K, N,
                   k_per_split, stride_x, stride_as, stride_an, stride_o,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                   SPLIT_K: tl.constexpr, IEEE: tl.constexpr):
    slot, tile_row0, tile_end, rows, m_mask = _tile_rows(idx_ptr, slot_ptr, row0_ptr, end_ptr,
                                                         BLOCK_M)
    if tile_row0 >= tile_end:
        return
    pid_n = tl.program_id(1) // SPLIT_K
    pid_k = tl.program_id(1) % SPLIT_K
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    k_begin = pid_k * k_per_split
    k_end = tl.minimum(k_begin + k_per_split, K)
    for k0 in range(k_begin, k_end, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_mask = offs_k < k_end
        xt = tl.load(x_ptr + rows[:, None] * stride_x + offs_k[None, :],
                     mask=m_mask[:, None] & k_mask[None, :], other=0.0)
        at = tl.load(a_ptr + slot * stride_as + offs_n[None, :] * stride_an + offs_k[:, None],
                     mask=n_mask[None, :] & k_mask[:, None], other=0.0)
        if IEEE:
            acc += tl.dot(xt, at, input_precision="ieee")
        else:
            acc += tl.dot(xt, at)
    out_ptrs = out_ptr + rows[:, None] * stride_o + offs_n[None, :]
    if SPLIT_K == 1:
        tl.store(out_ptrs, acc, mask=m_mask[:, None] & n_mask[None, :])
    else:
        tl.atomic_add(out_ptrs, acc, mask=m_mask[:, None] & n_mask[None, :])


@triton.jit
def _expand_kernel(xa_ptr, b_ptr, y_ptr, idx_ptr, slot_ptr, row0_ptr, end_ptr, n_out, R, col0,
                   out_row0, stride_xa, stride_bo, stride_bs, stride_y,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
                   IEEE: tl.constexpr):
    slot, tile_row0, tile_end, rows, m_mask = _tile_rows(idx_ptr, slot_ptr, row0_ptr, end_ptr,
                                                         BLOCK_M)
    if tile_row0 >= tile_end:
        return
    pid_n = tl.program_id(1)
    offs_o = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    o_mask = offs_o < n_out
    offs_r = tl.arange(0, BLOCK_R)
    r_mask = offs_r < R
    xt = tl.load(xa_ptr + rows[:, None] * stride_xa + col0 + offs_r[None, :],
                 mask=m_mask[:, None] & r_mask[None, :], other=0.0)
    bt = tl.load(b_ptr + (out_row0 + offs_o)[None, :] * stride_bo + slot * stride_bs
                 + offs_r[:, None], mask=o_mask[None, :] & r_mask[:, None], other=0.0)
    if IEEE:
        delta = tl.dot(xt, bt.to(tl.float32), input_precision="ieee")
    else:
        delta = tl.dot(xt, bt.to(tl.float32))
    y_ptrs = y_ptr + rows[:, None] * stride_y + out_row0 + offs_o[None, :]
    mask = m_mask[:, None] & o_mask[None, :]
    y = tl.load(y_ptrs, mask=mask, other=0.0)
    tl.store(y_ptrs, (y.to(tl.float32) + delta).to(y.dtype), mask=mask)


BLOCK_M = 16


def _tiles(t: int, num_slots: int) -> int:
    """Tiles a step of ``t`` tokens over ``num_slots`` slots can need (the grid's rows)."""
    return triton.cdiv(t, BLOCK_M) + num_slots


def lora_shrink(x: torch.Tensor, a: torch.Tensor, out: torch.Tensor, sorted_idx: torch.Tensor,
                tile_slot: torch.Tensor, tile_row0: torch.Tensor, tile_end: torch.Tensor
                ) -> None:
    """``out[t] = A[s_t] @ x[t]`` (float32) for the tokens of the tiles.

    The reduction over ``K`` is split over up to 16 programs (``K / 512`` each at least),
    which add into ``out`` atomically: the rank is small, so without the split a decode batch
    would run on only ``tokens / BLOCK_M`` programs. ``out`` must then be zero beforehand
    (``LoRABatch`` allocates it zeroed)."""
    t, k = x.shape
    s, n, _ = a.shape
    if t == 0:
        return
    block_k = 64
    block_n = min(64, max(16, triton.next_power_of_2(n)))
    split_k = max(1, min(16, k // 512))
    k_per_split = triton.cdiv(triton.cdiv(k, split_k), block_k) * block_k
    grid = (_tiles(t, s), triton.cdiv(n, block_n) * split_k)
    _shrink_kernel[grid](x, a, out, sorted_idx, tile_slot, tile_row0, tile_end, k, n,
                         k_per_split, x.stride(0), a.stride(0), a.stride(1), out.stride(0),
                         BLOCK_M=BLOCK_M, BLOCK_N=block_n, BLOCK_K=block_k, SPLIT_K=split_k,
                         IEEE=x.dtype == torch.float32)


def lora_expand(y: torch.Tensor, xa: torch.Tensor, b: torch.Tensor, rows: slice, col0: int,
                rank: int, sorted_idx: torch.Tensor, tile_slot: torch.Tensor,
                tile_row0: torch.Tensor, tile_end: torch.Tensor) -> None:
    """``y[t, rows] += B[rows, s_t] @ xa[t, col0:col0 + rank]`` for the tokens of the tiles."""
    t = y.shape[0]
    if t == 0:
        return
    row0, o = rows.start or 0, (rows.stop - (rows.start or 0))
    block_n = 128
    block_r = max(16, triton.next_power_of_2(rank))
    grid = (_tiles(t, b.shape[1]), triton.cdiv(o, block_n))
    _expand_kernel[grid](xa, b, y, sorted_idx, tile_slot, tile_row0, tile_end, o, rank, col0,
                         row0, xa.stride(0), b.stride(0), b.stride(1), y.stride(0),
                         BLOCK_M=BLOCK_M, BLOCK_N=block_n, BLOCK_R=block_r,
                         IEEE=y.dtype == torch.float32)


class TritonLoRAKernels:
    """The ``LoRAKernels`` contract of the core's ``lora.batch`` ("sgmv" mode)."""

    block_m = BLOCK_M
    shrink = staticmethod(lora_shrink)
    expand = staticmethod(lora_expand)
