"""AWQ checkpoints in the GEMM layout, as AutoAWQ writes them (``quant_method: "awq"``).

Layout of one linear layer ``[N outputs, K inputs]`` with ``G = K / group_size`` groups, read
from AutoAWQ's ``WQLinear_GEMM.from_linear`` (pack) and its / vLLM's unpacking:

- ``qweight`` int32 ``[K, N / 8]``: 8 unsigned int4 outputs per word, interleaved: bit slot
  ``i`` (bits ``4 i .. 4 i + 3``) of word ``c`` holds output ``8 c + (0, 2, 4, 6, 1, 3, 5, 7)[i]``;
- ``qzeros``  int32 ``[G, N / 8]``: the zero points, packed the same way (stored as is);
- ``scales``  float16 ``[G, N]``;
- ``W[n, k] = (q[k, n] - zero[k // group_size, n]) * scale[k // group_size, n]``.

Only the GEMM version with zero points (``version: "gemm"``, ``zero_point: true``) and 4 bits
is supported; GEMV / Marlin / exllama exports are refused in words. llm-compressor's AWQ
writes compressed-tensors (see ``compressed_tensors.py``), not this format.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from vllm_core.model_executor.layers.weight_method import LinearMethod, ParamSpec
from vllm_core.model_executor.quantization.base import QuantizationConfig
from vllm_core.model_executor.quantization.quantized_weights import (
    WNA16Weight,
    pack_int32,
    unpack_int32,
)
from vllm_core.model_executor.quantization.wna16 import WNA16Method

#: element ``j`` of an AWQ word sits in bit slot ``AWQ_ORDER[j]`` (inverse of the pack order
#: ``(0, 2, 4, 6, 1, 3, 5, 7)``)
AWQ_ORDER = (0, 4, 1, 5, 2, 6, 3, 7)
AWQ_PACK_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)


class AWQConfig(QuantizationConfig):
    name: ClassVar[str] = "awq"
    capabilities: ClassVar[tuple[str, ...]] = ("int4", "group scales", "asymmetric")
    how_to_make: ClassVar[str] = "AutoAWQ: AutoAWQForCausalLM.from_pretrained(model)" \
                                 ".quantize(tokenizer, quant_config={'w_bit': 4, " \
                                 "'q_group_size': 128, 'zero_point': True, 'version': 'GEMM'})"

    def __init__(self, group_size: int, skip: tuple[str, ...] = ()) -> None:
        self.group_size = group_size
        self.skip = skip            # modules_to_not_convert: name fragments left in float

    @classmethod
    def from_checkpoint(cls, qc: dict[str, Any]) -> AWQConfig:
        bits = int(qc.get("bits", qc.get("w_bit", 4)))
        if bits != 4:
            raise ValueError(f"AWQ with bits={bits} is not supported (4 is)")
        version = str(qc.get("version", "gemm")).lower()
        if version != "gemm":
            raise ValueError(f"AWQ version {version!r} is not supported (the GEMM layout is; "
                             "re-export with version='GEMM')")
        if not qc.get("zero_point", True):
            raise ValueError("AWQ without zero points is not supported (zero_point=True is)")
        group_size = int(qc.get("group_size", qc.get("q_group_size", 128)))
        if group_size <= 0:
            raise ValueError(f"AWQ group_size must be positive, got {group_size}")
        return cls(group_size, tuple(qc.get("modules_to_not_convert") or ()))

    def linear_method(self, prefix: str) -> LinearMethod | None:
        if any(s and s in prefix for s in self.skip):
            return None
        return AWQLinearMethod(self.group_size)

    def summary(self) -> str:
        return f"awq bits=4 group_size={self.group_size} version=gemm"


class AWQLinearMethod(WNA16Method):
    name: ClassVar[str] = "awq"

    def __init__(self, group_size: int) -> None:
        super().__init__(4, group_size, symmetric=False, act_order=False)

    def create_weights(self, layer: nn.Module, in_features: int, out_features: int,
                       bias: bool) -> None:
        gs, groups = self.groups_for(in_features)
        if in_features % gs:
            raise ValueError(f"awq: {in_features} input features are not a multiple of the "
                             f"group size {gs}")
        if out_features % 8:
            raise ValueError(f"awq: {out_features} output features are not a multiple of 8")
        self.add_param(layer, "qweight", (in_features, out_features // 8), torch.int32,
                       ParamSpec(output_dim=1, output_pack=8, input_dim=0))
        self.add_param(layer, "qzeros", (groups, out_features // 8), torch.int32,
                       ParamSpec(output_dim=1, output_pack=8, input_dim=0, input_pack=gs))
        self.add_param(layer, "scales", (groups, out_features), torch.get_default_dtype(),
                       ParamSpec(output_dim=1, input_dim=0, input_pack=gs))
        self.add_bias(layer, out_features, bias)

    def to_wna16(self, layer: nn.Module) -> WNA16Weight:
        k, n = layer.qweight.shape[0], layer.qweight.shape[1] * 8
        q = unpack_int32(layer.qweight.data, 4, 1, n, AWQ_ORDER)          # [K, N]
        zeros = unpack_int32(layer.qzeros.data, 4, 1, n, AWQ_ORDER)
        qweight = pack_int32(q, 4, 0)                                      # [K / 8, N]
        qw = WNA16Weight(qweight=qweight, scales=layer.scales.data,
                         zeros=zeros.to(layer.scales.dtype), g_idx=None, bits=4,
                         group_size=self.group_size, in_features=k, out_features=n)
        self.drop_params(layer, "qweight", "qzeros")
        return qw
