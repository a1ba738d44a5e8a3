"""Online INT8 (``--quantization int8``): W8A8 with per-output-channel symmetric int8 weights
and dynamic per-token int8 activations, made from a float checkpoint while loading it.

Any float checkpoint (bf16 / fp16 / fp32 safetensors, or a GGUF file, which the GGUF loader
de-quantizes first) is loaded in float; after loading each linear layer's weight is quantized
per output channel, ``s_w[n] = max_k |W[n, k]| / 127`` (at least 1e-12 / 127), ``q = round(W /
s_w)`` (half to even) clamped to ``[-127, 127]``, and kept as the core's ``Int8Weight``
(``quantized_weights.py``): the same layout and kernels as a compressed-tensors W8A8 INT8
checkpoint (``LayerOps.int8_linear``: the CPU plugin's C++ ``int8_gemm``, ``torch._int_mm`` on
CUDA, the torch reference elsewhere). The range is symmetric ([-127, 127], not -128) so that
``-W`` quantizes to ``-q``, as llm-compressor's and vLLM's dynamic schemes do.

Embeddings, the ``lm_head``, norms and MoE experts stay in float. No checkpoint carries
``quant_method: "int8"``: INT8 checkpoints are compressed-tensors (llm-compressor ``W8A8``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from vllm_core.model_executor.layers.weight_method import LinearMethod
from vllm_core.model_executor.quantization.base import QuantizationConfig
from vllm_core.model_executor.quantization.quantized_weights import INT8_MAX, Int8Weight
from vllm_core.model_executor.quantization.scaled import ScaledW8A8Method


def quantize_weight_per_channel(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q, s)``: int8 ``[N, K]`` in ``[-127, 127]`` and float32 ``[N]`` with ``W ~= q *
    s[:, None]`` (symmetric, per output channel, round half to even; computed in float32)."""
    w = weight.float()
    scale = (w.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / INT8_MAX)
    q = (w / scale).clamp(-INT8_MAX, INT8_MAX).round().to(torch.int8)
    return q, scale.view(-1)


class OnlineInt8Method(ScaledW8A8Method):
    """``ScaledW8A8Method`` with a float ``weight`` loaded as it is, quantized to int8 per
    output channel in ``process_after_loading`` (activations dynamic per token)."""

    def __init__(self) -> None:
        super().__init__("int8", "online", False, name="int8")

    @torch.no_grad()
    def process_after_loading(self, layer: nn.Module) -> None:
        q, scale = quantize_weight_per_channel(layer.weight.data)
        self.drop_params(layer, "weight")
        layer.qweights = Int8Weight(q, scale, None)

    def settings(self) -> str:
        return "int8 online: int8 weights (per channel), activations dynamic per-token int8"


class Int8Config(QuantizationConfig):
    name: ClassVar[str] = "int8"
    capabilities: ClassVar[tuple[str, ...]] = ("int8 W8A8", "per-channel weights",
                                               "dynamic per-token activations")
    online: ClassVar[bool] = True
    how_to_make: ClassVar[str] = "--quantization int8 at load (checkpoints: llm-compressor " \
                                 "W8A8, loaded as compressed-tensors)"

    @classmethod
    def from_checkpoint(cls, quantization_config: dict[str, Any]) -> Int8Config:
        raise ValueError("quant_method 'int8' is online quantization only (--quantization int8 "
                         "on a float checkpoint); INT8 checkpoints are written as "
                         "compressed-tensors by llm-compressor (scheme W8A8)")

    @classmethod
    def for_online(cls) -> Int8Config:
        return cls()

    def linear_method(self, prefix: str) -> LinearMethod | None:
        return OnlineInt8Method()

    def summary(self) -> str:
        return "int8 (online W8A8: per-channel int8 weights, dynamic per-token activations)"
