"""W8A8 linear methods with scales (INT8 and FP8), shared by the ``fp8`` and
``compressed-tensors`` formats.

Checkpoint tensors: ``weight`` ``[N, K]`` (int8 or float8_e4m3fn), its scale per output channel
(``[N, 1]``) or per tensor (one value per checkpoint tensor, i.e. per q / k / v shard of a
fused layer: it is written over that shard's rows, so no re-quantization is needed), or per
``[bn, bk]`` block; ``input_scale`` (one float) when activations use a static scale: a fused
layer keeps the largest of its shards' scales, as every shard's activations are the same.
``process_after_loading`` builds an ``Int8Weight`` / ``Fp8Weight`` (``quantized_weights``).
Online FP8 (``--quantization fp8`` on a float checkpoint) loads the float weight and
quantizes it per output channel (``scale = max|W_row| / 448``), activations dynamic per token.
"""

from __future__ import annotations

import torch
from torch import nn

from vllm_core.model_executor.layers.weight_method import WEIGHT_SPEC, ParamSpec
from vllm_core.model_executor.quantization.base import QuantizedLinearMethod
from vllm_core.model_executor.quantization.quantized_weights import (
    FP8_MAX,
    Fp8Weight,
    Int8Weight,
)

CHANNEL_SCALE = ParamSpec(output_dim=0, input_dim=None)
TENSOR_SCALE = ParamSpec(output_dim=0, input_dim=None, broadcast=True)
INPUT_SCALE = ParamSpec(output_dim=None, input_dim=None)

class ScaledW8A8Method(QuantizedLinearMethod):
    """``kind`` "int8" or "fp8"; ``weight_strategy`` "channel", "tensor", "block" or
    "online" (float weight quantized after loading); ``static_input``: activations use the
    checkpoint's ``input_scale`` instead of a per-token scale."""

    def __init__(self, kind: str, weight_strategy: str, static_input: bool,
                 block_size: tuple[int, int] | None = None, scale_name: str = "weight_scale",
                 name: str = "fp8") -> None:
        self.kind = kind
        self.weight_strategy = weight_strategy
        self.static_input = static_input
        self.block_size = block_size
        self.scale_name = scale_name
        self.name = name

    @property
    def weight_dtype(self) -> torch.dtype:
        return torch.int8 if self.kind == "int8" else torch.float8_e4m3fn

    def create_weights(self, layer: nn.Module, in_features: int, out_features: int,
                       bias: bool) -> None:
        if self.weight_strategy == "online":
            self.add_param(layer, "weight", (out_features, in_features),
                           torch.get_default_dtype(), WEIGHT_SPEC)
        else:
            self.add_param(layer, "weight", (out_features, in_features), self.weight_dtype,
                           WEIGHT_SPEC)
        if self.weight_strategy == "block":
            bn, bk = self.block_size
            self.add_param(layer, self.scale_name, (-(-out_features // bn),
                                                    -(-in_features // bk)),
                           torch.float32, ParamSpec(output_dim=0, output_pack=bn,
                                                    input_dim=1, input_pack=bk))
        elif self.weight_strategy in ("channel", "tensor"):
            spec = CHANNEL_SCALE if self.weight_strategy == "channel" else TENSOR_SCALE
            self.add_param(layer, self.scale_name, (out_features, 1), torch.float32, spec)
        if self.static_input:
            self.add_param(layer, "input_scale", (1,), torch.float32, INPUT_SCALE, fill=0.0)
        self.add_bias(layer, out_features, bias)

    def load_rows(self, layer: nn.Module, param_name: str, rows: slice | None,
                  tensor: torch.Tensor) -> None:
        spec = self.param_spec(layer, param_name)
        param = getattr(layer, param_name)
        if param_name == "input_scale":          # one activation scale for all shards
            if tensor.numel() != 1:
                raise ValueError(f"has {tensor.numel()} values, expected one (a per-tensor "
                                 "input scale)")
            param.data.copy_(torch.maximum(param.data, tensor.reshape(1).float()))
            return
        if spec.broadcast:
            if tensor.numel() != 1:
                raise ValueError(f"has shape {tuple(tensor.shape)}, expected one value (a "
                                 "per-tensor scale)")
            dest = param.data if rows is None else param.data[rows]
            dest.copy_(tensor.reshape(1, 1).float().expand(dest.shape))
            return
        super().load_rows(layer, param_name, rows, tensor)

    @torch.no_grad()
    def process_after_loading(self, layer: nn.Module) -> None:
        input_scale = layer.input_scale.data if self.static_input else None
        if self.weight_strategy == "online":
            w = layer.weight.data.float()
            scale = (w.abs().amax(dim=1, keepdim=True) / FP8_MAX).clamp(min=1e-12)
            weight = (w / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
            self.drop_params(layer, "weight")
            layer.qweights = Fp8Weight(weight, scale.view(-1), None, None, None)
            return
        if self.weight_strategy == "block":
            layer.qweights = Fp8Weight(layer.weight.data, None,
                                       getattr(layer, self.scale_name).data.float(),
                                       self.block_size, None)
            return
        scale = getattr(layer, self.scale_name).data.float().view(-1)
        if self.kind == "int8":
            layer.qweights = Int8Weight(layer.weight.data, scale, input_scale)
        else:
            layer.qweights = Fp8Weight(layer.weight.data, scale, None, None, input_scale)

    @torch.no_grad()
    def initialize_dummy(self, layer: nn.Module, generator: torch.Generator) -> bool:
        for name, param in layer.named_parameters(recurse=False):
            if param.dtype == torch.int8:
                param.copy_(torch.randint(-127, 128, param.shape, generator=generator,
                                          device=param.device, dtype=torch.int8))
            elif param.dtype == torch.float8_e4m3fn:
                vals = torch.empty(param.shape, device=param.device).uniform_(
                    -FP8_MAX, FP8_MAX, generator=generator)
                param.copy_(vals.to(torch.float8_e4m3fn))
            elif "scale" in name:
                param.uniform_(1e-3 / FP8_MAX, 2e-3 / FP8_MAX, generator=generator)
            else:
                param.uniform_(-1e-3, 1e-3, generator=generator)
        return True

    def settings(self) -> str:
        block = f" {self.block_size[0]}x{self.block_size[1]}" if self.block_size else ""
        act = "static" if self.static_input else (
            "dynamic per-token" if self.weight_strategy != "block" else "unquantized")
        w = "int8" if self.kind == "int8" else "fp8-e4m3"
        return f"{self.name} {w} weights ({self.weight_strategy}{block}), activations {act}"
