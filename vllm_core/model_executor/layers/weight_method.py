"""Weight methods: how a linear layer's weights are created, loaded and applied.

The linear layer is a product of three concerns (design.md section 9): *sharding* (which slice
of a checkpoint tensor this rank owns; ``parallel_linear``), the *weight method* (this module
defines the contract and the unquantized method; the quantized ones live in
``model_executor/quantization``), and *adapters* (a LoRA wrapper around any base linear).

A weight method never decides which slice a rank reads; it describes, per parameter, which
dimension indexes output and input features and how many features one element covers
(``ParamSpec``: packed int4 holds 8 per int32, a group scale covers ``group_size`` inputs), and
the layer cuts the rank's slice from that description.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import nn

from vllm_core.model_executor.layers.ops import LayerOps


@dataclass(frozen=True, slots=True)
class ParamSpec:
    """How one parameter of a linear layer lies over the layer's features.

    ``output_dim``: the dimension indexing output features (None: the parameter is not split
    by output, e.g. GPTQ's ``g_idx``; every output shard loads the same whole tensor);
    ``output_pack``: output features per element along it (AWQ packs 8 int4 outputs in one
    int32). ``input_dim`` / ``input_pack`` likewise for input features (None: replicated
    when the input is split, as a per-channel scale is; a group scale has ``input_pack =
    group_size``). The unquantized weight is ``ParamSpec(0, 1, 1, 1)``, a bias
    ``ParamSpec(0, 1, None, 1)``.
    """

    output_dim: int | None = 0
    output_pack: int = 1
    input_dim: int | None = 1
    input_pack: int = 1
    #: one value per output shard (a per-tensor scale of q, k or v), written over the rows of
    #: the shard it belongs to
    broadcast: bool = False


WEIGHT_SPEC = ParamSpec(0, 1, 1, 1)
BIAS_SPEC = ParamSpec(0, 1, None, 1)


class LinearMethod(ABC):
    """Creates, loads and applies the weights of one linear layer (per-rank shapes).

    Life cycle: ``create_weights`` once at construction (parameters uninitialised), then
    ``load_rows`` for every checkpoint tensor (each output shard of a fused layer separately),
    then ``process_after_loading`` once (repack for the kernels; after it only ``apply`` runs).
    """

    #: short name shown in the start-up log and ``describe`` ("unquantized", "gptq", ...)
    name: str = "unquantized"

    def param_spec(self, layer: nn.Module, param_name: str) -> ParamSpec:
        """The layout of parameter ``param_name`` (``ValueError`` for a name this method does
        not have: the checkpoint holds a tensor the format does not explain)."""
        if param_name == "weight":
            return WEIGHT_SPEC
        if param_name == "bias" and getattr(layer, "bias", None) is not None:
            return BIAS_SPEC
        raise ValueError(f"is not a parameter of an {self.name} linear layer")

    def describe(self, layer: nn.Module) -> str:
        """One line for the start-up log: the method, its settings and the kernel used."""
        return self.name

    @abstractmethod
    def create_weights(self, layer: nn.Module, in_features: int, out_features: int,
                       bias: bool) -> None:
        """Register ``layer.weight`` (and ``layer.bias`` or None) for a rank-local
        ``[out_features, in_features]`` projection, uninitialised, in the default dtype and
        device."""

    def load_rows(self, layer: nn.Module, param_name: str, rows: slice | None,
                  tensor: torch.Tensor) -> None:
        """Copy a checkpoint slice into ``rows`` (indices along the parameter's
        ``output_dim``, already divided by ``output_pack``) of the named parameter (all:
        None). Raises ValueError on a shape mismatch."""
        param = getattr(layer, param_name)
        dim = self.param_spec(layer, param_name).output_dim
        dest = param.data if rows is None or dim is None else param.data.narrow(
            dim, rows.start, rows.stop - rows.start)
        if tuple(dest.shape) != tuple(tensor.shape):
            raise ValueError(f"has shape {tuple(tensor.shape)}, expected {tuple(dest.shape)} "
                             f"(config and weights disagree)")
        if tensor.is_floating_point() != dest.is_floating_point():
            raise ValueError(f"has dtype {tensor.dtype}, expected {dest.dtype} (the checkpoint "
                             f"is not in the format of the {self.name} method)")
        dest.copy_(tensor)

    def process_after_loading(self, layer: nn.Module) -> None:
        """Repack loaded weights for the kernels (no-op when unquantized)."""

    def initialize_dummy(self, layer: nn.Module, generator: torch.Generator) -> bool:
        """Fill the parameters with valid random values for ``load_format="dummy"``; False
        (the default) lets the loader fill them as plain float tensors."""
        return False

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
