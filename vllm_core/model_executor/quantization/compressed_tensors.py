"""compressed-tensors checkpoints, as llm-compressor writes them
(``quant_method: "compressed-tensors"``).

``quantization_config`` holds ``config_groups`` (each: ``targets``, ``weights``,
``input_activations``, optionally its own ``format``), ``ignore`` (layer names or ``re:``
patterns left in float) and a top-level ``format``. Supported schemes, with the tensors the
compressed-tensors package's compressors write (``compressors/pack_quantized``,
``compressors/naive_quantized``):

- **W4A16 / W8A16** (``pack-quantized``; int weights, no activation quantization):
  ``weight_packed`` int32 ``[N, K * bits / 32]`` (``32 / bits`` values per word along K, least
  significant first, each stored as ``q + 2 ** (bits - 1)``), ``weight_scale`` ``[N, G]``
  (strategy ``group``; ``channel``: ``[N, 1]``), ``weight_shape`` ``[2]``, asymmetric:
  ``weight_zero_point`` int32 ``[N * bits / 32, G]`` packed along N (same offset), act-order
  ``group``: ``weight_g_idx`` ``[K]``;
- **W8A8 INT8** (``int-quantized``): ``weight`` int8 ``[N, K]``, ``weight_scale`` ``[N, 1]``
  (channel) or one value (tensor); activations int8 symmetric, dynamic per token or static
  per tensor (``input_scale``);
- **W8A8 FP8** (``float-quantized``): ``weight`` float8_e4m3fn, scales as for INT8, or per
  ``[bn, bk]`` block (``block_structure``); activations float8 dynamic per token or static.

A ``kv_cache_scheme`` of per-tensor static FP8 is accepted: its ``self_attn.k_scale`` /
``v_scale`` tensors become the attention layers' KV-cache scales (``attention/kv_scales.py``),
applied with ``--kv-cache-dtype fp8``. Anything else (asymmetric activations, 2:4 sparsity,
NVFP4/MXFP4, other KV-cache schemes) is refused with the scheme named.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from vllm_core.attention.kv_scales import check_kv_cache_scheme
from vllm_core.model_executor.layers.weight_method import LinearMethod, ParamSpec
from vllm_core.model_executor.quantization.base import (
    QuantizationConfig,
    checkpoint_layer_names,
)
from vllm_core.model_executor.quantization.fp8_moe import Fp8MoEMethod
from vllm_core.model_executor.quantization.quantized_weights import (
    WNA16Weight,
    pack_int32,
    unpack_int32,
)
from vllm_core.model_executor.quantization.scaled import ScaledW8A8Method
from vllm_core.model_executor.quantization.wna16 import WNA16Method


@dataclass(frozen=True, slots=True)
class CTScheme:
    """One config group, reduced to what the kernels need."""

    kind: str                       # "wna16", "int8" or "fp8"
    bits: int
    strategy: str                   # weights: "group", "channel", "tensor", "block"
    group_size: int                 # -1: per channel
    symmetric: bool
    act_order: bool
    static_input: bool
    block: tuple[int, int] | None = None


def _parse_scheme(group: str, g: dict[str, Any], default_format: str | None) -> CTScheme:
    w, a = g.get("weights"), g.get("input_activations")
    fmt = g.get("format") or default_format
    what = f"compressed-tensors group {group!r}"
    if not w:
        raise ValueError(f"{what} quantizes no weights (activation-only schemes are not "
                         "supported)")
    wtype, bits, strategy = w.get("type", "int"), int(w.get("num_bits", 8)), w.get("strategy")
    sym = bool(w.get("symmetric", True))
    if w.get("dynamic"):
        raise ValueError(f"{what}: dynamic weight scales are not supported")
    if a is None:
        if wtype != "int" or bits not in (4, 8) or strategy not in ("group", "channel"):
            raise ValueError(f"{what}: weight-only {wtype}{bits} {strategy} is not supported "
                             "(int4 / int8 with group or channel scales is)")
        if fmt not in (None, "pack-quantized"):
            raise ValueError(f"{what}: format {fmt!r} for weight-only int is not supported "
                             "(pack-quantized is)")
        actorder = w.get("actorder")
        if actorder not in (None, "group", "weight", "static", False):
            raise ValueError(f"{what}: actorder {actorder!r} is not supported")
        gs = int(w.get("group_size") or -1) if strategy == "group" else -1
        return CTScheme("wna16", bits, strategy, gs, sym, actorder == "group", False)
    if bits != 8 or int(a.get("num_bits", 8)) != 8 or a.get("type", "int") != wtype:
        raise ValueError(f"{what}: W{bits}A{a.get('num_bits')} {wtype}/{a.get('type')} is not "
                         "supported (W8A8 int8 and W8A8 fp8 are)")
    if not sym or not a.get("symmetric", True):
        raise ValueError(f"{what}: asymmetric W8A8 is not supported (symmetric is)")
    kind = "int8" if wtype == "int" else "fp8"
    astrategy, dynamic = a.get("strategy"), bool(a.get("dynamic"))
    if strategy == "block":
        if kind != "fp8":
            raise ValueError(f"{what}: block scales are supported for fp8 only")
        block = w.get("block_structure") or [128, 128]
        return CTScheme(kind, 8, "block", -1, True, False, False,
                        (int(block[0]), int(block[1])))
    if strategy not in ("channel", "tensor"):
        raise ValueError(f"{what}: weight strategy {strategy!r} is not supported for W8A8 "
                         "(channel, tensor, and block for fp8)")
    if dynamic and astrategy != "token":
        raise ValueError(f"{what}: dynamic activations with strategy {astrategy!r} are not "
                         "supported (token is)")
    if not dynamic and astrategy != "tensor":
        raise ValueError(f"{what}: static activations with strategy {astrategy!r} are not "
                         "supported (tensor is)")
    return CTScheme(kind, 8, strategy, -1, True, False, not dynamic)


def _matches(target: str, name: str) -> bool:
    if target.startswith("re:"):
        return re.match(target[3:], name) is not None
    return target in (name, "Linear")


class CompressedTensorsConfig(QuantizationConfig):
    name: ClassVar[str] = "compressed-tensors"
    capabilities: ClassVar[tuple[str, ...]] = ("W4A16", "W8A16", "W8A8-INT8", "W8A8-FP8",
                                               "act-order", "asymmetric weights")
    how_to_make: ClassVar[str] = "llm-compressor: oneshot(model, recipe=QuantizationModifier(" \
                                 "targets='Linear', scheme='W4A16', ignore=['lm_head']))"

    def __init__(self, groups: list[tuple[tuple[str, ...], CTScheme]],
                 ignore: tuple[str, ...]) -> None:
        self.groups, self.ignore = groups, ignore

    @classmethod
    def from_checkpoint(cls, qc: dict[str, Any]) -> CompressedTensorsConfig:
        default_format = qc.get("format")
        if default_format not in (None, "pack-quantized", "int-quantized", "float-quantized",
                                  "naive-quantized", "mixed-precision"):
            raise ValueError(f"compressed-tensors format {default_format!r} is not supported "
                             "(pack-quantized, int-quantized, float-quantized are)")
        check_kv_cache_scheme(qc.get("kv_cache_scheme"))
        if qc.get("sparsity_config"):
            raise ValueError("compressed-tensors sparsity (sparsity_config) is not supported")
        groups = []
        for gname, g in (qc.get("config_groups") or {}).items():
            targets = tuple(g.get("targets") or ())
            groups.append((targets, _parse_scheme(gname, g, default_format)))
        if not groups:
            raise ValueError("compressed-tensors quantization_config has no config_groups")
        return cls(groups, tuple(qc.get("ignore") or ()))

    def scheme_for(self, name: str) -> CTScheme | None:
        """The scheme of checkpoint layer ``name`` (None: ignored / not targeted)."""
        if any(_matches(i, name) for i in self.ignore):
            return None
        for targets, scheme in self.groups:
            if any(_matches(t, name) for t in targets):
                return scheme
        return None

    def linear_method(self, prefix: str) -> LinearMethod | None:
        schemes = {self.scheme_for(n) for n in checkpoint_layer_names(prefix)}
        if len(schemes) != 1:
            raise ValueError(f"compressed-tensors: the parts of {prefix} "
                             f"({', '.join(checkpoint_layer_names(prefix))}) are quantized "
                             "differently; vllm-core fuses them into one layer")
        scheme = schemes.pop()
        if scheme is None:
            return None
        if scheme.kind == "wna16":
            return CTWNA16Method(scheme)
        strategy = scheme.strategy
        return ScaledW8A8Method(scheme.kind, strategy, scheme.static_input, scheme.block,
                                "weight_scale", name="compressed-tensors")

    def moe_method(self, prefix: str) -> Fp8MoEMethod | None:
        """FP8 experts for W8A8 FP8 groups (channel / tensor weights, dynamic activations,
        llm-compressor's ``FP8_DYNAMIC``); experts not targeted stay float; other schemes
        on experts are refused by name. The scheme is the one of the first expert's gate
        projection (``Linear`` targets cover every expert alike)."""
        scheme = self.scheme_for(f"{prefix}.0.gate_proj")
        if scheme is None:
            return None
        if scheme.kind == "fp8" and scheme.strategy in ("channel", "tensor") \
                and not scheme.static_input:
            return Fp8MoEMethod(online=False)
        raise ValueError(f"compressed-tensors experts ({prefix}) quantized as {scheme.kind} "
                         f"{scheme.strategy}{' with static activations' if scheme.static_input else ''}"
                         " are not supported (W8A8 FP8 with channel or tensor weights and "
                         "dynamic activations is)")

    def summary(self) -> str:
        parts = []
        for targets, s in self.groups:
            what = (f"W{s.bits}A16 {s.strategy}"
                    + (f" {s.group_size}" if s.group_size > 0 else "")
                    if s.kind == "wna16" else f"W8A8 {s.kind} {s.strategy}")
            parts.append(f"{what} on {list(targets)}")
        return "compressed-tensors " + "; ".join(parts)


class CTWNA16Method(WNA16Method):
    name: ClassVar[str] = "compressed-tensors"

    def __init__(self, scheme: CTScheme) -> None:
        super().__init__(scheme.bits, scheme.group_size, scheme.symmetric, scheme.act_order)

    def create_weights(self, layer: nn.Module, in_features: int, out_features: int,
                       bias: bool) -> None:
        p = self.pack
        full_in = self.full_in_features(layer, in_features)
        gs, groups = self.groups_for(full_in)
        grouped_input = None if (self.act_order or self.group_size == -1) else 1
        local_groups = groups if grouped_input is None else -(-in_features // gs)
        self.add_param(layer, "weight_packed", (out_features, in_features // p), torch.int32,
                       ParamSpec(output_dim=0, input_dim=1, input_pack=p))
        self.add_param(layer, "weight_scale", (out_features, local_groups),
                       torch.get_default_dtype(),
                       ParamSpec(output_dim=0, input_dim=grouped_input, input_pack=gs))
        self.add_param(layer, "weight_shape", (2,), torch.int64,
                       ParamSpec(output_dim=None, input_dim=None))
        if not self.symmetric:
            if out_features % p:
                raise ValueError(f"compressed-tensors: {out_features} outputs are not a "
                                 f"multiple of the {p} zero points packed per int32")
            self.add_param(layer, "weight_zero_point", (out_features // p, local_groups),
                           torch.int32, ParamSpec(output_dim=0, output_pack=p,
                                                  input_dim=grouped_input, input_pack=gs))
        if self.act_order:
            self.add_param(layer, "weight_g_idx", (in_features,), torch.int32,
                           ParamSpec(output_dim=None, input_dim=0))
        self.add_bias(layer, out_features, bias)
        layer._ct_group_size = gs

    def to_wna16(self, layer: nn.Module) -> WNA16Weight:
        n, k = layer.weight_packed.shape[0], layer.weight_packed.shape[1] * self.pack
        q = unpack_int32(layer.weight_packed.data, self.bits, 1, k)          # [N, K]
        scales = layer.weight_scale.data.t().contiguous()                   # [G, N]
        if self.symmetric:
            zeros = torch.full_like(scales, float(1 << (self.bits - 1)))
        else:
            zeros = unpack_int32(layer.weight_zero_point.data, self.bits, 0, n)  # [N, G]
            zeros = zeros.t().to(scales.dtype).contiguous()
        g_idx = layer.weight_g_idx.data if self.act_order else None
        qw = WNA16Weight(qweight=pack_int32(q.t(), self.bits, 0), scales=scales, zeros=zeros,
                         g_idx=g_idx, bits=self.bits, group_size=layer._ct_group_size,
                         in_features=k, out_features=n)
        self.drop_params(layer, "weight_packed", "weight_scale", "weight_zero_point",
                         "weight_shape")
        return qw
