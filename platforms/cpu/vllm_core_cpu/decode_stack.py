"""The fused decode stack: a Llama-family model's decoder layers as one C++ call per step.

At batch 1 the C++ kernels of a 135M model's decode step take ~15 ms and the Python around
them (30 layers x ~15 module calls and op dispatches) several more: ``csrc/decode_stack.cpp``
(``torch.classes.vllm_core_cpu.DecodeStack``) runs the same kernel sequence from C++. It holds
references to the model's parameters and KV cache tensors (nothing is copied), so its numbers
are bitwise those of the unfused forward (same functions, same arguments, same order; batch
invariant per row like every kernel it calls).

``build_decode_stack(model, kv_caches, ...)`` returns a ``DecodeStack`` or the reason it does
not apply; it applies when the model is exactly the core's dense decoder
(``DecoderForCausalLM`` / ``DecoderModel`` / ``DecoderLayer`` with ``GatedMLP``, no q/k norm,
one rank holding every layer), every projection is a WNA16 weight the C++ kernel takes or
every one a W8A8 INT8 weight packed at load (``int8_ops.PackedInt8Weight``), the norms /
activation run the C++ kernels, every layer's attention is the ``cpu_paged``
backend's kernel with the cache in the activation dtype, and no hidden-state capture is set
(EAGLE-3). The runner (``model_runner.CpuModelRunner``) uses it for decode-only steps and runs
the module forward otherwise (prefill chunks, LoRA, speculative decoding, multimodal inputs,
float or other quantized weights).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from vllm_core.attention.kv_scales import is_fp8
from vllm_core.model_executor.models.decoder import (
    DecoderAttention,
    DecoderForCausalLM,
    DecoderLayer,
    DecoderModel,
    GatedMLP,
)


@dataclass(slots=True)
class DecodeStack:
    """A built stack and the model pieces around it. ``forward`` takes the step's token ids,
    rotary positions and ``CpuAttentionMetadata`` and returns the final norm's output
    ``[T, hidden]``, as ``DecoderForCausalLM.forward`` would."""

    stack: Any                         # torch.classes.vllm_core_cpu.DecodeStack
    embed: torch.nn.Module             # the model's token embedding
    num_layers: int
    #: the embedding is a WNA16 vocabulary table the stack de-quantizes itself (the rows
    #: ``quantized_vocab.wna16_rows`` gives); else ``embed`` runs first
    embeds_in_stack: bool = False

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                attn_metadata: Any) -> torch.Tensor:
        md = attn_metadata
        if self.embeds_in_stack:
            return self.stack.forward_ids(input_ids, positions, md.slot_mapping,
                                          md.block_table, md.token_request, md.token_position)
        return self.stack.forward(self.embed(input_ids), positions, md.slot_mapping,
                                  md.block_table, md.token_request, md.token_position)


def _projection(module: Any, dtype: torch.dtype) -> tuple[Any, str | None]:
    """``(kind, weight, bias)`` of a linear layer (kind "wna16": a ``WNA16Weight``; "int8": a
    ``PackedInt8Weight``, its bias in float32 as ``int8_ops`` passes it), or a reason it cannot
    be fused."""
    from vllm_core_cpu import int8_ops, quant_ops

    method = getattr(module, "method", None)
    w = getattr(module, "qweights", None)
    kind = getattr(method, "kind", None)
    if kind not in ("wna16", "int8") or w is None:
        return None, (f"{type(module).__name__} is neither a WNA16 (int4 / int8 weight-only) "
                      "nor a W8A8 INT8 layer")
    tp = getattr(module, "tp", None)
    if tp is not None and tp.world_size != 1:
        return None, "tensor parallelism"
    bias = getattr(module, "bias", None)
    if kind == "int8":
        if not isinstance(w, int8_ops.PackedInt8Weight) or dtype not in int8_ops.DTYPES:
            return None, "a W8A8 INT8 weight not packed at load (VLLM_CPU_INT8_PACKED=0, or " \
                         "no AVX-512 VNNI)"
        return ("int8", w, None if bias is None else bias.float()), None
    if not quant_ops.kernel_fits(torch.empty(0, dtype=dtype), w, bias):
        return None, "a WNA16 weight the C++ kernel does not take (act order, shape, dtype)"
    return ("wna16", w, bias), None


def _add_layer(stack: Any, norms: list[torch.Tensor], projs: list[tuple[str, Any, Any]],
               cache: torch.Tensor, attn: tuple[float, int, float, float],
               int8_amx: bool) -> str | None:
    """Append one layer to ``stack`` (``attn``: the attention's scale, sliding window and the
    cache's k / v scales); a reason when its projections mix kinds."""
    kinds = {kind for kind, _, _ in projs}
    ws = [w for _, w, _ in projs]
    biases = [b for _, _, b in projs]
    if kinds == {"int8"}:
        stack.add_layer_int8(norms, [w.packed for w in ws], [w.out_features for w in ws],
                             [w.weight_scale for w in ws], [w.input_scale for w in ws],
                             biases, bool(int8_amx), cache[0], cache[1], *attn)
        return None
    if kinds != {"wna16"}:
        return "a layer mixes WNA16 and W8A8 INT8 projections"
    stack.add_layer(norms, [w.qweight for w in ws], [w.scales for w in ws],
                    [w.zeros for w in ws], biases, [w.bits for w in ws],
                    [w.group_size if w.group_size > 0 else w.in_features for w in ws],
                    cache[0], cache[1], *attn)
    return None


def build_decode_stack(model: Any, kv_caches: list[torch.Tensor], dtype: torch.dtype,
                       int8_activations: bool, int8_amx: bool = True) -> DecodeStack | str:
    """The fused stack of ``model`` over ``kv_caches`` (one per layer), or why it does not
    apply (a sentence). ``int8_activations``: the wna16 kernel's int8 path, as the model's
    ``CpuLayerOps`` uses it, and ``int8_amx``: the W8A8 INT8 kernel's AMX tiles, as its
    ``int8_amx`` (the stack must run what the unfused forward runs)."""
    from vllm_core_cpu import norm_ops, quant_ops
    from vllm_core_cpu.attention import CpuPagedAttentionImpl

    if not quant_ops.kernels_available() or not hasattr(torch.classes.vllm_core_cpu,
                                                        "DecodeStack"):
        return "the CPU kernels are not built"
    if type(model).forward is not DecoderForCausalLM.forward or \
            type(getattr(model, "model", None)) is not DecoderModel:
        return f"{type(model).__name__} is not the core's dense decoder"
    dm: DecoderModel = model.model
    n = len(dm.layers)
    if dm.start_layer != 0 or dm.end_layer != n or dm.embed_tokens is None or dm.norm is None:
        return "pipeline parallelism (this rank does not hold every layer)"
    if dm.aux_capture is not None:
        return "hidden states are captured for a speculative proposer"
    if len(kv_caches) != n or any(c.numel() == 0 or (c.dtype != dtype and not is_fp8(c.dtype))
                                  for c in kv_caches):
        return "the KV cache is neither in the activation dtype nor float8"
    rotary = dm.rotary_emb.cos_sin_cache
    if rotary.dtype != torch.float32:
        return "the rotary table is not float32"
    eps = dm.norm.eps
    stack = None
    for layer in dm.layers:
        if type(layer) is not DecoderLayer or type(layer.self_attn) is not DecoderAttention \
                or type(layer.mlp) is not GatedMLP:
            return "a layer other than the dense decoder layer (MoE, another family)"
        attn = layer.self_attn
        if attn.q_norm is not None or attn.k_norm is not None:
            return "per-head q/k norms (Qwen3)"
        if attn.rotary_emb.cos_sin_cache is not rotary:
            return "layers with their own rotary tables"
        impl = attn.attn.impl
        if type(impl) is not CpuPagedAttentionImpl or not impl.use_kernel:
            return "the attention is not the cpu_paged backend's C++ kernel"
        norms = (layer.input_layernorm, layer.post_attention_layernorm)
        if any(m.eps != eps for m in norms):
            return "norms with different eps"
        if any(not norm_ops.kernel_fits(torch.empty(0, dtype=dtype), m.weight)
               for m in (*norms, dm.norm)):
            return "norm weights the C++ kernel does not take"
        projs = []
        for module in (attn.qkv_proj, attn.o_proj, layer.mlp.gate_up_proj,
                       layer.mlp.down_proj):
            proj, reason = _projection(module, dtype)
            if reason is not None:
                return reason
            projs.append(proj)
        if stack is None:
            stack = torch.classes.vllm_core_cpu.DecodeStack(
                attn.num_heads, attn.num_kv_heads, attn.head_dim, float(eps),
                bool(int8_activations), rotary, dm.norm.weight)
        reason = _add_layer(stack, [norms[0].weight, norms[1].weight], projs,
                            kv_caches[stack.num_layers()],
                            (float(impl.scale), int(impl.sliding_window or 0),
                             *impl.kv_scale_values()), int8_amx)
        if reason is not None:
            return reason
    if stack is None:
        return "the model has no layers"
    return DecodeStack(stack, dm.embed_tokens, n, _set_embedding(stack, dm.embed_tokens))


def _set_embedding(stack: Any, embed: Any) -> bool:
    """Give the stack the embedding when it is a single-rank WNA16 vocabulary table in the
    layout it reads (the lookup of ``VocabParallelEmbedding.lookup``); False otherwise."""
    w = getattr(embed, "qweights", None)
    if (w is None or embed.tp.world_size != 1 or w.g_idx is not None or w.group_size <= 0
            or w.bits not in (4, 8) or w.scales.dtype != embed.weight.dtype
            or w.zeros.dtype != w.scales.dtype
            or not all(t.is_contiguous() for t in (w.qweight, w.scales, w.zeros))):
        return False
    stack.set_embedding(w.qweight, w.scales, w.zeros, w.bits, w.group_size)
    return True
