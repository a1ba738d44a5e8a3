"""The CPU plugin's W8A8 INT8 linear (``csrc/int8_gemm.cpp``) behind ``CpuLayerOps``.

``int8_linear(x, w, bias, allow_amx)`` runs ``torch.ops.vllm_core_cpu.int8_linear`` on the core's
``Int8Weight`` as it is (int8 ``[N, K]``, fp32 per-channel scales, dynamic per-token or one
static activation scale; nothing repacked at load: the AMX and packed VNNI paths repack a
column block per call) when the kernel build is available and the
call fits it, and returns None otherwise so the caller uses the torch reference. The kernel
quantizes the activations itself (the same rounding as ``quantize_per_token``), multiplies in
exact int32 and applies the scales in the reference's order, so its result equals
``int8_linear_reference`` bit for bit and does not depend on the batch a row is in.

Fits: CPU tensors, float32 / bfloat16 / float16 activations, an int8 ``[N, K]`` weight, float32
``[N]`` weight scales (per-tensor ones are already broadcast by the loader), a one-element
float32 input scale or None, any bias (passed as float32, as the reference adds it).
"""

from __future__ import annotations

import functools

import torch

from vllm_core.model_executor.quantization.quantized_weights import Int8Weight

_KERNEL = "cpu int8_gemm (C++: activations quantized in the kernel, exact int32 dot products"
KERNEL_NAME = _KERNEL + ")"
KERNEL_NAME_AMX = _KERNEL + "; AMX int8 tiles from 16 rows)"
KERNEL_NAME_PACKED = _KERNEL + "; AVX-512 VNNI on per-call packed weights from 8 rows)"


def kernel_fits(x: torch.Tensor, w: Int8Weight) -> bool:
    """True when the C++ kernel handles ``x`` against ``w`` (see the module docstring)."""
    n = w.weight.shape[0] if w.weight.dim() == 2 else -1
    return (x.device.type == "cpu" and w.weight.device.type == "cpu"
            and x.dtype in (torch.float32, torch.bfloat16, torch.float16)
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
    """True when the built kernel has the packed AVX-512 VNNI path (calls of 8 rows or more
    that AMX does not take)."""
    return kernels_available() and bool(torch.ops.vllm_core_cpu.int8_vnni_packed_built())


def kernel_name(allow_amx: bool, allow_packed: bool = True) -> str:
    """The start-up log's name of the kernel the calls run."""
    if allow_amx and amx_ready():
        return KERNEL_NAME_AMX
    return KERNEL_NAME_PACKED if allow_packed and packed_built() else KERNEL_NAME


def int8_linear(x: torch.Tensor, w: Int8Weight, bias: torch.Tensor | None,
                allow_amx: bool = True, allow_packed: bool = True) -> torch.Tensor | None:
    """``int8_linear_reference(x, w, bias)`` by the C++ kernel, or None when it does not
    apply; ``allow_amx``: calls of 16 rows or more may use the AMX tiles; ``allow_packed``:
    those AMX does not take may repack the weight for the AVX-512 VNNI path. Every path gives
    the same result bit for bit."""
    if not kernel_fits(x, w) or not kernels_available():
        return None
    x2 = x.reshape(-1, x.shape[-1])
    b = None if bias is None else bias.float()
    y = torch.ops.vllm_core_cpu.int8_linear(x2, w.weight, w.weight_scale, w.input_scale, b,
                                            allow_amx, allow_packed)
    return y.reshape(*x.shape[:-1], w.weight.shape[0])
