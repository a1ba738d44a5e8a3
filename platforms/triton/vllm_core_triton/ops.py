"""``TritonLayerOps``: the core's ``LayerOps`` contract served by our Triton kernels.

Hand an instance to ``get_model(..., ops=TritonLayerOps())`` on a GPU (CUDA here; the kernels
are pure Triton, so ROCm and XPU can use the same class). Numerics follow the core's
``TorchLayerOps`` (HF order of operations); the one difference is that rotary arithmetic is done
in float32 and rounded once, where the torch version multiplies in the model dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vllm_core.model_executor.layers.ops import LayerOps
from vllm_core.model_executor.quantization.quantized_weights import (
    INT8_MAX,
    Fp8Weight,
    Int8Weight,
    WNA16Weight,
    quantize_per_token,
)


class TritonLayerOps(LayerOps):
    """Elementwise layer kernels in Triton (imports Triton on first use, not at import).

    ``gemv_max_rows``: linear layers over at most this many rows (decode batches) run our
    skinny GEMM (``kernels/gemv.py``) instead of cuBLAS; 0 keeps cuBLAS everywhere."""

    def __init__(self, gemv_max_rows: int = 0) -> None:
        self.gemv_max_rows = gemv_max_rows

    def linear(self, x: torch.Tensor, weight: torch.Tensor,
               bias: torch.Tensor | None = None) -> torch.Tensor:
        if self._use_gemv(x, weight):
            from vllm_core_triton.kernels.gemv import gemv

            return gemv(x if x.stride(-1) == 1 else x.contiguous(), weight, bias)
        return F.linear(x, weight, bias)

    def silu_and_mul_linear(self, x: torch.Tensor, weight: torch.Tensor,
                            bias: torch.Tensor | None = None) -> torch.Tensor:
        """One skinny-GEMM launch for small batches (activation computed as the input is
        read), else the activation kernel then ``linear``."""
        if self._use_gemv(x, weight):
            from vllm_core_triton.kernels.gemv import gemv

            return gemv(x if x.stride(-1) == 1 else x.contiguous(), weight, bias, silu_mul=True)
        return self.linear(self.silu_and_mul(x), weight, bias)

    def lora_kernels(self) -> object:
        """The SGMV shrink/expand kernels (``kernels/lora.py``) for multi-LoRA batches."""
        from vllm_core_triton.kernels.lora import TritonLoRAKernels

        return TritonLoRAKernels()

    def _use_gemv(self, x: torch.Tensor, weight: torch.Tensor) -> bool:
        rows = x.shape[0] if x.dim() == 2 else -1
        return 0 < rows <= self.gemv_max_rows and weight.dtype in (torch.bfloat16,
                                                                    torch.float16)

    def rms_norm(self, x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
        from vllm_core_triton.kernels.rms_norm import rms_norm

        return rms_norm(x, w, eps)

    def fused_add_rms_norm(self, x: torch.Tensor, residual: torch.Tensor, w: torch.Tensor,
                           eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        from vllm_core_triton.kernels.rms_norm import fused_add_rms_norm

        return fused_add_rms_norm(x, residual, w, eps)

    def rotary(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
               cos_sin_cache: torch.Tensor, head_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotates ``q`` and ``k`` in place and returns them."""
        from vllm_core_triton.kernels.rotary import rotary_embedding

        return rotary_embedding(positions, q, k, cos_sin_cache, head_size)

    def silu_and_mul(self, x: torch.Tensor) -> torch.Tensor:
        from vllm_core_triton.kernels.activation import silu_and_mul

        return silu_and_mul(x)

    def fused_moe(self, x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor,
                  topk_weights: torch.Tensor, topk_ids: torch.Tensor) -> torch.Tensor:
        """Two grouped-GEMM launches (gate-up with SiLU-and-mul, down with the routing
        weights) over rows sorted by expert (``kernels/fused_moe.py``)."""
        from vllm_core_triton.kernels.fused_moe import fused_moe

        return fused_moe(x, w13, w2, topk_weights, topk_ids)

    # ------------------------------------------------------------------ quantized linears
    def fused_moe_fp8(self, x: torch.Tensor, w: object, topk_weights: torch.Tensor,
                      topk_ids: torch.Tensor) -> torch.Tensor:
        """FP8 experts on the FP8 tensor cores (sm >= 8.9): the fused-MoE kernels with float8
        operands and row / channel scales; the reference on older GPUs."""
        if x.device.type == "cuda" and torch.cuda.get_device_capability(x.device) < (8, 9):
            return super().fused_moe_fp8(x, w, topk_weights, topk_ids)
        from vllm_core_triton.kernels.fused_moe import fused_moe_fp8

        return fused_moe_fp8(x, w, topk_weights, topk_ids)

    def wna16_linear(self, x: torch.Tensor, w: WNA16Weight,
                     bias: torch.Tensor | None = None) -> torch.Tensor:
        """Our Triton kernel (``kernels/wna16.py``): de-quantization fused into the GEMV /
        GEMM."""
        from vllm_core_triton.kernels.wna16 import wna16_linear

        return wna16_linear(x, w.qweight, w.scales, w.zeros, w.g_idx, w.bits, w.group_size,
                            bias)

    def fp8_linear(self, x: torch.Tensor, w: Fp8Weight,
                   bias: torch.Tensor | None = None) -> torch.Tensor:
        """``torch._scaled_mm`` on the FP8 tensor cores (row-wise scales: per token for the
        activations, per channel for the weight) where the GPU has them (compute capability
        >= 8.9) and the model runs in bfloat16; the reference otherwise."""
        if not _scaled_mm_usable(x, w):
            return super().fp8_linear(x, w, bias)
        from vllm_core_triton.kernels.quant_fp8 import per_token_quant_fp8

        # one launch (amax, scale, cast) instead of eight torch ops; sx [M, 1] float32 and
        # the weight's scale [1, N] float32, the row-wise layout _scaled_mm takes
        xq, sx = per_token_quant_fp8(x if x.stride(-1) == 1 else x.contiguous(), w.input_scale)
        return torch._scaled_mm(xq, w.weight.t(), scale_a=sx, scale_b=_row_scale(w),
                                bias=bias, out_dtype=torch.bfloat16)

    def int8_linear(self, x: torch.Tensor, w: Int8Weight,
                    bias: torch.Tensor | None = None) -> torch.Tensor:
        """``torch._int_mm`` (int8 tensor cores, int32 accumulation) on CUDA; rows are
        padded to 32 when fewer than 17 (its minimum), then both scales applied."""
        if x.device.type != "cuda" or x.shape[-1] % 8 or w.weight.shape[0] % 8:
            return super().int8_linear(x, w, bias)
        xq, sx = quantize_per_token(x, INT8_MAX, w.input_scale, torch.int8)
        m = xq.shape[0]
        if m <= 16:
            xq = torch.cat([xq, xq.new_zeros(32 - m, xq.shape[1])])
        acc = torch._int_mm(xq, w.weight.t())[:m]
        y = acc.float() * sx * w.weight_scale.view(1, -1)
        if bias is not None:
            y = y + bias.float()
        return y.to(x.dtype)

    def quant_kernel_name(self, kind: str, w: object) -> str:
        if kind == "wna16":
            if isinstance(w, WNA16Weight):
                from vllm_core_triton.kernels.wna16 import decode_kernel_name

                return f"triton wna16 (fused de-quantization; {decode_kernel_name(w)})"
            return "triton wna16 (fused de-quantization GEMV/GEMM)"
        if kind == "fp8" and isinstance(w, Fp8Weight) and _scaled_mm_usable(None, w):
            return "torch._scaled_mm (FP8 tensor cores, row-wise scales)"
        if kind == "int8" and isinstance(w, Int8Weight) and w.weight.device.type == "cuda":
            return "torch._int_mm (INT8 tensor cores)"
        return super().quant_kernel_name(kind, w)


def _row_scale(w: Fp8Weight) -> torch.Tensor:
    """The weight's scales as the contiguous float32 [1, N] row ``_scaled_mm`` wants with
    row-wise activation scales (a per-tensor scale is broadcast: the two may not be mixed)."""
    n = w.weight.shape[0]
    scale = w.weight_scale.float().reshape(-1)
    if scale.numel() == n:
        return scale.view(1, n)
    return scale.expand(n).reshape(1, n).contiguous()


def _scaled_mm_usable(x: torch.Tensor | None, w: Fp8Weight) -> bool:
    """FP8 tensor cores (sm 8.9+), per-channel / per-tensor scales, bf16 activations, K and N
    multiples of 16."""
    dev = w.weight.device
    if dev.type != "cuda" or w.block_scale is not None or w.weight_scale is None:
        return False
    if torch.cuda.get_device_capability(dev) < (8, 9):
        return False
    n, k = w.weight.shape
    if n % 16 or k % 16:
        return False
    return x is None or x.dtype == torch.bfloat16
