"""Fused mixture-of-experts: two grouped-GEMM launches over rows sorted by expert.

Input layout: ``moe_align_rows`` (``moe_align.py``: the core's ``align_rows`` contract in
one launch) sorts the flat (token, expert) rows of ``topk_ids`` [T, k] by local expert and pads
each expert's segment to ``BLOCK_M``, so each ``BLOCK_M`` rows of ``sorted_ids`` share one
expert (``block_expert``).

1. ``_moe_gate_up_kernel``: program (m, n) gathers its block's token rows of ``x`` [T, H] and
   multiplies them by its expert's gate rows ``n`` and up rows ``I + n`` of ``w13`` [E, 2I, H]
   (two accumulators, one pass over H), then writes ``silu(gate) * up`` (each rounded to the
   model dtype, HF order) to ``inter[row]`` [T*k, I].
2. ``_moe_down_kernel``: program (m, n) multiplies its block's ``inter`` rows by its expert's
   ``w2`` [E, H, I] rows ``n``, scales by the row's routing weight (float32) and writes
   float32 ``partial[row]`` [T*k, H]; ``partial.view(T, k, H).sum(1)`` is the output.
Rows of experts on another rank (id -1) are sorted past ``num_padded`` and never computed;
their ``partial`` rows stay zero. Programs of blocks past ``num_padded`` exit at once: the grid
is sized for the worst case, so nothing depends on the data (CUDA-graph safe). Row counts are
not specialised on (``do_not_specialize``): one compiled variant serves every batch, so the
start-up warm-up compiles what the first requests use.

FP8 experts (``fused_moe_fp8``, contract in the core's ``quantization/fp8_moe.py``): the same
two launches with ``FP8`` set: ``x`` and ``inter`` arrive quantized per row
(``per_token_quant_fp8``, one launch each), the products run on float8 operands (the FP8
tensor cores) and the float32 accumulators are scaled by the row's activation scale times
the expert's channel scale before the activation / routing weight.

Tile sizes come from ``moe_tile_config`` (``fused_moe_configs.py``): per-shape entries from
the sweep (``benchmarks/moe_tile_sweep.py``), else a default by batch size.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from vllm_core.model_executor.quantization.fp8_moe import Fp8MoEWeight
from vllm_core_triton.kernels.fused_moe_configs import MoETileConfig, moe_tile_config
from vllm_core_triton.kernels.moe_align import moe_align_rows
from vllm_core_triton.kernels.quant_fp8 import per_token_quant_fp8


@triton.jit
def _dot(a, b, acc, IEEE: tl.constexpr):
    if IEEE:
        return tl.dot(a, b, acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc)


@triton.jit(do_not_specialize=["num_rows"])
def _moe_gate_up_kernel(x_ptr, w_ptr, inter_ptr, sorted_ids_ptr, block_expert_ptr,
                        num_padded_ptr, a_scale_ptr, w_scale_ptr, num_rows, top_k, H, INTER,
                        stride_x, stride_we, stride_wn, stride_inter, stride_se,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                        IEEE: tl.constexpr, FP8: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    num_padded = tl.load(num_padded_ptr)
    if pid_m * BLOCK_M >= num_padded:
        return
    expert = tl.load(block_expert_ptr + pid_m).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rows = tl.load(sorted_ids_ptr + offs_m)
    row_mask = rows < num_rows
    tokens = rows // top_k
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < INTER
    offs_k = tl.arange(0, BLOCK_K)
    x_rows = x_ptr + tokens[:, None] * stride_x
    w_gate = w_ptr + expert * stride_we + offs_n.to(tl.int64)[None, :] * stride_wn
    w_up = w_gate + INTER * stride_wn
    acc_g = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_u = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, tl.cdiv(H, BLOCK_K)):
        kk = k0 * BLOCK_K + offs_k
        k_mask = kk < H
        a = tl.load(x_rows + kk[None, :], mask=row_mask[:, None] & k_mask[None, :], other=0.0)
        wmask = k_mask[:, None] & n_mask[None, :]
        wg = tl.load(w_gate + kk[:, None], mask=wmask, other=0.0)
        wu = tl.load(w_up + kk[:, None], mask=wmask, other=0.0)
        acc_g = _dot(a, wg, acc_g, IEEE)
        acc_u = _dot(a, wu, acc_u, IEEE)
    if FP8:
        sa = tl.load(a_scale_ptr + tokens, mask=row_mask, other=0.0)[:, None]
        s_row = w_scale_ptr + expert * stride_se + offs_n
        acc_g = acc_g * sa * tl.load(s_row, mask=n_mask, other=0.0)[None, :]
        acc_u = acc_u * sa * tl.load(s_row + INTER, mask=n_mask, other=0.0)[None, :]
    out_ty = inter_ptr.dtype.element_ty
    gate = acc_g.to(out_ty).to(tl.float32)
    act = (gate / (1.0 + tl.exp(-gate))).to(out_ty).to(tl.float32)
    h = (act * acc_u.to(out_ty).to(tl.float32)).to(out_ty)
    tl.store(inter_ptr + rows[:, None] * stride_inter + offs_n[None, :], h,
             mask=row_mask[:, None] & n_mask[None, :])


@triton.jit(do_not_specialize=["num_rows"])
def _moe_down_kernel(inter_ptr, w_ptr, out_ptr, weights_ptr, sorted_ids_ptr,
                     block_expert_ptr, num_padded_ptr, a_scale_ptr, w_scale_ptr, num_rows, H,
                     INTER, stride_inter, stride_we, stride_wn, stride_out, stride_se,
                     OUT_DTYPE: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                     IEEE: tl.constexpr, FP8: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    num_padded = tl.load(num_padded_ptr)
    if pid_m * BLOCK_M >= num_padded:
        return
    expert = tl.load(block_expert_ptr + pid_m).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rows = tl.load(sorted_ids_ptr + offs_m)
    row_mask = rows < num_rows
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < H
    offs_k = tl.arange(0, BLOCK_K)
    a_rows = inter_ptr + rows[:, None] * stride_inter
    w_rows = w_ptr + expert * stride_we + offs_n.to(tl.int64)[None, :] * stride_wn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, tl.cdiv(INTER, BLOCK_K)):
        kk = k0 * BLOCK_K + offs_k
        k_mask = kk < INTER
        a = tl.load(a_rows + kk[None, :], mask=row_mask[:, None] & k_mask[None, :], other=0.0)
        w = tl.load(w_rows + kk[:, None], mask=k_mask[:, None] & n_mask[None, :], other=0.0)
        acc = _dot(a, w, acc, IEEE)
    if FP8:
        acc = acc * tl.load(a_scale_ptr + rows, mask=row_mask, other=0.0)[:, None] \
            * tl.load(w_scale_ptr + expert * stride_se + offs_n, mask=n_mask, other=0.0)[None, :]
    y = acc.to(OUT_DTYPE).to(tl.float32)                         # the expert output, rounded
    rw = tl.load(weights_ptr + rows, mask=row_mask, other=0.0)
    tl.store(out_ptr + rows[:, None] * stride_out + offs_n[None, :], y * rw[:, None],
             mask=row_mask[:, None] & n_mask[None, :])


def fused_moe(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, topk_weights: torch.Tensor,
              topk_ids: torch.Tensor, config: MoETileConfig | None = None) -> torch.Tensor:
    """The ``LayerOps.fused_moe`` contract (core ``layers/fused_moe/torch_moe.py``) in two
    Triton launches; ``config`` overrides the tile choice (the sweep uses it)."""
    return _fused_moe(x, w13, w2, None, None, topk_weights, topk_ids, config)


def fused_moe_fp8(x: torch.Tensor, w: Fp8MoEWeight, topk_weights: torch.Tensor,
                  topk_ids: torch.Tensor, config: MoETileConfig | None = None) -> torch.Tensor:
    """The ``LayerOps.fused_moe_fp8`` contract (core ``quantization/fp8_moe.py``): FP8
    experts, activations quantized per row by ``per_token_quant_fp8``."""
    return _fused_moe(x, w.w13, w.w2, w.w13_scale, w.w2_scale, topk_weights, topk_ids, config)


def _fused_moe(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor,
               w13_scale: torch.Tensor | None, w2_scale: torch.Tensor | None,
               topk_weights: torch.Tensor, topk_ids: torch.Tensor,
               config: MoETileConfig | None) -> torch.Tensor:
    t, h = x.shape
    e, two_i, _ = w13.shape
    inter_size = two_i // 2
    k = topk_ids.shape[1]
    num_rows = t * k
    if t == 0:
        return x.new_zeros(x.shape)
    fp8 = w13_scale is not None
    cfg = config or moe_tile_config(num_rows, e, h, inter_size, x.dtype)
    x = x if x.stride(-1) == 1 else x.contiguous()
    aligned = moe_align_rows(topk_ids, e, cfg.block_m)
    num_blocks = aligned.block_expert.numel()
    inter = torch.empty(num_rows, inter_size, dtype=x.dtype, device=x.device)
    partial = torch.zeros(num_rows, h, dtype=torch.float32, device=x.device)
    weights = topk_weights.reshape(-1).to(torch.float32).contiguous()
    ieee = x.dtype == torch.float32 and not fp8
    a, sa = (per_token_quant_fp8(x) if fp8 else (x, weights))
    s13 = w13_scale if fp8 else weights
    _moe_gate_up_kernel[(num_blocks, triton.cdiv(inter_size, cfg.block_n_gate_up))](
        a, w13, inter, aligned.sorted_ids, aligned.block_expert, aligned.num_padded,
        sa, s13, num_rows, k, h, inter_size, a.stride(0), w13.stride(0), w13.stride(1),
        inter.stride(0), s13.stride(0) if fp8 else 0,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n_gate_up, BLOCK_K=cfg.block_k,
        IEEE=ieee, FP8=fp8, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    b, sb = (per_token_quant_fp8(inter) if fp8 else (inter, weights))
    s2 = w2_scale if fp8 else weights
    _moe_down_kernel[(num_blocks, triton.cdiv(h, cfg.block_n_down))](
        b, w2, partial, weights, aligned.sorted_ids, aligned.block_expert,
        aligned.num_padded, sb, s2, num_rows, h, inter_size, b.stride(0), w2.stride(0),
        w2.stride(1), partial.stride(0), s2.stride(0) if fp8 else 0,
        OUT_DTYPE=_TL_DTYPE[x.dtype],
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n_down, BLOCK_K=cfg.block_k,
        IEEE=ieee, FP8=fp8, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return partial.view(t, k, h).sum(dim=1).to(x.dtype)


_TL_DTYPE = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}
