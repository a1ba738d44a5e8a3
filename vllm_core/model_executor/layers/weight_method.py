"""Weight methods: how a linear layer's weights are created, loaded and applied.

The linear layer is a product of three concerns (design.md section 9): *sharding* (which slice
of a checkpoint tensor this rank owns; ``parallel_linear``), the *weight method* (this module:
unquantized today; GPTQ / AWQ / FP8 / GGUF methods of the quantization issue implement the
same three calls), and *adapters* (a LoRA wrapper around any base linear). A weight method
never decides which slice a rank reads; it receives the slice.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn

from vllm_core.model_executor.layers.ops import LayerOps


class LinearMethod(ABC):
    """Creates, loads and applies the weights of one linear layer (per-rank shapes)."""

    @abstractmethod
    def create_weights(self, layer: nn.Module, in_features: int, out_features: int,
                       bias: bool) -> None:
        """Register ``layer.weight`` (and ``layer.bias`` or None) for a rank-local
        ``[out_features, in_features]`` projection, uninitialised, in the default dtype and
        device."""

    def load_rows(self, layer: nn.Module, param_name: str, rows: slice | None,
                  tensor: torch.Tensor) -> None:
        """Copy a checkpoint slice into ``rows`` of the named parameter (all rows: None).
        Raises ValueError on a shape mismatch."""
        param = getattr(layer, param_name)
        dest = param.data if rows is None else param.data[rows]
        if tuple(dest.shape) != tuple(tensor.shape):
            raise ValueError(f"has shape {tuple(tensor.shape)}, expected {tuple(dest.shape)} "
                             f"(config and weights disagree)")
        dest.copy_(tensor)

    def process_after_loading(self, layer: nn.Module) -> None:
        """Repack loaded weights for the kernels (no-op when unquantized)."""

    @abstractmethod
    def apply(self, layer: nn.Module, x: torch.Tensor,
              bias: torch.Tensor | None) -> torch.Tensor:
        """``x @ W.T (+ bias)`` for the rank-local weight."""

    def apply_silu_and_mul(self, layer: nn.Module, x: torch.Tensor,
                           bias: torch.Tensor | None) -> torch.Tensor:
        """``apply(silu_and_mul(x))``: a gated MLP's activation fused with its down
        projection where the kernels allow it."""
        return self.apply(layer, layer.ops.silu_and_mul(x), bias)


class UnquantizedLinearMethod(LinearMethod):
    """Dense weights in the model dtype; the matmul is ``LayerOps.linear``."""

    def create_weights(self, layer: nn.Module, in_features: int, out_features: int,
                       bias: bool) -> None:
        layer.weight = nn.Parameter(torch.empty(out_features, in_features), requires_grad=False)
        layer.bias = (nn.Parameter(torch.empty(out_features), requires_grad=False)
                      if bias else None)

    def apply(self, layer: nn.Module, x: torch.Tensor,
              bias: torch.Tensor | None) -> torch.Tensor:
        ops: LayerOps = layer.ops
        return ops.linear(x, layer.weight, bias)

    def apply_silu_and_mul(self, layer: nn.Module, x: torch.Tensor,
                           bias: torch.Tensor | None) -> torch.Tensor:
        return layer.ops.silu_and_mul_linear(x, layer.weight, bias)
