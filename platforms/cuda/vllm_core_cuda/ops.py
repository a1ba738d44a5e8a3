"""``TritonLayerOps``: the core's ``LayerOps`` contract served by our Triton kernels.

Hand an instance to ``get_model(..., ops=TritonLayerOps())`` on a GPU (CUDA here; the kernels
are pure Triton, so ROCm and XPU can use the same class). Numerics follow the core's
``TorchLayerOps`` (HF order of operations); the one difference is that rotary arithmetic is done
in float32 and rounded once, where the torch version multiplies in the model dtype.
"""

from __future__ import annotations

import torch

from vllm_core.model_executor.layers.ops import LayerOps


class TritonLayerOps(LayerOps):
    """Elementwise layer kernels in Triton (imports Triton on first use, not at import)."""

    def rms_norm(self, x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
        from vllm_core_cuda.kernels.rms_norm import rms_norm

        return rms_norm(x, w, eps)

    def fused_add_rms_norm(self, x: torch.Tensor, residual: torch.Tensor, w: torch.Tensor,
                           eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        from vllm_core_cuda.kernels.rms_norm import fused_add_rms_norm

        return fused_add_rms_norm(x, residual, w, eps)

    def rotary(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
               cos_sin_cache: torch.Tensor, head_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotates ``q`` and ``k`` in place and returns them."""
        from vllm_core_cuda.kernels.rotary import rotary_embedding

        return rotary_embedding(positions, q, k, cos_sin_cache, head_size)

    def silu_and_mul(self, x: torch.Tensor) -> torch.Tensor:
        from vllm_core_cuda.kernels.activation import silu_and_mul

        return silu_and_mul(x)
