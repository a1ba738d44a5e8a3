"""Gated activations."""

from __future__ import annotations

import torch
from torch import nn

from vllm_core.model_executor.layers.ops import LayerOps


class SiluAndMul(nn.Module):
    """x [..., 2d] (gate then up, as the fused gate_up projection lays them out) ->
    silu(gate) * up, shape [..., d]."""

    def __init__(self, ops: LayerOps) -> None:
        super().__init__()
        self.ops = ops

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ops.silu_and_mul(x)
