"""The CPU plugin's W8A8 INT8 linear (``csrc/int8_gemm.cpp``) behind ``CpuLayerOps``.

``int8_linear(x, w, bias, allow_amx)`` runs the C++ kernel on the core's ``Int8Weight`` as it
is (int8 ``[N, K]``, fp32 per-channel scales, dynamic per-token or one static activation
scale; the AMX path repacks a column block per call), or on a ``PackedInt8Weight``: the same
weight packed once at load by ``pack`` (``CpuLayerOps.prepare_quantized``, AVX-512 VNNI
builds), whose layout replaces ``[N, K]`` and is read directly by the VNNI and AMX paths at
every batch size. It returns None when the kernel does not apply to an ``Int8Weight``, so the
caller uses the torch reference. The kernel quantizes the activations itself (the same
rounding as ``quantize_per_token``), multiplies in exact int32 and applies the scales in the
reference's order, so its result equals ``int8_linear_reference`` bit for bit, whichever
layout and path, and does not depend on the batch a row is in.

Fits: CPU tensors, float32 / bfloat16 / float16 activations, an int8 ``[N, K]`` weight, float32
``[N]`` weight scales (per-tensor ones are already broadcast by the loader), a one-element
float32 input scale or None, any bias (passed as float32, as the reference adds it).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from vllm_core.model_executor.quantization.quantized_weights import (
    Int8Weight,
    int8_linear_reference,
)

_KERNEL = "cpu int8_gemm (C++: activations quantized in the kernel, exact int32 dot products"
KERNEL_NAME = _KERNEL + ")"
KERNEL_NAME_AMX = _KERNEL + "; AMX int8 tiles from 16 rows)"
KERNEL_NAME_PACKED = _KERNEL + "; AVX-512 VNNI on weights packed at load)"
KERNEL_NAME_PACKED_AMX = (_KERNEL + "; AVX-512 VNNI on weights packed at load, AMX int8 tiles "
                          "on them from 16 rows)")


@dataclass(slots=True)
class PackedInt8Weight:
    """An ``Int8Weight`` in the packed layout of ``csrc/int8_vnni.h``: ``packed`` int32
    ``[panels, kp / 4, 16]`` (16-column panels, N / 16 rounded up to an even count; word
    ``[p][q][c]``: bytes ``w[16 p + c, 4 q .. 4 q + 3]`` as ``w + 128``; ``kp``: K padded to a
    multiple of 64, u8 128 past N and K), with the weight's scales unchanged. ``unpack`` gives
    the ``Int8Weight`` back exactly."""

    packed: torch.Tensor
    out_features: int
    in_features: int
    weight_scale: torch.Tensor
    input_scale: torch.Tensor | None

    def unpack(self) -> Int8Weight:
        panels, quads, cols = self.packed.shape
        u8 = self.packed.view(torch.uint8).view(panels, quads, cols, 4)
        w = (u8.permute(0, 2, 1, 3).reshape(panels * cols, quads * 4) ^ 0x80).view(torch.int8)
        w = w[:self.out_features, :self.in_features].contiguous()
        return Int8Weight(w, self.weight_scale, self.input_scale)


DTYPES = (torch.float32, torch.bfloat16, torch.float16)    # activations the kernel takes


def kernel_fits(x: torch.Tensor, w: Int8Weight) -> bool:
    """True when the C++ kernel handles ``x`` against ``w`` (see the module docstring)."""
    n = w.weight.shape[0] if w.weight.dim() == 2 else -1
    return (x.device.type == "cpu" and w.weight.device.type == "cpu"
            and x.dtype in DTYPES
            and w.weight.dtype == torch.int8 and w.weight.dim() == 2
            and x.shape[-1] == w.weight.shape[1]
            and w.weight_scale.dtype == torch.float32 and w.weight_scale.numel() == n
            and (w.input_scale is None or (w.input_scale.numel() == 1
                                           and w.input_scale.dtype == torch.float32)))


def kernels_available() -> bool:
    from vllm_core_cpu.kernels import load_kernels

    return load_kernels() and hasattr(torch.ops.vllm_core_cpu, "int8_linear")


@functools.cache
def amx_ready() -> bool:
    """True when the built kernel runs calls of 16 rows or more on AMX int8 tiles."""
    return kernels_available() and bool(torch.ops.vllm_core_cpu.int8_amx_ready())


@functools.cache
def packed_built() -> bool:
    """True when the built kernel can pack weights at load (AVX-512 VNNI; ``pack``)."""
    return kernels_available() and bool(torch.ops.vllm_core_cpu.int8_vnni_packed_built())


def pack(w: Int8Weight) -> PackedInt8Weight | None:
    """``w`` packed for the VNNI / AMX paths, or None where the build cannot (no AVX-512 VNNI)
    or the weight does not fit the kernel."""
    if not packed_built() or not kernel_fits(torch.empty(0, w.weight.shape[-1]), w):
        return None
    n, k = w.weight.shape
    return PackedInt8Weight(torch.ops.vllm_core_cpu.int8_pack(w.weight.contiguous()), n, k,
                            w.weight_scale.contiguous(), w.input_scale)


def kernel_name(allow_amx: bool, packed: bool = False) -> str:
    """The start-up log's name of the kernel the calls run (``packed``: on a
    ``PackedInt8Weight``)."""
    amx = allow_amx and amx_ready()
    if packed:
        return KERNEL_NAME_PACKED_AMX if amx else KERNEL_NAME_PACKED
    return KERNEL_NAME_AMX if amx else KERNEL_NAME


def int8_linear(x: torch.Tensor, w: Int8Weight | PackedInt8Weight, bias: torch.Tensor | None,
                allow_amx: bool = True) -> torch.Tensor | None:
    """``int8_linear_reference(x, w, bias)`` by the C++ kernel, or None when it does not
    apply to an ``Int8Weight``; a ``PackedInt8Weight`` always runs here (the kernel when the
    activations fit it, else the reference on the unpacked weight). ``allow_amx``: calls of
    16 rows or more may use the AMX tiles. Every path gives the same result bit for bit."""
    packed = isinstance(w, PackedInt8Weight)
    if packed:
        if not (x.device.type == "cpu" and x.dtype in DTYPES and x.shape[-1] == w.in_features):
            return int8_linear_reference(x, w.unpack(), bias)
        n = w.out_features
    elif not kernel_fits(x, w) or not kernels_available():
        return None
    else:
        n = w.weight.shape[0]
    x2 = x.reshape(-1, x.shape[-1])
    b = None if bias is None else bias.float()
    if packed:
        y = torch.ops.vllm_core_cpu.int8_linear_packed(x2, w.packed, n, w.weight_scale,
                                                       w.input_scale, b, allow_amx)
    else:
        y = torch.ops.vllm_core_cpu.int8_linear(x2, w.weight, w.weight_scale, w.input_scale, b,
                                                allow_amx)
    return y.reshape(*x.shape[:-1], n)
