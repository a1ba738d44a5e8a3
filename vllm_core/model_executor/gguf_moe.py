"""Mixture-of-experts GGUF files (as llama.cpp's ``convert_hf_to_gguf.py`` writes them):
metadata -> our MoE config, stacked expert tensors -> per-expert views.

Architectures (``general.architecture``):
- ``llama`` with ``llama.expert_count`` > 0: Mixtral (``MixtralForCausalLM``); the experts'
  intermediate size is ``feed_forward_length``; top-k weights renormalised;
- ``qwen2moe``: Qwen2-MoE, experts of ``expert_feed_forward_length``, a shared expert of
  ``expert_shared_feed_forward_length`` (``ffn_{gate,up,down}_shexp``) scaled by
  ``sigmoid(ffn_gate_inp_shexp . x)``; top-k weights not renormalised (llama.cpp's rule);
- ``qwen3moe``: Qwen3-MoE, no shared expert, top-k weights renormalised (``norm_topk_prob``).
``{arch}.expert_weights_norm``, when a file stores it, overrides the renormalisation default;
a sigmoid ``{arch}.expert_gating_func`` is refused. Any other architecture that declares
``{arch}.expert_count`` is refused with an error naming it (``check_moe_architecture``).

Which layers are sparse: the blocks that hold a router (``blk.N.ffn_gate_inp``); the others
keep a dense MLP of ``feed_forward_length`` (HF's ``mlp_only_layers``).

Expert tensors (``expert_views``): the converter stacks the HF per-expert weights with
``torch.stack(dim=0)``, so the numpy view of ``blk.N.ffn_gate_exps.weight`` /
``ffn_up_exps`` is ``[E, I, H]`` and of ``ffn_down_exps`` ``[E, H, I]`` (GGUF lists the
dimensions reversed: ``ne = [H, I, E]``); quantized types are ``[E, rows, bytes per row]``.
``ffn_gate_up_exps`` (``--fuse-gate-up-exps``) is ``[E, 2I, H]``, gate rows first. Older Mixtral
files hold one tensor per expert, ``blk.N.ffn_{gate,up,down}.E.weight``. Every expert of every
projection becomes its own 2-D ``GGUFTensor`` whose ``data`` is a view of the memory map (no
copy), named ``model.layers.N.mlp.experts.E.{gate,up,down}_proj.weight`` - the per-expert HF
names ``MoEDecoderForCausalLM`` already stacks (and cuts per TP / EP rank) at load; an expert
another rank holds is never read, a read one is de-quantized alone.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

from vllm_core.model_executor.gguf_fast_reader import GGUFTensor

# GGUF MoE architecture -> (HF architecture, HF model_type, renormalise top-k by default)
GGUF_MOE_ARCHITECTURES = {"llama": ("MixtralForCausalLM", "mixtral", True),
                          "qwen2moe": ("Qwen2MoeForCausalLM", "qwen2_moe", False),
                          "qwen3moe": ("Qwen3MoeForCausalLM", "qwen3_moe", True)}
# llama.cpp block tensor -> our module (the dense block names live in gguf_loader)
MOE_BLOCK_NAMES = {"ffn_gate_inp": "mlp.gate", "ffn_gate_inp_shexp": "mlp.shared_expert_gate",
                   "ffn_gate_shexp": "mlp.shared_expert.gate_proj",
                   "ffn_up_shexp": "mlp.shared_expert.up_proj",
                   "ffn_down_shexp": "mlp.shared_expert.down_proj"}
_STACKED = re.compile(r"^blk\.(?P<layer>\d+)\.ffn_(?P<proj>gate|up|down|gate_up)_exps\.weight$")
_PER_EXPERT = re.compile(r"^blk\.(?P<layer>\d+)\.ffn_(?P<proj>gate|up|down)\.(?P<e>\d+)\.weight$")
_SIGMOID_GATING = 2            # gguf.ExpertGatingFuncType.SIGMOID


def is_moe_gguf(metadata: dict[str, Any]) -> bool:
    """True when the file declares routed experts (``{arch}.expert_count`` > 0)."""
    arch_name = metadata.get("general.architecture")
    return bool(metadata.get(f"{arch_name}.expert_count"))


def check_moe_architecture(metadata: dict[str, Any], path: str) -> None:
    """ValueError naming the architecture of a MoE file we cannot run."""
    arch_name = metadata.get("general.architecture")
    if is_moe_gguf(metadata) and arch_name not in GGUF_MOE_ARCHITECTURES:
        raise ValueError(f"GGUF mixture-of-experts architecture {arch_name!r} in {path} is not "
                         f"supported; supported MoE architectures: llama (Mixtral), "
                         f"{', '.join(a for a in GGUF_MOE_ARCHITECTURES if a != 'llama')}")


def moe_arch_fields(key: Callable[..., Any], arch_name: str, tensor_names: set[str],
                    num_layers: int, path: str) -> dict[str, Any]:
    """The ``ModelArchConfig`` fields of a MoE file: ``architecture``, ``model_type``,
    ``intermediate_size`` (dense layers; Mixtral: the experts') and the ``hf_config`` keys
    ``moe_config_from_arch`` reads. ``key(suffix, default, required)`` reads
    ``{arch}.suffix``."""
    architecture, model_type, renormalize = GGUF_MOE_ARCHITECTURES[arch_name]
    gating = key("expert_gating_func")
    if gating is not None and int(gating) == _SIGMOID_GATING:
        raise ValueError(f"GGUF file {path}: sigmoid expert gating ({arch_name}."
                         f"expert_gating_func) is not supported for {arch_name}")
    norm = key("expert_weights_norm")
    num_experts = int(key("expert_count", required=True))
    top_k = int(key("expert_used_count", required=True))
    dense = key("feed_forward_length")
    if model_type == "mixtral":
        expert_inter = int(key("feed_forward_length", required=True))
    else:
        expert_inter = int(key("expert_feed_forward_length", required=True))
    sparse = {i for i in range(num_layers) if f"blk.{i}.ffn_gate_inp.weight" in tensor_names}
    if not sparse:
        raise ValueError(f"GGUF file {path} declares {num_experts} experts but no block has a "
                         f"router (blk.N.ffn_gate_inp.weight)")
    hf_config: dict[str, Any] = {
        "num_experts": num_experts, "num_experts_per_tok": top_k,
        "moe_intermediate_size": expert_inter,
        "norm_topk_prob": renormalize if norm is None else bool(norm),
        "mlp_only_layers": sorted(set(range(num_layers)) - sparse)}
    if model_type == "mixtral":
        hf_config["num_local_experts"] = num_experts
    shared = key("expert_shared_feed_forward_length")
    if shared and any(".ffn_gate_shexp." in n for n in tensor_names):
        hf_config["shared_expert_intermediate_size"] = int(shared)
    return {"architecture": architecture, "model_type": model_type,
            "intermediate_size": int(dense) if dense else expert_inter,
            "hf_config": hf_config}


def expert_views(t: GGUFTensor, num_experts: int | None = None
                 ) -> Iterator[tuple[str, GGUFTensor]] | None:
    """``(HF per-expert name, 2-D view)`` for an expert tensor ``t`` (module docstring), None
    when ``t`` holds no experts. ``num_experts`` (the file's ``expert_count``) checks the
    stacked dimension. The shared-expert gate, stored 1-D ``[H]`` by some converters, is
    also returned here as its ``[1, H]`` view."""
    if t.name.endswith(".ffn_gate_inp_shexp.weight") and t.data.ndim == 1:
        layer = t.name.split(".")[1]
        return iter([(f"model.layers.{layer}.{MOE_BLOCK_NAMES['ffn_gate_inp_shexp']}.weight",
                      GGUFTensor(t.name, t.tensor_type, t.data.reshape(1, -1)))])
    match = _PER_EXPERT.match(t.name)
    if match is not None:
        name = f"model.layers.{match['layer']}.mlp.experts.{match['e']}.{match['proj']}_proj.weight"
        return iter([(name, t)])
    match = _STACKED.match(t.name)
    if match is None:
        return None
    if t.data.ndim != 3 or (num_experts is not None and t.data.shape[0] != num_experts):
        raise ValueError(f"GGUF tensor {t.name!r} has shape {tuple(t.data.shape)}; expected "
                         f"[{num_experts or 'experts'}, rows, columns] stacked experts")
    return _stacked_views(t, match["layer"], match["proj"])


def _stacked_views(t: GGUFTensor, layer: str, proj: str) -> Iterator[tuple[str, GGUFTensor]]:
    prefix = f"model.layers.{layer}.mlp.experts"
    rows = t.data.shape[1]
    if proj == "gate_up" and rows % 2:
        raise ValueError(f"GGUF tensor {t.name!r}: {rows} fused gate/up rows is odd")
    for e in range(t.data.shape[0]):
        if proj == "gate_up":
            half = rows // 2
            for part, sl in (("gate", slice(0, half)), ("up", slice(half, rows))):
                yield (f"{prefix}.{e}.{part}_proj.weight",
                       GGUFTensor(f"{t.name}[{e}, {part}]", t.tensor_type, t.data[e, sl]))
        else:
            yield (f"{prefix}.{e}.{proj}_proj.weight",
                   GGUFTensor(f"{t.name}[{e}]", t.tensor_type, t.data[e]))
