"""Linear and embedding layers with uninitialised parameters.

The loader builds models directly on the target device and then fills every parameter from the
checkpoint (or with dummy values), so these layers allocate with ``torch.empty`` and skip the
random initialisation of ``nn.Linear`` / ``nn.Embedding`` (which costs seconds on big models).
Parameters are created in the current default dtype and device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vllm_core.model_executor.layers.ops import LayerOps, TorchLayerOps


class Linear(nn.Module):
    """``y = x @ weight.T (+ bias)``; weight [out_features, in_features]."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False,
                 ops: LayerOps | None = None) -> None:
        super().__init__()
        self.ops = ops or TorchLayerOps()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features), requires_grad=False)
        self.bias = (nn.Parameter(torch.empty(out_features), requires_grad=False)
                     if bias else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ops.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, bias={self.bias is not None}"


class Embedding(nn.Module):
    """Token embedding lookup; weight [num_embeddings, embedding_dim]."""

    def __init__(self, num_embeddings: int, embedding_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_embeddings, embedding_dim),
                                   requires_grad=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight)
