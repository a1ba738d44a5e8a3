"""The canonical quantized weights every kernel reads, and their torch references.

Each checkpoint format (GPTQ, AWQ, compressed-tensors, FP8) is converted once, after loading,
into one of three layouts; kernels (``LayerOps.wna16_linear`` / ``int8_linear`` /
``fp8_linear``, overridden by the platforms) are written against these layouts only, and the
functions here are the de-quantize-then-matmul references they are tested against.

``WNA16Weight`` (int4 / int8 weights, float activations; GPTQ's layout with real zero points):
    ``qweight``  int32 ``[K // (32 // bits), N]``: input feature ``k`` of output ``n`` is bits
                 ``[bits * (k % p), bits * (k % p + 1))`` of ``qweight[k // p, n]``
                 (``p = 32 // bits``, least significant first), an unsigned integer ``q``;
    ``scales``   ``[G, N]`` in the activation dtype; ``zeros`` ``[G, N]``, the unsigned
                 integer zero point (``2 ** (bits - 1)`` when symmetric) in the same dtype;
    ``g_idx``    int32 ``[K]``, the group of each input feature, or None for ``k // group_size``;
    the weight is ``W[n, k] = (q[k, n] - zeros[g(k), n]) * scales[g(k), n]``.

``Int8Weight`` (W8A8 INT8): ``weight`` int8 ``[N, K]``, ``weight_scale`` float32 ``[N]``
(per output channel; a per-tensor scale is broadcast), ``input_scale`` None (dynamic,
per token: ``s = max|x_row| / 127``) or a float32 scalar (static); symmetric both sides.
``y = (round(x / s_x) @ weight.T) * s_x * s_w``.

``Fp8Weight`` (FP8 e4m3): ``weight`` float8_e4m3fn ``[N, K]`` with either ``weight_scale``
float32 ``[N]`` (per channel / per tensor) and activations quantized the same way as INT8
(dynamic per token or static scalar; ``s = max|x| / 448``), or ``block_scale`` float32
``[ceil(N / bn), ceil(K / bk)]`` (block-scaled checkpoints) with activations kept in the model
dtype (the weight is de-quantized block-wise).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

FP8_MAX = 448.0          # largest finite float8_e4m3fn
INT8_MAX = 127.0


@dataclass(slots=True)
class WNA16Weight:
    qweight: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    g_idx: torch.Tensor | None
    bits: int
    group_size: int
    in_features: int
    out_features: int

    @property
    def pack(self) -> int:
        return 32 // self.bits

    def groups(self) -> torch.Tensor:
        """int64 ``[K]``: the group of every input feature."""
        if self.g_idx is not None:
            return self.g_idx.long()
        return torch.arange(self.in_features, device=self.qweight.device) // self.group_size


@dataclass(slots=True)
class Int8Weight:
    weight: torch.Tensor
    weight_scale: torch.Tensor
    input_scale: torch.Tensor | None


@dataclass(slots=True)
class Fp8Weight:
    weight: torch.Tensor
    weight_scale: torch.Tensor | None
    block_scale: torch.Tensor | None
    block_size: tuple[int, int] | None
    input_scale: torch.Tensor | None


# ----------------------------------------------------------------------------- int packing
def unpack_int32(packed: torch.Tensor, bits: int, dim: int, size: int,
                 order: tuple[int, ...] | None = None) -> torch.Tensor:
    """int32 words -> unsigned ``bits``-bit integers (int32) along ``dim`` (0 or 1), ``size``
    of them. Element ``j`` of a word sits at bits ``bits * order[j]`` (``order`` None: ``j``,
    least significant first; AWQ uses ``(0, 2, 4, 6, 1, 3, 5, 7)``)."""
    p = 32 // bits
    shifts = torch.arange(p, device=packed.device, dtype=torch.int32) * bits
    if order is not None:
        shifts = shifts[torch.tensor(order, device=packed.device)]
    mask = (1 << bits) - 1
    if dim == 0:
        vals = (packed.unsqueeze(1) >> shifts.view(1, p, 1)) & mask      # [R, p, C]
        return vals.reshape(-1, packed.shape[1])[:size]
    vals = (packed.unsqueeze(2) >> shifts.view(1, 1, p)) & mask          # [R, C, p]
    return vals.reshape(packed.shape[0], -1)[:, :size]


def pack_int32(values: torch.Tensor, bits: int, dim: int,
               order: tuple[int, ...] | None = None) -> torch.Tensor:
    """The inverse of ``unpack_int32``: unsigned integers (< 2**bits) packed into int32 along
    ``dim``; the packed dimension is padded with zeros to a multiple of ``32 // bits``."""
    p = 32 // bits
    v = values.to(torch.int64)
    if dim == 1:
        v = v.t()
    rows = v.shape[0]
    pad = (-rows) % p
    if pad:
        v = torch.cat([v, v.new_zeros(pad, v.shape[1])])
    v = v.reshape(-1, p, v.shape[1])
    shifts = torch.arange(p, device=v.device, dtype=torch.int64) * bits
    if order is not None:
        shifts = shifts[torch.tensor(order, device=v.device)]
    word = (v << shifts.view(1, p, 1)).sum(dim=1)
    word = torch.where(word >= 2**31, word - 2**32, word).to(torch.int32)
    return word.t().contiguous() if dim == 1 else word.contiguous()


# ----------------------------------------------------------------------------- references
def dequantize_wna16(w: WNA16Weight, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``[N, K]`` float weight of a ``WNA16Weight`` (computed in float32, then cast)."""
    q = unpack_int32(w.qweight, w.bits, 0, w.in_features).float()         # [K, N]
    g = w.groups()
    weight = (q - w.zeros.float()[g]) * w.scales.float()[g]
    return weight.t().to(dtype)


def wna16_linear_reference(x: torch.Tensor, w: WNA16Weight,
                           bias: torch.Tensor | None = None) -> torch.Tensor:
    """De-quantize to ``x.dtype``, then ``F.linear``."""
    return torch.nn.functional.linear(x, dequantize_wna16(w, x.dtype), bias)


def quantize_per_token(x: torch.Tensor, qmax: float, scale: torch.Tensor | None,
                       dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x_q, s)`` with ``x ~= x_q * s``: symmetric, per row (``scale`` None: ``s = max|x_row|
    / qmax``, at least 1e-12 / qmax) or with the given scalar ``scale``. Integer targets are
    rounded half to even, float8 targets by the cast; values are clamped to ``[-qmax, qmax]``.
    ``s`` is float32 ``[M, 1]`` (dynamic) or the scalar."""
    xf = x.float()
    if scale is None:
        s = xf.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) / qmax
    else:
        s = scale.float()
    y = (xf / s).clamp(-qmax, qmax)
    if not dtype.is_floating_point:
        y = y.round()
    return y.to(dtype), s


def int8_linear_reference(x: torch.Tensor, w: Int8Weight,
                          bias: torch.Tensor | None = None) -> torch.Tensor:
    """Quantize ``x`` (int8, symmetric), integer matmul emulated in float64, then both
    scales; the result in ``x.dtype``."""
    xq, sx = quantize_per_token(x, INT8_MAX, w.input_scale, torch.int8)
    acc = (xq.double() @ w.weight.double().t()).float()
    y = acc * sx * w.weight_scale.float().view(1, -1)
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


def dequantize_fp8(w: Fp8Weight) -> torch.Tensor:
    """``[N, K]`` float32 weight of an ``Fp8Weight``."""
    weight = w.weight.float()
    if w.block_scale is not None:
        bn, bk = w.block_size
        n, k = weight.shape
        scale = w.block_scale.float().repeat_interleave(bn, 0)[:n].repeat_interleave(bk, 1)
        return weight * scale[:, :k]
    return weight * w.weight_scale.float().view(-1, 1)


def fp8_linear_reference(x: torch.Tensor, w: Fp8Weight,
                         bias: torch.Tensor | None = None) -> torch.Tensor:
    """Per-channel / per-tensor: quantize ``x`` to float8 (dynamic per token or static), matmul
    the de-quantized values in float32; block-scaled: ``x`` as it is. Result in ``x.dtype``."""
    weight = dequantize_fp8(w)
    if w.block_scale is not None:
        xf = x.float()
    else:
        xq, sx = quantize_per_token(x, FP8_MAX, w.input_scale, torch.float8_e4m3fn)
        xf = xq.float() * sx
    y = xf @ weight.t()
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)
