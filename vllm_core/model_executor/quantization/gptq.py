"""GPTQ checkpoints as GPTQModel / AutoGPTQ write them (``quant_method: "gptq"``).

Layout of one linear layer ``[N outputs, K inputs]`` (``p = 32 // bits`` values per int32,
``G = ceil(K / group_size)`` groups, ``group_size = -1``: one group), read from GPTQModel's
``pack`` / ``TorchQuantLinear.dequantize_weight`` and transformers' GPTQ integration:

- ``qweight`` int32 ``[K / p, N]``: input ``k`` of output ``n`` in bits
  ``[bits * (k % p), ...)`` of ``qweight[k // p, n]``, least significant first, unsigned;
- ``qzeros``  int32 ``[G, N / p]``: the zero point of group ``g``, output ``n`` packed the same
  way along the output dimension. ``checkpoint_format`` "gptq" (v1, the default) stores
  ``zero - 1`` (read back as ``stored + 1``, unmasked, as GPTQModel's v1 -> v2 conversion
  does: a zero of 0 is not representable in v1), "gptq_v2" the zero itself. Symmetric
  checkpoints hold ``2 ** (bits - 1)``;
- ``scales``  float16 ``[G, N]``;
- ``g_idx``   int32 ``[K]``: the group of input ``k``. With ``desc_act`` (act-order) the
  groups follow the order in which GPTQ quantized the columns, so ``g_idx`` is a permutation
  of ``k // group_size``; without it, exactly ``k // group_size``;
- ``W[n, k] = (q[k, n] - zero[g_idx[k], n]) * scale[g_idx[k], n]``.

Supported: bits 4 and 8, any group size (``-1`` included), ``desc_act``, ``sym`` true or false,
both checkpoint formats. Refused in words: other bit widths, a quantized ``lm_head``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from vllm_core.model_executor.layers.weight_method import LinearMethod, ParamSpec
from vllm_core.model_executor.quantization.base import QuantizationConfig
from vllm_core.model_executor.quantization.quantized_weights import WNA16Weight, unpack_int32
from vllm_core.model_executor.quantization.wna16 import WNA16Method


class GPTQConfig(QuantizationConfig):
    name: ClassVar[str] = "gptq"
    capabilities: ClassVar[tuple[str, ...]] = ("int4", "int8", "group scales", "act-order",
                                               "asymmetric")
    activation_dtypes: ClassVar[tuple[str, ...]] = ("bfloat16", "float16", "float32")
    how_to_make: ClassVar[str] = "GPTQModel: GPTQModel.load(model, QuantizeConfig(bits=4, " \
                                 "group_size=128)).quantize(calibration).save(folder)"

    def __init__(self, bits: int, group_size: int, desc_act: bool, sym: bool,
                 v2_zeros: bool) -> None:
        self.bits, self.group_size, self.desc_act = bits, group_size, desc_act
        self.sym, self.v2_zeros = sym, v2_zeros

    @classmethod
    def from_checkpoint(cls, qc: dict[str, Any]) -> GPTQConfig:
        bits = int(qc.get("bits", 4))
        if bits not in (4, 8):
            raise ValueError(f"GPTQ with bits={bits} is not supported (4 and 8 are)")
        group_size = int(qc.get("group_size", 128))
        if group_size != -1 and group_size <= 0:
            raise ValueError(f"GPTQ group_size must be -1 or positive, got {group_size}")
        if qc.get("lm_head"):
            raise ValueError("GPTQ checkpoints with a quantized lm_head are not supported")
        fmt = str(qc.get("checkpoint_format") or qc.get("format") or "gptq")
        if fmt not in ("gptq", "gptq_v2"):
            raise ValueError(f"GPTQ checkpoint_format {fmt!r} is not supported (gptq and "
                             "gptq_v2 are; convert other formats with GPTQModel)")
        return cls(bits, group_size, bool(qc.get("desc_act", False)),
                   bool(qc.get("sym", True)), fmt == "gptq_v2")

    def linear_method(self, prefix: str) -> LinearMethod | None:
        return GPTQLinearMethod(self)

    def summary(self) -> str:
        return (f"gptq bits={self.bits} group_size={self.group_size} desc_act={self.desc_act} "
                f"sym={self.sym} format={'gptq_v2' if self.v2_zeros else 'gptq'}")


class GPTQLinearMethod(WNA16Method):
    name: ClassVar[str] = "gptq"

    def __init__(self, config: GPTQConfig) -> None:
        super().__init__(config.bits, config.group_size, config.sym, config.desc_act)
        self.config = config

    def create_weights(self, layer: nn.Module, in_features: int, out_features: int,
                       bias: bool) -> None:
        p = self.pack
        full_in = self.full_in_features(layer, in_features)
        gs, groups = self.groups_for(full_in)
        if out_features % p:
            raise ValueError(f"gptq: {out_features} output features are not a multiple of "
                             f"the {p} zero points packed per int32")
        # act-order groups are scattered over the inputs: every rank keeps all of them; a
        # single group (-1) is replicated too
        grouped_input = None if (self.act_order or self.group_size == -1) else 0
        local_groups = groups if grouped_input is None else -(-in_features // gs)
        self.add_param(layer, "qweight", (in_features // p, out_features), torch.int32,
                       ParamSpec(output_dim=1, input_dim=0, input_pack=p))
        self.add_param(layer, "qzeros", (local_groups, out_features // p), torch.int32,
                       ParamSpec(output_dim=1, output_pack=p, input_dim=grouped_input,
                                 input_pack=gs))
        self.add_param(layer, "scales", (local_groups, out_features), torch.get_default_dtype(),
                       ParamSpec(output_dim=1, input_dim=grouped_input, input_pack=gs))
        self.add_param(layer, "g_idx", (in_features,), torch.int32,
                       ParamSpec(output_dim=None, input_dim=0))
        self.add_bias(layer, out_features, bias)
        layer._gptq_group_size = gs

    def to_wna16(self, layer: nn.Module) -> WNA16Weight:
        k = layer.qweight.shape[0] * self.pack
        n = layer.qweight.shape[1]
        zeros = unpack_int32(layer.qzeros.data, self.bits, 1, n)
        if not self.config.v2_zeros:
            zeros = zeros + 1                 # v1 stores zero - 1 (GPTQModel adds 1 back)
        # without desc_act g_idx is k // group_size by definition (and global under TP)
        g_idx = layer.g_idx.data if self.act_order else None
        qw = WNA16Weight(qweight=layer.qweight.data, scales=layer.scales.data,
                         zeros=zeros.to(layer.scales.dtype), g_idx=g_idx,
                         bits=self.bits, group_size=layer._gptq_group_size, in_features=k,
                         out_features=n)
        self.drop_params(layer, "qzeros", *(() if self.act_order else ("g_idx",)))
        return qw
