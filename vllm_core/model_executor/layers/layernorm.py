"""RMSNorm with an optional fused residual add."""

from __future__ import annotations

import torch
from torch import nn

from vllm_core.model_executor.layers.ops import LayerOps


class RMSNorm(nn.Module):
    """``forward(x)`` -> normed ``x``; ``forward(x, residual)`` -> ``(norm(x + residual),
    x + residual)``, the pre-norm decoder's residual stream update in one call."""

    def __init__(self, hidden_size: int, eps: float, ops: LayerOps) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size), requires_grad=False)
        self.eps = eps
        self.ops = ops

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if residual is None:
            return self.ops.rms_norm(x, self.weight, self.eps)
        return self.ops.fused_add_rms_norm(x, residual, self.weight, self.eps)
