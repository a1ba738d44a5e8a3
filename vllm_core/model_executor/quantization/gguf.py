"""GGUF files kept quantized (``--quantization gguf``, chosen for ``.gguf`` files unless
``--gguf-dequantize``).

The linear layers of a GGUF file whose tensors are of a block type in
``gguf_blocks.FORMATS`` (Q4_0, Q4_1, Q8_0, Q4_K, Q5_K, Q6_K) keep their integers: the GGUF
loader (``gguf_loader.iter_gguf_weights_lazy``) converts each such tensor's blocks into the
``WNA16Weight`` parts ``qweight`` / ``scales`` / ``zeros`` (``gguf_blocks`` documents the
exact mapping) and this method loads them like any WNA16 checkpoint, rows (outputs) and
groups (inputs) cut per tensor-parallel rank by their ``ParamSpec``.

Per layer (``GGUFConfig.plan``): the storage bits are the largest of its parts (a fused
q/k/v or gate/up whose parts differ, e.g. Q4_K with Q6_K, is stored in 8 bits: exact) and the
group size the smallest (larger groups repeat their scales). A layer with any part in another
type (F16, F32, BF16, Q2_K, IQ*...) stays unquantized and is de-quantized at load as before;
so do the norms. The routed experts of a mixture-of-experts file whose gate, up and down
tensors are all of a type in ``FORMATS`` stay quantized too (``moe_method``:
``gguf_moe_method.GGUFMoEMethod``; the loader yields each expert's view as a
``QuantizedLazyTensor``); otherwise they are de-quantized into the stacked ``FusedMoE``
weights. The shared expert is a linear layer like any other.

The vocabulary tables (``model.embed_tokens`` and an untied ``lm_head``) of a type in
``FORMATS`` stay quantized too (``table_format``): the loader yields them as
``QuantizedLazyTensor`` and the vocabulary layers keep the ``WNA16Weight`` (the LM head runs
``wna16_linear``, the embedding de-quantizes only the looked-up rows:
``layers/quantized_vocab.py``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from vllm_core.model_executor.layers.weight_method import LinearMethod, ParamSpec
from vllm_core.model_executor.quantization.base import (
    FUSED_PARTS,
    QuantizationConfig,
    checkpoint_layer_names,
)
from vllm_core.model_executor.quantization.gguf_blocks import FORMATS, BlockFormat
from vllm_core.model_executor.quantization.gguf_moe_method import GGUFExpertPlan, GGUFMoEMethod
from vllm_core.model_executor.quantization.quantized_weights import WNA16Weight
from vllm_core.model_executor.quantization.wna16 import WNA16Method

#: the WNA16 parameters the GGUF loader yields per kept-quantized tensor
GGUF_PARTS = ("qweight", "scales", "zeros")
#: the vocabulary tables kept quantized when their type is in ``FORMATS``
TABLE_NAMES = ("model.embed_tokens.weight", "lm_head.weight")
#: a routed expert's tensor as the GGUF loader names its views (``gguf_moe.expert_views``)
_EXPERT = re.compile(r"^(?P<layer>model\.layers\.\d+\.mlp\.experts)\.(?P<e>\d+)\."
                     r"(?P<proj>gate|up|down)_proj\.weight$")


@dataclass(frozen=True, slots=True)
class GGUFLayerPlan:
    """How one (fused) linear layer is stored: ``bits`` 4 or 8, ``group`` inputs per scale,
    and the GGML types of its parts (for the log)."""

    bits: int
    group: int
    types: tuple[str, ...]


class GGUFConfig(QuantizationConfig):
    name: ClassVar[str] = "gguf"
    capabilities: ClassVar[tuple[str, ...]] = ("int4", "int8", "group scales", "asymmetric",
                                               "Q4_0 Q4_1 Q8_0 Q4_K Q5_K Q6_K")
    how_to_make: ClassVar[str] = "llama.cpp: llama-quantize model-f16.gguf model-Q4_K_M.gguf " \
                                 "Q4_K_M (or convert_hf_to_gguf.py --outtype q8_0)"

    def __init__(self, path: str, tensor_types: dict[str, str]) -> None:
        """``tensor_types``: HF weight name (``model.layers.0.self_attn.q_proj.weight``) ->
        GGML type name, for every tensor of the file."""
        self.path = path
        self.tensor_types = tensor_types
        self.plan: dict[str, GGUFLayerPlan] = _plan_layers(tensor_types)
        self.expert_plans: dict[str, GGUFExpertPlan] = _plan_experts(tensor_types)

    @classmethod
    def from_checkpoint(cls, quantization_config: dict[str, Any]) -> GGUFConfig:
        """``{"quant_method": "gguf", "gguf_file": path}`` (what selection passes)."""
        path = quantization_config.get("gguf_file")
        if not path:
            raise ValueError("--quantization gguf needs a .gguf model file")
        return cls.for_file(str(path))

    @classmethod
    def for_file(cls, path: str) -> GGUFConfig:
        from vllm_core.model_executor.gguf_loader import gguf_tensor_types

        return cls(path, gguf_tensor_types(path))

    def layer_plan(self, weight_name: str) -> GGUFLayerPlan | None:
        """The plan of the layer holding checkpoint tensor ``weight_name`` (None: loaded as
        float)."""
        owner, _, leaf = weight_name.rpartition(".")
        if leaf != "weight":
            return None
        return self.plan.get(_fused_prefix(owner))

    def table_format(self, weight_name: str) -> BlockFormat | None:
        """The block format of vocabulary table ``weight_name`` (``TABLE_NAMES``) when it is
        kept quantized, else None (read as float)."""
        if weight_name not in TABLE_NAMES:
            return None
        return FORMATS.get(self.tensor_types.get(weight_name, ""))

    def expert_storage(self, weight_name: str) -> tuple[int, int] | None:
        """``(bits, group)`` an expert tensor ``model.layers.L.mlp.experts.E.{gate,up,down}
        _proj.weight`` is converted to when its layer's experts are kept quantized, else
        None (de-quantized)."""
        match = _EXPERT.match(weight_name)
        plan = self.expert_plans.get(match["layer"]) if match else None
        if plan is None:
            return None
        return plan.down if match["proj"] == "down" else plan.gate_up

    def moe_method(self, prefix: str) -> GGUFMoEMethod | None:
        plan = self.expert_plans.get(prefix)
        return None if plan is None else GGUFMoEMethod(plan)

    def linear_method(self, prefix: str) -> LinearMethod | None:
        plan = self.plan.get(prefix)
        return None if plan is None else GGUFLinearMethod(plan)

    def summary(self) -> str:
        kept = sorted({t for p in self.plan.values() for t in p.types})
        tables = [f"{n.split('.')[-2]} {self.tensor_types[n]}" for n in TABLE_NAMES
                  if self.table_format(n) is not None]
        experts = sorted({t for p in self.expert_plans.values() for t in p.types})
        return (f"gguf kept quantized ({', '.join(kept) or 'no quantized linear layers'}; "
                f"{len(self.plan)} linear layers; vocabulary tables: "
                f"{', '.join(tables) or 'float'}"
                + (f"; routed experts of {len(self.expert_plans)} layers: {', '.join(experts)}"
                   if experts else "") + ")")


def _fused_prefix(owner: str) -> str:
    """``model.layers.0.self_attn.q_proj`` -> ``model.layers.0.self_attn.qkv_proj``."""
    head, _, leaf = owner.rpartition(".")
    for fused, parts in FUSED_PARTS.items():
        if leaf in parts:
            return f"{head}.{fused}"
    return owner


def _plan_layers(tensor_types: dict[str, str]) -> dict[str, GGUFLayerPlan]:
    layers: set[str] = set()
    for name in tensor_types:
        owner, _, leaf = name.rpartition(".")
        if leaf == "weight" and owner.startswith("model.layers.") and (
                owner.endswith(("_proj",))) and ".experts." not in owner:   # experts: float
            layers.add(_fused_prefix(owner))
    plan = {}
    for prefix in sorted(layers):
        types = [tensor_types.get(f"{part}.weight") for part in checkpoint_layer_names(prefix)]
        if any(t not in FORMATS for t in types):
            continue
        fmts = [FORMATS[t] for t in types]
        plan[prefix] = GGUFLayerPlan(bits=max(f.storage_bits for f in fmts),
                                     group=min(f.group for f in fmts), types=tuple(types))
    return plan


class GGUFLinearMethod(WNA16Method):
    """A WNA16 layer loaded from GGUF blocks (already in the canonical layout)."""

    name: ClassVar[str] = "gguf"

    def __init__(self, plan: GGUFLayerPlan) -> None:
        super().__init__(plan.bits, plan.group, symmetric=False, act_order=False)
        self.plan = plan

    def create_weights(self, layer: nn.Module, in_features: int, out_features: int,
                       bias: bool) -> None:
        p = self.pack
        gs, _ = self.groups_for(self.full_in_features(layer, in_features))
        if in_features % gs:
            raise ValueError(f"gguf: {in_features} (rank-local) input features are not a "
                             f"multiple of the group size {gs}")
        groups = in_features // gs
        dtype = torch.get_default_dtype()
        self.add_param(layer, "qweight", (in_features // p, out_features), torch.int32,
                       ParamSpec(output_dim=1, input_dim=0, input_pack=p))
        for name in ("scales", "zeros"):
            self.add_param(layer, name, (groups, out_features), dtype,
                           ParamSpec(output_dim=1, input_dim=0, input_pack=gs))
        self.add_bias(layer, out_features, bias)

    def settings(self) -> str:
        return f"gguf {'/'.join(dict.fromkeys(self.plan.types))} as int{self.bits} " \
               f"group {self.group_size}"

    def to_wna16(self, layer: nn.Module) -> WNA16Weight:
        qweight = layer.qweight.data
        k = qweight.shape[0] * self.pack
        return WNA16Weight(qweight=qweight, scales=layer.scales.data, zeros=layer.zeros.data,
                           g_idx=None, bits=self.bits, group_size=self.group_size,
                           in_features=k, out_features=qweight.shape[1])


def _plan_experts(tensor_types: dict[str, str]) -> dict[str, GGUFExpertPlan]:
    """``model.layers.L.mlp.experts`` -> its storage plan, for the layers whose every expert
    tensor is of one kept type per projection (per-expert files may mix: then float)."""
    seen: dict[str, dict[str, set[str]]] = {}
    for name, kind in tensor_types.items():
        match = _EXPERT.match(name)
        if match is not None:
            seen.setdefault(match["layer"], {}).setdefault(match["proj"], set()).add(kind)
    plans = {}
    for layer, projs in seen.items():
        kinds = [projs.get(p, set()) for p in ("gate", "up", "down")]
        if any(len(k) != 1 or next(iter(k)) not in FORMATS for k in kinds):
            continue
        gate, up, down = (FORMATS[next(iter(k))] for k in kinds)
        plans[layer] = GGUFExpertPlan(
            gate_up=(max(gate.storage_bits, up.storage_bits), min(gate.group, up.group)),
            down=(down.storage_bits, down.group),
            types=tuple(next(iter(k)) for k in kinds))
    return plans
