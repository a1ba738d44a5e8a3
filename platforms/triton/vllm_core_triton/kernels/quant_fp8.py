"""Dynamic per-token FP8 (e4m3) quantization of activations in one launch.

``per_token_quant_fp8(x)`` returns ``(x_q, s)`` with ``x ~= x_q * s`` per row, exactly the
core reference ``quantize_per_token(x, 448, None, float8_e4m3fn)``
(``quantization/quantized_weights.py``): ``s = max(max|x_row|, 1e-12) / 448`` (float32),
``x_q = fp8(clamp(x / s, -448, 448))`` rounded to nearest even. With a static ``scale`` (one
float32 value) every row uses it. The reference is eight torch launches with a float32 copy
of ``x``; here one program per row reads the row twice (amax, then scale and cast) and writes
one byte per element and one float32 scale: no host sync, no data-dependent shapes, so
CUDA-graph safe.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

FP8_E4M3_MAX = 448.0


@triton.jit
def _per_token_quant_kernel(x_ptr, q_ptr, s_ptr, static_ptr, K, stride_x, stride_q,
                            QMAX: tl.constexpr, BLOCK_K: tl.constexpr, STATIC: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_K)
    x_row = x_ptr + row * stride_x
    if STATIC:
        s = tl.load(static_ptr).to(tl.float32)
    else:
        amax = tl.zeros([BLOCK_K], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            x = tl.load(x_row + k0 + offs, mask=k0 + offs < K, other=0.0).to(tl.float32)
            amax = tl.maximum(amax, tl.abs(x))
        s = tl.math.div_rn(tl.maximum(tl.max(amax, 0), 1e-12), QMAX)   # IEEE, like torch
        tl.store(s_ptr + row, s)
    for k0 in range(0, K, BLOCK_K):
        mask = k0 + offs < K
        x = tl.load(x_row + k0 + offs, mask=mask, other=0.0).to(tl.float32)
        y = tl.minimum(tl.maximum(tl.math.div_rn(x, s), -QMAX), QMAX)
        tl.store(q_ptr + row * stride_q + k0 + offs, y.to(q_ptr.dtype.element_ty), mask=mask)


def per_token_quant_fp8(x: torch.Tensor, scale: torch.Tensor | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` [M, K] (any float dtype, last dimension contiguous) -> ``(x_q`` float8_e4m3fn
    [M, K] contiguous, ``s`` float32 [M, 1]``)``; with ``scale`` (static, one value) ``s`` is
    that value broadcast to [M, 1]."""
    if x.dim() != 2 or x.stride(-1) != 1:
        raise ValueError(f"x must be 2-D and contiguous in its last dimension, got shape "
                         f"{tuple(x.shape)} strides {x.stride()}")
    m, k = x.shape
    q = torch.empty((m, k), dtype=torch.float8_e4m3fn, device=x.device)
    if scale is not None:
        s = scale.float().reshape(1, 1).expand(m, 1).contiguous()
    else:
        s = torch.empty((m, 1), dtype=torch.float32, device=x.device)
    if m == 0:
        return q, s
    block_k = min(triton.next_power_of_2(k), 2048)
    _per_token_quant_kernel[(m,)](
        x, q, s, s if scale is None else scale.float().reshape(1), k, x.stride(0), q.stride(0),
        QMAX=FP8_E4M3_MAX, BLOCK_K=block_k, STATIC=scale is not None,
        num_warps=4 if block_k <= 1024 else 8)
    return q, s
