"""Weight methods of stacked expert tensors: the ``LinearMethod`` contract extended to MoE.

A ``MoEMethod`` creates the rank-local stacked weights of a ``FusedMoE`` layer, copies one
expert's checkpoint slice into them, repacks after loading, and applies them to a batch with
its routing. The layer decides *which* experts and which slice of the intermediate dimension
a rank holds (``ExpertPlacement``); the method only receives the slices, exactly as a
``LinearMethod`` does for a linear layer. A quantized method (FP8, GPTQ, ...) registers other
parameters (scales, packed weights) in ``create_weights``, fills them in ``load_expert`` /
``process_after_loading`` and calls its own kernel in ``apply``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn

from vllm_core.model_executor.layers.ops import LayerOps


class MoEMethod(ABC):
    """Creates, loads and applies the stacked weights of one ``FusedMoE`` layer.

    ``reads_sources``: False (the default) when the layer reads each expert's float slice and
    hands it to ``load_expert``; True for a method that takes the checkpoint source itself
    (``load_expert_source``: e.g. GGUF blocks kept quantized, read without a float copy)."""

    reads_sources: bool = False

    @abstractmethod
    def create_weights(self, layer: nn.Module, num_experts: int, hidden_size: int,
                       intermediate_size: int) -> None:
        """Register the rank-local weights of ``num_experts`` experts (uninitialised, default
        dtype and device): unquantized, ``layer.w13_weight`` [E, 2I, H] (rows ``[gate | up]``)
        and ``layer.w2_weight`` [E, H, I]."""

    def load_expert(self, layer: nn.Module, param_name: str, expert: int, rows: slice | None,
                    tensor: torch.Tensor) -> None:
        """Copy one expert's checkpoint slice into ``rows`` of ``param_name[expert]`` (all
        rows: None). Raises ValueError on a shape mismatch."""
        dest = getattr(layer, param_name).data[expert]
        if rows is not None:
            dest = dest[rows]
        if tuple(dest.shape) != tuple(tensor.shape):
            raise ValueError(f"has shape {tuple(tensor.shape)}, expected {tuple(dest.shape)} "
                             f"(config and weights disagree)")
        dest.copy_(tensor)

    def load_expert_source(self, layer: nn.Module, projection: str, expert: int,
                           source: object, inter_start: int, inter_local: int) -> None:
        """With ``reads_sources``: load local ``expert``'s ``projection`` (gate / up: rows
        ``[inter_start, inter_start + inter_local)`` of ``[I, H]``; down: those columns of
        ``[H, I]``) straight from the checkpoint ``source``."""
        raise NotImplementedError(f"{type(self).__name__} reads float slices (load_expert)")

    def process_after_loading(self, layer: nn.Module) -> None:
        """Repack loaded weights for the kernels (no-op when unquantized)."""

    @abstractmethod
    def apply(self, layer: nn.Module, x: torch.Tensor, topk_weights: torch.Tensor,
              topk_ids: torch.Tensor) -> torch.Tensor:
        """The experts' weighted sum for ``x`` [T, H] routed to local experts ``topk_ids``
        [T, k] (-1: not on this rank) with ``topk_weights`` [T, k] float32; [T, H], not yet
        reduced over ranks (contract: ``layers/fused_moe/torch_moe.py``)."""


class UnquantizedMoEMethod(MoEMethod):
    """Expert weights in the model dtype; the computation is ``LayerOps.fused_moe``."""

    def create_weights(self, layer: nn.Module, num_experts: int, hidden_size: int,
                       intermediate_size: int) -> None:
        layer.w13_weight = nn.Parameter(
            torch.empty(num_experts, 2 * intermediate_size, hidden_size), requires_grad=False)
        layer.w2_weight = nn.Parameter(
            torch.empty(num_experts, hidden_size, intermediate_size), requires_grad=False)

    def apply(self, layer: nn.Module, x: torch.Tensor, topk_weights: torch.Tensor,
              topk_ids: torch.Tensor) -> torch.Tensor:
        ops: LayerOps = layer.ops
        return ops.fused_moe(x, layer.w13_weight, layer.w2_weight, topk_weights, topk_ids)
