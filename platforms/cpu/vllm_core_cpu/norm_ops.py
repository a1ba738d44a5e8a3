"""The CPU plugin's RMS norm and gated-activation kernels (``csrc/rms_norm.cpp``,
``csrc/activation.cpp``) behind ``CpuLayerOps``.

One C++ call per norm (and its residual add) instead of the reference's half dozen torch ops:
a 135M model's decode step runs 61 norms and 30 ``silu_and_mul``, whose op dispatches were a
few percent of the step.
Same roundings to the activation dtype as ``TorchLayerOps.rms_norm`` (the mean of squares in
fp32, summed in another order); each function returns None when the kernel does not apply
(no kernel build, a dtype other than float32 / bfloat16 / float16, a weight of another dtype),
and the caller uses the reference.
"""

from __future__ import annotations

import torch

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def kernel_fits(x: torch.Tensor, w: torch.Tensor) -> bool:
    from vllm_core_cpu.quant_ops import kernels_available

    return (x.dtype in _DTYPES and w.dtype == x.dtype and x.device.type == "cpu"
            and kernels_available())


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor | None:
    """``w * rms_normalized(x)`` by the kernel, or None when it does not apply."""
    if not kernel_fits(x, w):
        return None
    return torch.ops.vllm_core_cpu.rms_norm(x, w, eps)


def fused_add_rms_norm(x: torch.Tensor, residual: torch.Tensor, w: torch.Tensor,
                       eps: float) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(rms_norm(x + residual), x + residual)`` by the kernel, or None."""
    if not kernel_fits(x, w) or residual.dtype != x.dtype or residual.shape != x.shape:
        return None
    return torch.ops.vllm_core_cpu.fused_add_rms_norm(x, residual, w, eps)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor | None:
    """``silu(x[..., :d]) * x[..., d:]`` by the kernel (the reference's roundings), or None."""
    if not kernel_fits(x, x):
        return None
    return torch.ops.vllm_core_cpu.silu_and_mul(x)
