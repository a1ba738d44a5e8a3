"""The CPU plugin's quantized linear kernels (``csrc/wna16_gemm.cpp``) behind ``CpuLayerOps``.

``wna16_linear(x, w, bias)`` runs ``torch.ops.vllm_core_cpu.wna16_linear`` on the core's
``WNA16Weight`` layout as it is (no CPU-specific repack) when the kernel build is available and
the weight fits it, and returns None otherwise so the caller uses the torch reference. The
kernel covers 4 / 8 bits, any group size that divides the inputs (a multiple of the values
packed per int32; ``group_size == -1`` layers have one group), no act-order ``g_idx``, output
features a multiple of 16, and float32 / bfloat16 / float16 activations whose dtype the scales,
zero points and bias share. By default it computes in fp32; with ``int8=True`` (x86 AVX2
builds, ``VLLM_CPU_WNA16_ACTIVATIONS=int8``) it quantizes the activations to int8 per block of
32 inputs and multiplies in integers (llama.cpp's trade: at most half a quantization step of
error per input, several times faster at batch 1). Either way a row's result does not depend
on the other rows of the batch.
"""

from __future__ import annotations

import functools

import torch

from vllm_core.model_executor.quantization.quantized_weights import WNA16Weight

KERNEL_NAME = "cpu wna16_gemm (C++: packed int4/int8 read directly, fp32 accumulation)"
KERNEL_NAME_INT8 = ("cpu wna16_gemm (C++ AVX2: packed int4/int8 read directly, activations int8 "
                    "per 32 inputs, integer dot products)")


@functools.cache
def int8_activations_available() -> bool:
    """True when the built kernel has the int8-activation path (x86 AVX2 builds,
    ``csrc/wna16_avx2.h``: error at most half a quantization step per input)."""
    return kernels_available() and bool(torch.ops.vllm_core_cpu.wna16_has_int8_activations())


def kernel_name(int8: bool) -> str:
    """The start-up log's name of the kernel a call with ``int8`` runs."""
    return KERNEL_NAME_INT8 if int8 else KERNEL_NAME


def kernel_fits(x: torch.Tensor, w: WNA16Weight, bias: torch.Tensor | None) -> bool:
    """True when the C++ kernel handles this call (see the module docstring)."""
    p = 32 // w.bits
    gs = w.group_size if w.group_size > 0 else w.in_features
    return (w.bits in (4, 8) and w.g_idx is None and w.out_features % 16 == 0
            and w.in_features % gs == 0 and gs % p == 0
            and x.dtype in (torch.float32, torch.bfloat16, torch.float16)
            and w.scales.dtype == x.dtype and w.zeros.dtype == x.dtype
            and (bias is None or bias.dtype == x.dtype))


@functools.cache
def kernels_available() -> bool:
    from vllm_core_cpu.kernels import load_kernels

    return load_kernels() and hasattr(torch.ops.vllm_core_cpu, "wna16_linear")


def wna16_linear(x: torch.Tensor, w: WNA16Weight, bias: torch.Tensor | None,
                 int8: bool = False) -> torch.Tensor | None:
    """``x @ dequantize(w).T + bias`` by the C++ kernel, or None when it does not apply;
    ``int8``: the int8-activation path (only where ``int8_activations_available()``)."""
    if not kernel_fits(x, w, bias) or not kernels_available():
        return None
    gs = w.group_size if w.group_size > 0 else w.in_features
    if x.dim() == 2:                 # the decoder's [tokens, features]: no reshapes (~10 us)
        return torch.ops.vllm_core_cpu.wna16_linear(x, w.qweight, w.scales, w.zeros, bias,
                                                    w.bits, gs, int8)
    y = torch.ops.vllm_core_cpu.wna16_linear(x.reshape(-1, x.shape[-1]), w.qweight, w.scales,
                                             w.zeros, bias, w.bits, gs, int8)
    return y.reshape(*x.shape[:-1], w.out_features)
