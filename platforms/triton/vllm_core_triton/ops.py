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
