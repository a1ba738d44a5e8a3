"""Mixture-of-experts decoders: Mixtral, Qwen2-MoE and Qwen3-MoE on the shared Llama decoder.

Attention, norms, embeddings and parallelism are ``decoder.py``'s; only the MLP of the sparse
layers differs (``MoEConfig.is_sparse_layer``): a ``SparseMoeBlock`` of a router (a replicated
``[E, H]`` linear), the routed experts (``FusedMoE``: stacked, sharded by TP or EP) and, for
Qwen2-MoE, a shared expert (a dense ``GatedMLP``) scaled by ``sigmoid(shared_expert_gate(x))``.

Checkpoint names: experts are stored one tensor per expert and projection, Mixtral as
``block_sparse_moe.experts.{e}.w1/w3/w2`` (gate / up / down), Qwen as
``mlp.experts.{e}.gate_proj/up_proj/down_proj``; ``load_weights`` stacks them into
``mlp.experts.w13_weight`` [E, 2I, H] and ``mlp.experts.w2_weight`` [E, H, I] at load time
(each rank reads only its experts / slices). Mixtral's ``block_sparse_moe`` is our ``mlp``.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from vllm_core.distributed.parallel_context import ParallelContext
from vllm_core.model_executor.layers.fused_moe import (
    FusedMoE,
    MoEConfig,
    MoEMethod,
    moe_config_from_arch,
)
from vllm_core.model_executor.layers.ops import LayerOps
from vllm_core.model_executor.models.decoder import DecoderForCausalLM, GatedMLP
from vllm_core.model_executor.weight_source import WeightSource

_EXPERT_NAME = re.compile(
    r"^(?P<layer>model\.layers\.\d+)\.(?:mlp|block_sparse_moe)\.experts\.(?P<e>\d+)\."
    r"(?P<proj>w1|w2|w3|gate_proj|up_proj|down_proj)\.(?P<leaf>weight|weight_scale|input_scale)$")
_PROJECTION = {"w1": "gate", "w3": "up", "w2": "down", "gate_proj": "gate", "up_proj": "up",
               "down_proj": "down"}
_PARAM_OF = {"gate": "w13_weight", "up": "w13_weight", "down": "w2_weight"}


class RouterLinear(nn.Module):
    """A replicated bias-free linear ``[out, in]`` (the router and the shared-expert gate):
    every rank holds the whole weight and computes the whole output."""

    def __init__(self, in_features: int, out_features: int, ops: LayerOps) -> None:
        super().__init__()
        self.ops = ops
        self.weight = nn.Parameter(torch.empty(out_features, in_features), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ops.linear(x, self.weight)


class SparseMoeBlock(nn.Module):
    """Router + routed experts (+ gated shared expert); [T, H] -> [T, H], reduced over TP."""

    def __init__(self, hidden_size: int, moe: MoEConfig, ops: LayerOps,
                 parallel: ParallelContext, method: MoEMethod | None = None,
                 prefix: str = "", quant: Any = None) -> None:
        """``prefix`` (``model.layers.N.mlp``) and ``quant``: the shared expert's linear
        layers take ``quant``'s linear method, like a dense MLP's (e.g. kept-quantized GGUF)."""
        super().__init__()
        self.gate = RouterLinear(hidden_size, moe.num_experts, ops)
        self.experts = FusedMoE(moe.num_experts, moe.top_k, hidden_size,
                                moe.expert_intermediate_size, moe.renormalize, moe.scoring,
                                ops, parallel, method)
        self.shared_expert: GatedMLP | None = None
        self.shared_expert_gate: RouterLinear | None = None
        if moe.shared_expert_intermediate_size:
            self.shared_expert = GatedMLP(hidden_size, moe.shared_expert_intermediate_size, ops,
                                          parallel, f"{prefix}.shared_expert", quant)
            self.shared_expert_gate = RouterLinear(hidden_size, 1, ops)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.experts(x, self.gate(x))
        if self.shared_expert is not None and self.shared_expert_gate is not None:
            out = out + torch.sigmoid(self.shared_expert_gate(x)) * self.shared_expert(x)
        return out


class MoEDecoderForCausalLM(DecoderForCausalLM):
    """The Llama-family decoder whose sparse layers hold a ``SparseMoeBlock``."""

    def make_mlp(self, layer_idx: int) -> nn.Module | None:
        moe = self.moe_config
        if not moe.is_sparse_layer(layer_idx):
            return None
        quant = getattr(self, "quant_config", None)
        method = None if quant is None else quant.moe_method(f"model.layers.{layer_idx}.mlp.experts")
        return SparseMoeBlock(self.arch.hidden_size, moe, self.ops, self.parallel, method,
                              f"model.layers.{layer_idx}.mlp", quant)

    @property
    def moe_config(self) -> MoEConfig:
        return moe_config_from_arch(self.arch)

    def moe_layers(self) -> list[FusedMoE]:
        """The ``FusedMoE`` layers of this rank's stage, in layer order."""
        return [m for m in self.modules() if isinstance(m, FusedMoE)]

    def _load_one(self, name: str, source: WeightSource, params: dict[str, nn.Parameter],
                  tied_head: bool, loaded: set[str]) -> None:
        match = _EXPERT_NAME.match(name)
        if match is None:
            super()._load_one(name.replace(".block_sparse_moe.", ".mlp."), source, params,
                              tied_head, loaded)
            return
        layer, expert, proj = match["layer"], int(match["e"]), _PROJECTION[match["proj"]]
        experts = self._module(f"{layer}.mlp.experts", name)
        if not isinstance(experts, FusedMoE):
            raise ValueError(f"checkpoint tensor {name!r}: layer {layer} has no experts "
                             f"(decoder_sparse_step / mlp_only_layers disagree)")
        if match["leaf"] == "input_scale":
            raise ValueError(f"checkpoint tensor {name!r}: static activation scales of experts "
                             "are not supported (FP8 experts quantize activations dynamically "
                             "per token; use a dynamic-activation checkpoint)")
        if experts.load_expert(expert, proj, source, match["leaf"]):
            suffix = " scale" if match["leaf"] == "weight_scale" else ""
            loaded.add(_expert_key(f"{layer}.mlp.experts", expert, proj) + suffix)

    def expected_weight_keys(self) -> set[str]:
        experts = tuple(f"{path}." for path, m in self.named_modules() if isinstance(m, FusedMoE))
        # an expert layer's parameters (whatever its method stores) are reported per expert
        keys = {k for k in super().expected_weight_keys() if not k.startswith(experts)}
        for path, module in self.named_modules():
            if isinstance(module, FusedMoE):
                p = module.placement
                scaled = hasattr(module, "w13_weight_scale")
                for e in range(p.first_expert, p.first_expert + p.num_local_experts):
                    keys.update(_expert_key(path, e, proj) for proj in _PARAM_OF)
                    if scaled:
                        keys.update(_expert_key(path, e, proj) + " scale" for proj in _PARAM_OF)
        return keys


def _expert_key(experts_path: str, expert: int, proj: str) -> str:
    """The key ``load_weights`` reports for one expert's projection."""
    return f"{experts_path}.{_PARAM_OF[proj]}[expert {expert} {proj}]"


class MixtralForCausalLM(MoEDecoderForCausalLM):
    """Mixtral: every layer sparse, softmax top-k renormalised, no shared expert."""


class Qwen2MoeForCausalLM(MoEDecoderForCausalLM):
    """Qwen2-MoE: q/k/v biases, a sigmoid-gated shared expert, optional renormalisation."""


class Qwen3MoeForCausalLM(MoEDecoderForCausalLM):
    """Qwen3-MoE: q/k norm, top-8 with norm_topk_prob, no shared expert."""
