"""Skinny GEMM for decode: ``y = x @ W.T`` for a few rows ``x`` [M, K] (M <= 8), ``W`` [N, K].

At batch 1-8 a linear layer is a pure weight stream: every byte of ``W`` is read once and each
element does M multiply-adds. One program owns ``BLOCK_N`` output columns and walks the whole
``K`` with ``BLOCK_K``-wide, row-contiguous tiles of ``W`` (fully coalesced), keeping M fp32
accumulators; no split-K, so no second pass and no atomics, and every output element is the
same reduction order whatever M is (row ``i`` of ``y`` depends only on row ``i`` of ``x``).
``x`` is re-read from L2/L1 by every program (M * K * 2 bytes, small next to ``W``). ``K`` is a
compile-time constant (a model has a handful of them), so the loop trip count is fixed.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

MAX_ROWS = 8


@triton.jit
def _x_row(row_ptr, kk, mask_k, K: tl.constexpr, SILU_MUL: tl.constexpr):
    """Columns ``kk`` of one input row in float32; with ``SILU_MUL`` the row is a fused
    gate/up projection [gate (K) | up (K)] and the input is ``silu(gate) * up``, rounded like
    ``silu_and_mul`` (activation, then product, each to the input dtype)."""
    if SILU_MUL:
        gate = tl.load(row_ptr + kk, mask=mask_k, other=0.0).to(tl.float32)
        up = tl.load(row_ptr + K + kk, mask=mask_k, other=0.0)
        act = (gate / (1.0 + tl.exp(-gate))).to(up.dtype)
        return (act.to(tl.float32) * up.to(tl.float32)).to(up.dtype).to(tl.float32)
    else:
        return tl.load(row_ptr + kk, mask=mask_k, other=0.0).to(tl.float32)


@triton.jit
def _gemv_kernel(y_ptr, x_ptr, w_ptr, b_ptr, N, stride_x, stride_w, stride_y,
                 K: tl.constexpr, M: tl.constexpr, HAS_BIAS: tl.constexpr,
                 SILU_MUL: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid = tl.program_id(0)
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    offs_k = tl.arange(0, BLOCK_K)
    w_rows = w_ptr + offs_n.to(tl.int64)[:, None] * stride_w
    acc0 = tl.zeros((BLOCK_N,), dtype=tl.float32)
    acc1 = tl.zeros((BLOCK_N,), dtype=tl.float32)
    acc2 = tl.zeros((BLOCK_N,), dtype=tl.float32)
    acc3 = tl.zeros((BLOCK_N,), dtype=tl.float32)
    acc4 = tl.zeros((BLOCK_N,), dtype=tl.float32)
    acc5 = tl.zeros((BLOCK_N,), dtype=tl.float32)
    acc6 = tl.zeros((BLOCK_N,), dtype=tl.float32)
    acc7 = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for i in range(0, (K + BLOCK_K - 1) // BLOCK_K):
        kk = i * BLOCK_K + offs_k
        mask_k = kk < K
        w = tl.load(w_rows + kk[None, :], mask=mask_n[:, None] & mask_k[None, :],
                    other=0.0).to(tl.float32)
        x0 = _x_row(x_ptr, kk, mask_k, K, SILU_MUL)
        acc0 += tl.sum(w * x0[None, :], axis=1)
        if M > 1:
            x1 = _x_row(x_ptr + stride_x, kk, mask_k, K, SILU_MUL)
            acc1 += tl.sum(w * x1[None, :], axis=1)
        if M > 2:
            x2 = _x_row(x_ptr + 2 * stride_x, kk, mask_k, K, SILU_MUL)
            acc2 += tl.sum(w * x2[None, :], axis=1)
        if M > 3:
            x3 = _x_row(x_ptr + 3 * stride_x, kk, mask_k, K, SILU_MUL)
            acc3 += tl.sum(w * x3[None, :], axis=1)
        if M > 4:
            x4 = _x_row(x_ptr + 4 * stride_x, kk, mask_k, K, SILU_MUL)
            acc4 += tl.sum(w * x4[None, :], axis=1)
        if M > 5:
            x5 = _x_row(x_ptr + 5 * stride_x, kk, mask_k, K, SILU_MUL)
            acc5 += tl.sum(w * x5[None, :], axis=1)
        if M > 6:
            x6 = _x_row(x_ptr + 6 * stride_x, kk, mask_k, K, SILU_MUL)
            acc6 += tl.sum(w * x6[None, :], axis=1)
        if M > 7:
            x7 = _x_row(x_ptr + 7 * stride_x, kk, mask_k, K, SILU_MUL)
            acc7 += tl.sum(w * x7[None, :], axis=1)
    bias = tl.zeros((BLOCK_N,), dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    out_ty = y_ptr.dtype.element_ty
    tl.store(y_ptr + offs_n, (acc0 + bias).to(out_ty), mask=mask_n)
    if M > 1:
        tl.store(y_ptr + stride_y + offs_n, (acc1 + bias).to(out_ty), mask=mask_n)
    if M > 2:
        tl.store(y_ptr + 2 * stride_y + offs_n, (acc2 + bias).to(out_ty), mask=mask_n)
    if M > 3:
        tl.store(y_ptr + 3 * stride_y + offs_n, (acc3 + bias).to(out_ty), mask=mask_n)
    if M > 4:
        tl.store(y_ptr + 4 * stride_y + offs_n, (acc4 + bias).to(out_ty), mask=mask_n)
    if M > 5:
        tl.store(y_ptr + 5 * stride_y + offs_n, (acc5 + bias).to(out_ty), mask=mask_n)
    if M > 6:
        tl.store(y_ptr + 6 * stride_y + offs_n, (acc6 + bias).to(out_ty), mask=mask_n)
    if M > 7:
        tl.store(y_ptr + 7 * stride_y + offs_n, (acc7 + bias).to(out_ty), mask=mask_n)


def gemv_config(n: int, k: int) -> tuple[int, int, int]:
    """(BLOCK_N, BLOCK_K, num_warps) for an [n, k] weight, from a sweep on an H200 at one row
    (``benchmarks/kernels_cuda.py --only gemv``): long rows take wide tiles and eight warps;
    otherwise the block of output columns grows with ``n`` so that a few hundred to a few
    thousand programs stream the weight."""
    if k >= 8192:
        return 8, 1024, 8                 # Llama-3-8B down_proj: 4.03 TB/s
    if n >= 16384:
        return 16, 512, 4                 # gate_up: 4.30 TB/s, LM head: 4.55 TB/s
    if n >= 6144:
        return 8, 512, 4                  # fused qkv: 4.03 TB/s
    block_k = 1024 if k >= 1024 else triton.next_power_of_2(max(k, 16))
    return 2, block_k, 4                  # o_proj: 5.0 TB/s (partly from L2)


def gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
         out_dtype: torch.dtype | None = None, config: tuple[int, int, int] | None = None,
         silu_mul: bool = False) -> torch.Tensor:
    """``x`` [M, K] (M <= 8, rows contiguous) times ``weight.T`` ([N, K]) -> [M, N].

    With ``silu_mul`` ``x`` is a fused gate/up output [M, 2K] and the product uses
    ``silu_and_mul(x)`` (computed on the fly: the MLP's activation and down projection in one
    kernel). The output is ``out_dtype`` (default ``x.dtype``); float32 keeps the accumulator."""
    m, k = x.shape
    if silu_mul:
        if k % 2:
            raise ValueError(f"silu_mul needs an even number of columns, got {k}")
        k //= 2
    n = weight.shape[0]
    if m > MAX_ROWS or m < 1:
        raise ValueError(f"gemv handles 1..{MAX_ROWS} rows, got {m}")
    if weight.shape[1] != k or weight.stride(1) != 1 or x.stride(1) != 1:
        raise ValueError(f"gemv needs x [M, K] and weight [N, K] with contiguous rows, got "
                         f"{tuple(x.shape)} and {tuple(weight.shape)}")
    y = torch.empty((m, n), dtype=out_dtype or x.dtype, device=x.device)
    block_n, block_k, warps = config or gemv_config(n, k)
    _gemv_kernel[(triton.cdiv(n, block_n),)](
        y, x, weight, bias if bias is not None else y, n, x.stride(0), weight.stride(0),
        y.stride(0), K=k, M=m, HAS_BIAS=bias is not None, SILU_MUL=silu_mul, BLOCK_N=block_n,
        BLOCK_K=block_k,
        num_warps=warps)
    return y
