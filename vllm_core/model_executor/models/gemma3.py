"""Gemma 3 text (``Gemma3ForCausalLM``): the Llama-family loader around a different block.

What differs from ``decoder.py``'s pre-norm block (all read from ``ModelArchConfig``):

* sandwich norms: ``h = h + post_attention_norm(attn(input_norm(h)))``, then
  ``h = h + post_feedforward_norm(mlp(pre_feedforward_norm(h)))``;
* every norm (also the per-head q/k norms) is ``GemmaRMSNorm``: ``x / rms(x) * (1 + w)``, all
  in float32, cast back at the end (HF order); checkpoints store ``w`` (zeros = identity);
* the token embedding is multiplied by ``sqrt(hidden_size)`` (rounded to the model dtype);
* a GELU-tanh gated MLP; the attention scale is ``query_pre_attn_scalar ** -0.5``;
* interleaved layers (``arch.layer_types``): ``sliding_attention`` layers see the last
  ``arch.sliding_window`` keys and rotate with base ``arch.local_rope_theta`` (no scaling);
  ``full_attention`` layers see everything and rotate with ``arch.rope_theta`` and
  ``arch.rope_scaling`` (linear x8 on the 4B+ checkpoints);
* optional final logit soft-capping (``DecoderForCausalLM.compute_logits``).

Attention logit soft-capping (Gemma 2) is refused when the config is read. The KV cache keeps
every block of a sliding layer (see docs/models.md: the global layers of the same request need
them, and one block table serves all layers).

Pipeline stages exchange ``IntermediateTensors(hidden, residual=hidden)``: the block keeps no
separate residual stream, so the residual slot repeats the hidden states.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vllm_core.attention.backend import AttentionBackend
from vllm_core.config import ModelArchConfig
from vllm_core.distributed.parallel_context import ParallelContext
from vllm_core.model_executor.layers.ops import LayerOps
from vllm_core.model_executor.layers.parallel_linear import (
    ColumnParallelLinear,
    RowParallelLinear,
    even_shard,
)
from vllm_core.model_executor.layers.rotary_embedding import RotaryEmbedding
from vllm_core.model_executor.layers.vocab_parallel import VocabParallelEmbedding
from vllm_core.model_executor.models.decoder import (
    DecoderAttention,
    DecoderForCausalLM,
    MissingLayer,
    layer_sliding_window,
    linear_method,
)
from vllm_core.model_executor.models.interface import IntermediateTensors


class GemmaRMSNorm(nn.Module):
    """``x * rsqrt(mean(x^2) + eps) * (1 + weight)`` in float32, returned in ``x.dtype``."""

    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(size), requires_grad=False)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        out = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (out * (1.0 + self.weight.float())).to(x.dtype)


class Gemma3Attention(DecoderAttention):
    """The decoder's attention with Gemma's per-head q/k norms (``GemmaRMSNorm``) and scores
    scaled by ``query_pre_attn_scalar ** -0.5``."""

    def __init__(self, arch: ModelArchConfig, rotary: RotaryEmbedding,
                 attn_backend: type[AttentionBackend], ops: LayerOps,
                 parallel: ParallelContext, sliding_window: int | None, prefix: str = "",
                 quant: Any = None) -> None:
        scalar = arch.query_pre_attn_scalar or arch.head_dim
        super().__init__(arch, rotary, attn_backend, ops, parallel, sliding_window, prefix,
                         quant, scale=scalar ** -0.5)
        self.q_norm = GemmaRMSNorm(self.head_dim, arch.rms_norm_eps)
        self.k_norm = GemmaRMSNorm(self.head_dim, arch.rms_norm_eps)


class GeluTanhMLP(nn.Module):
    """``down(gelu_tanh(gate(x)) * up(x))`` with gate and up fused (rows [gate | up])."""

    def __init__(self, hidden_size: int, intermediate_size: int, ops: LayerOps,
                 parallel: ParallelContext, prefix: str = "", quant: Any = None) -> None:
        super().__init__()
        what = "the model's intermediate_size"
        gate = even_shard("gate", intermediate_size, parallel.tp, what)
        up = even_shard("up", intermediate_size, parallel.tp, what)
        self.gate_up_proj = ColumnParallelLinear(
            hidden_size, [gate, up], bias=False, ops=ops,
            method=linear_method(quant, f"{prefix}.gate_up_proj"))
        self.down_proj = RowParallelLinear(intermediate_size, hidden_size, bias=False, ops=ops,
                                           tp=parallel.tp,
                                           method=linear_method(quant, f"{prefix}.down_proj"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.gelu(gate, approximate="tanh") * up)


class Gemma3DecoderLayer(nn.Module):
    def __init__(self, arch: ModelArchConfig, rotary: RotaryEmbedding,
                 attn_backend: type[AttentionBackend], ops: LayerOps,
                 parallel: ParallelContext, sliding_window: int | None, prefix: str = "",
                 quant: Any = None) -> None:
        super().__init__()
        eps = arch.rms_norm_eps
        self.input_layernorm = GemmaRMSNorm(arch.hidden_size, eps)
        self.self_attn = Gemma3Attention(arch, rotary, attn_backend, ops, parallel,
                                         sliding_window, f"{prefix}.self_attn", quant)
        self.post_attention_layernorm = GemmaRMSNorm(arch.hidden_size, eps)
        self.pre_feedforward_layernorm = GemmaRMSNorm(arch.hidden_size, eps)
        self.mlp = GeluTanhMLP(arch.hidden_size, arch.intermediate_size, ops, parallel,
                               f"{prefix}.mlp", quant)
        self.post_feedforward_layernorm = GemmaRMSNorm(arch.hidden_size, eps)

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor, kv_cache: torch.Tensor,
                attn_metadata: Any) -> torch.Tensor:
        attn = self.self_attn(positions, self.input_layernorm(hidden), kv_cache, attn_metadata)
        hidden = hidden + self.post_attention_layernorm(attn)
        mlp = self.mlp(self.pre_feedforward_layernorm(hidden))
        return hidden + self.post_feedforward_layernorm(mlp)


class Gemma3Model(nn.Module):
    """Embedding (scaled), the layers of this pipeline stage, final norm (last stage)."""

    def __init__(self, arch: ModelArchConfig, attn_backend: type[AttentionBackend],
                 ops: LayerOps, parallel: ParallelContext, quant: Any = None) -> None:
        super().__init__()
        self.parallel = parallel
        self.start_layer, self.end_layer = parallel.layer_range(arch.num_hidden_layers)
        self.embed_tokens = (VocabParallelEmbedding(arch.vocab_size, arch.hidden_size,
                                                    parallel.tp)
                             if parallel.is_first_stage else None)
        # sqrt(hidden) rounded to the model dtype, as HF multiplies by it
        self.embed_scale = float(torch.tensor(arch.hidden_size ** 0.5,
                                              dtype=torch.get_default_dtype()))
        self.global_rotary = RotaryEmbedding(arch.head_dim, arch.head_dim,
                                             arch.max_position_embeddings, arch.rope_theta,
                                             arch.rope_scaling, ops)
        self.local_rotary = RotaryEmbedding(arch.head_dim, arch.head_dim,
                                            arch.max_position_embeddings,
                                            arch.local_rope_theta or arch.rope_theta, None, ops)
        layers: list[nn.Module] = []
        for i in range(arch.num_hidden_layers):
            if not self.start_layer <= i < self.end_layer:
                layers.append(MissingLayer())
                continue
            window = layer_sliding_window(arch, i)
            rotary = self.local_rotary if window is not None else self.global_rotary
            layers.append(Gemma3DecoderLayer(arch, rotary, attn_backend, ops, parallel, window,
                                             f"model.layers.{i}", quant))
        self.layers = nn.ModuleList(layers)
        self.norm = (GemmaRMSNorm(arch.hidden_size, arch.rms_norm_eps)
                     if parallel.is_last_stage else None)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                kv_caches: list[torch.Tensor], attn_metadata: Any,
                intermediate: IntermediateTensors | None = None
                ) -> torch.Tensor | IntermediateTensors:
        if len(kv_caches) != self.end_layer - self.start_layer:
            raise ValueError(f"expected {self.end_layer - self.start_layer} kv_caches (one per "
                             f"layer of this stage), got {len(kv_caches)}")
        if self.embed_tokens is not None:
            hidden = self.embed_tokens(input_ids) * self.embed_scale
        else:
            if intermediate is None:
                raise ValueError("a pipeline stage after the first needs the previous "
                                 "stage's IntermediateTensors")
            hidden = intermediate.hidden
        layers = self.layers[self.start_layer:self.end_layer]
        for layer, kv_cache in zip(layers, kv_caches, strict=True):
            hidden = layer(positions, hidden, kv_cache, attn_metadata)
        if self.norm is None:
            return IntermediateTensors(hidden, hidden)
        return self.norm(hidden)


class Gemma3ForCausalLM(DecoderForCausalLM):
    """Gemma 3 text models (1B, and the language model of the larger checkpoints when saved
    as ``Gemma3ForCausalLM``); loading is the Llama family's (HF names, q/k/v and gate/up
    fused at load time)."""

    def build_model(self, arch: ModelArchConfig, attn_backend: type[AttentionBackend],
                    ops: LayerOps, parallel: ParallelContext) -> nn.Module:
        return Gemma3Model(arch, attn_backend, ops, parallel,
                           getattr(self, "quant_config", None))
