"""The shared pre-norm decoder of the Llama family (Llama, Mistral, Qwen2, Qwen3, Phi-3).

Differences between the families are fields of ``ModelArchConfig``, not subclasses:
``attention_bias`` (Qwen2: biases on q/k/v), ``qk_norm`` (Qwen3: per-head RMSNorm on q and k
before rope), explicit ``head_dim`` (Qwen3, may differ from hidden / heads), GQA
(``num_key_value_heads``), ``tie_word_embeddings``, ``rope_scaling``, ``sliding_window``,
``partial_rotary_factor`` (Phi-4-mini rotates the first 3/4 of each head) and
``final_logit_softcapping``.

Parameter names follow HF checkpoints, except that q/k/v are fused into ``qkv_proj`` (rows
[q | k | v]) and gate/up into ``gate_up_proj`` (rows [gate | up]); ``load_weights`` fuses the
separate checkpoint tensors at load time. Checkpoints that already hold them fused (Phi-3's
``qkv_proj`` / ``gate_up_proj``) are split into their parts by rows, so each TP rank still
reads only its slices. With tied embeddings there is no ``lm_head`` (the
logits use ``embed_tokens.weight``), except on the last pipeline stage of a split model, whose
``lm_head`` is loaded from ``model.embed_tokens.weight``.

Parallelism (``ParallelContext``, passed at construction): attention heads, the MLP's
intermediate features and the vocabulary are split over the TP ranks (column-parallel QKV and
gate-up, row-parallel o/down, vocab-parallel embedding and LM head); each rank reads only its
slices of the checkpoint. Decoder layers are split over the pipeline stages; a stage holds
only its layers (``layers[i]`` is a ``MissingLayer`` elsewhere, names keep global indices).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from vllm_core.attention.backend import AttentionBackend
from vllm_core.attention.kv_scales import kv_scale_target
from vllm_core.config import ModelArchConfig
from vllm_core.distributed.parallel_context import ParallelContext, single_rank_context
from vllm_core.model_executor.layers.attention import Attention
from vllm_core.model_executor.layers.layernorm import RMSNorm
from vllm_core.model_executor.layers.ops import LayerOps
from vllm_core.model_executor.layers.parallel_linear import (
    ColumnParallelLinear,
    RowParallelLinear,
    even_shard,
    qkv_shards,
)
from vllm_core.model_executor.layers.rotary_embedding import RotaryEmbedding
from vllm_core.model_executor.layers.vocab_parallel import (
    ParallelLMHead,
    VocabParallelEmbedding,
    compute_parallel_logits,
    gather_logits,
    local_logits,
)
from vllm_core.model_executor.models.aux_hidden import AuxHiddenCapture
from vllm_core.model_executor.models.interface import CausalLM, IntermediateTensors
from vllm_core.model_executor.weight_source import (
    LazyTensor,
    WeightSource,
    read_full,
    read_slice,
    source_shape,
)

# checkpoint projection -> (fused parameter, shard)
_FUSED = {"q_proj": ("qkv_proj", "q"), "k_proj": ("qkv_proj", "k"), "v_proj": ("qkv_proj", "v"),
          "gate_proj": ("gate_up_proj", "gate"), "up_proj": ("gate_up_proj", "up")}
# checkpoint tensors that are already fused (Phi-3) -> their parts, in row order
_PREFUSED = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}
_ROW_PARALLEL = ("o_proj", "down_proj")
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


class MissingLayer(nn.Module):
    """Placeholder of a decoder layer that lives on another pipeline stage."""


def linear_method(quant: Any, prefix: str) -> Any:
    """The quantization config's weight method for linear layer ``prefix`` (None: float)."""
    return None if quant is None else quant.linear_method(prefix)


def layer_sliding_window(arch: ModelArchConfig, index: int) -> int | None:
    """The attention window of layer ``index``: ``arch.sliding_window`` on every layer, unless
    ``arch.layer_types`` marks the layer ``full_attention`` (Gemma 3's global layers)."""
    if arch.layer_types is not None and arch.layer_types[index] != "sliding_attention":
        return None
    return arch.sliding_window


def rotary_dim_of(arch: ModelArchConfig) -> int:
    """The rotated channels of each head (``head_dim * partial_rotary_factor``)."""
    return int(arch.head_dim * arch.partial_rotary_factor)


def row_part(source: WeightSource, start: int, size: int) -> LazyTensor:
    """Rows ``[start, start + size)`` of ``source`` as a lazily read tensor (sliced again by
    the layer that loads it, so a TP rank reads only its rows of a fused checkpoint tensor)."""
    shape = source_shape(source)
    if start + size > shape[0]:
        raise ValueError(f"has shape {shape}, too few rows for its fused parts")

    def reader(dim: int | None, begin: int, length: int) -> torch.Tensor:
        if dim is None:
            return read_slice(source, 0, start, size)
        if dim == 0:
            return read_slice(source, 0, start + begin, length)
        return read_slice(source, 0, start, size).narrow(1, begin, length)

    return LazyTensor((size, *shape[1:]), reader)


class DecoderAttention(nn.Module):
    def __init__(self, arch: ModelArchConfig, rotary: RotaryEmbedding,
                 attn_backend: type[AttentionBackend], ops: LayerOps,
                 parallel: ParallelContext, sliding_window: int | None = None,
                 prefix: str = "", quant: Any = None, input_size: int | None = None,
                 scale: float | None = None) -> None:
        """``input_size``: the width q/k/v read (None: ``arch.hidden_size``; an EAGLE-3
        head's layer reads [embedding, hidden], twice that). ``scale``: of the attention
        scores (None: ``head_dim ** -0.5``)."""
        super().__init__()
        self.head_dim = arch.head_dim
        q, k, v, self.num_heads, self.num_kv_heads = qkv_shards(
            arch.num_attention_heads, arch.num_key_value_heads, arch.head_dim, parallel.tp)
        self.q_size, self.kv_size = q.local_size, k.local_size
        self.qkv_proj = ColumnParallelLinear(input_size or arch.hidden_size, [q, k, v],
                                             bias=arch.attention_bias, ops=ops,
                                             method=linear_method(quant, f"{prefix}.qkv_proj"))
        # HF: Llama/Qwen3 put the attention_bias on o_proj too, Qwen2 only on q/k/v
        o_bias = arch.attention_bias and arch.model_type not in ("qwen2", "qwen2_moe",
                                                                   "qwen2_5_vl")
        self.o_proj = RowParallelLinear(arch.num_attention_heads * arch.head_dim,
                                        arch.hidden_size, bias=o_bias, ops=ops, tp=parallel.tp,
                                        method=linear_method(quant, f"{prefix}.o_proj"))
        self.q_norm = RMSNorm(self.head_dim, arch.rms_norm_eps, ops) if arch.qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, arch.rms_norm_eps, ops) if arch.qk_norm else None
        self.rotary_emb = rotary
        self.attn = Attention(self.num_heads, self.head_dim,
                              self.head_dim ** -0.5 if scale is None else scale,
                              self.num_kv_heads, attn_backend, sliding_window)

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor, kv_cache: torch.Tensor,
                attn_metadata: Any) -> torch.Tensor:
        num_tokens = hidden.shape[0]
        q, k, v = self.qkv_proj(hidden).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.reshape(num_tokens, self.num_heads, self.head_dim)
        k = k.reshape(num_tokens, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.attn.fuses_rotary:
            out = self.attn.forward_with_rotary(q, k, v, kv_cache, attn_metadata, positions,
                                                self.rotary_emb.cos_sin_cache)
        else:
            q, k = self.rotary_emb(positions, q, k)
            out = self.attn(q, k, v, kv_cache, attn_metadata)
        return self.o_proj(out)


class GatedMLP(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int, ops: LayerOps,
                 parallel: ParallelContext, prefix: str = "", quant: Any = None) -> None:
        super().__init__()
        tp = parallel.tp
        what = "the model's intermediate_size"
        gate = even_shard("gate", intermediate_size, tp, what)
        up = even_shard("up", intermediate_size, tp, what)
        self.gate_up_proj = ColumnParallelLinear(
            hidden_size, [gate, up], bias=False, ops=ops,
            method=linear_method(quant, f"{prefix}.gate_up_proj"))
        self.down_proj = RowParallelLinear(intermediate_size, hidden_size, bias=False, ops=ops,
                                           tp=tp,
                                           method=linear_method(quant, f"{prefix}.down_proj"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj.forward_silu_and_mul(self.gate_up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, arch: ModelArchConfig, rotary: RotaryEmbedding,
                 attn_backend: type[AttentionBackend], ops: LayerOps,
                 parallel: ParallelContext, sliding_window: int | None = None,
                 mlp: nn.Module | None = None, prefix: str = "", quant: Any = None
                 ) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(arch.hidden_size, arch.rms_norm_eps, ops)
        self.self_attn = DecoderAttention(arch, rotary, attn_backend, ops, parallel,
                                          sliding_window, f"{prefix}.self_attn", quant)
        self.post_attention_layernorm = RMSNorm(arch.hidden_size, arch.rms_norm_eps, ops)
        self.mlp = mlp if mlp is not None else GatedMLP(
            arch.hidden_size, arch.intermediate_size, ops, parallel, f"{prefix}.mlp", quant)

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor,
                residual: torch.Tensor | None, kv_cache: torch.Tensor, attn_metadata: Any
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pre-norm block; ``residual`` carries the stream (None on the first layer)."""
        if residual is None:
            residual = hidden
            hidden = self.input_layernorm(hidden)
        else:
            hidden, residual = self.input_layernorm(hidden, residual)
        hidden = self.self_attn(positions, hidden, kv_cache, attn_metadata)
        hidden, residual = self.post_attention_layernorm(hidden, residual)
        return self.mlp(hidden), residual


class DecoderModel(nn.Module):
    def __init__(self, arch: ModelArchConfig, attn_backend: type[AttentionBackend],
                 ops: LayerOps, parallel: ParallelContext,
                 make_mlp: Callable[[int], nn.Module | None] | None = None,
                 quant: Any = None) -> None:
        super().__init__()
        self.parallel = parallel
        self.start_layer, self.end_layer = parallel.layer_range(arch.num_hidden_layers)
        self.embed_tokens = (VocabParallelEmbedding(arch.vocab_size, arch.hidden_size,
                                                    parallel.tp)
                             if parallel.is_first_stage else None)
        self.rotary_emb = RotaryEmbedding(arch.head_dim, rotary_dim_of(arch),
                                          arch.max_position_embeddings, arch.rope_theta,
                                          arch.rope_scaling, ops)
        self.layers = nn.ModuleList(
            DecoderLayer(arch, self.rotary_emb, attn_backend, ops, parallel,
                         layer_sliding_window(arch, i),
                         make_mlp(i) if make_mlp is not None else None,
                         f"model.layers.{i}", quant)
            if self.start_layer <= i < self.end_layer else MissingLayer()
            for i in range(arch.num_hidden_layers))
        self.norm = (RMSNorm(arch.hidden_size, arch.rms_norm_eps, ops)
                     if parallel.is_last_stage else None)
        self.aux_capture: AuxHiddenCapture | None = None    # set by an EAGLE-3 proposer

    @property
    def num_local_layers(self) -> int:
        return self.end_layer - self.start_layer

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                kv_caches: list[torch.Tensor], attn_metadata: Any,
                intermediate: IntermediateTensors | None = None,
                inputs_embeds: torch.Tensor | None = None
                ) -> torch.Tensor | IntermediateTensors:
        """``inputs_embeds`` (first stage only; multimodal models) replaces the embedding
        lookup of ``input_ids``."""
        if len(kv_caches) != self.num_local_layers:
            raise ValueError(f"expected {self.num_local_layers} kv_caches (one per layer of "
                             f"this stage), got {len(kv_caches)}")
        if self.embed_tokens is not None:
            hidden = (inputs_embeds if inputs_embeds is not None
                      else self.embed_tokens(input_ids))
            residual = None
        else:
            if intermediate is None:
                raise ValueError("a pipeline stage after the first needs the previous "
                                 "stage's IntermediateTensors")
            hidden, residual = intermediate.hidden, intermediate.residual
        layers = self.layers[self.start_layer:self.end_layer]
        capture = self.aux_capture
        if capture is not None:
            capture.reset()
        for index, layer, kv_cache in zip(range(self.start_layer, self.end_layer), layers,
                                          kv_caches, strict=True):
            if capture is not None and capture.wants(index):
                capture.add(index, hidden, residual)
            hidden, residual = layer(positions, hidden, residual, kv_cache, attn_metadata)
        if self.norm is None:
            return IntermediateTensors(hidden, residual)
        hidden, _ = self.norm(hidden, residual)
        return hidden


class DecoderForCausalLM(CausalLM):
    """The Llama-family causal LM; see the module docstring for the family switches.
    ``quant_config`` (a ``QuantizationConfig``) gives each linear layer its weight method."""

    def __init__(self, arch: ModelArchConfig, attn_backend: type[AttentionBackend],
                 ops: LayerOps, parallel: ParallelContext | None = None,
                 quant_config: Any = None) -> None:
        super().__init__(arch, attn_backend, ops)
        parallel = parallel or single_rank_context()
        self.arch = arch
        self.ops = ops
        self.parallel = parallel
        self.quant_config = quant_config     # read by build_model
        self.model = self.build_model(arch, attn_backend, ops, parallel)
        own_head = parallel.is_last_stage and (not arch.tie_word_embeddings
                                               or not parallel.is_first_stage)
        self.lm_head = (ParallelLMHead(arch.vocab_size, arch.hidden_size, parallel.tp, ops)
                        if own_head else None)

    def build_model(self, arch: ModelArchConfig, attn_backend: type[AttentionBackend],
                    ops: LayerOps, parallel: ParallelContext) -> nn.Module:
        """The decoder stack (``.embed_tokens``, ``.layers``, ``.norm``, ``.start_layer``,
        ``.end_layer``); families with a different block override this. The decoder's linear
        layers take their weight methods from ``self.quant_config`` (None: float)."""
        return DecoderModel(arch, attn_backend, ops, parallel, self.make_mlp,
                            getattr(self, "quant_config", None))

    def make_mlp(self, layer_idx: int) -> nn.Module | None:
        """The MLP of decoder layer ``layer_idx`` (None: the dense ``GatedMLP``); mixture-of-
        experts families override it (``models/moe.py``)."""
        return None

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                kv_caches: list[torch.Tensor], attn_metadata: Any,
                intermediate: IntermediateTensors | None = None
                ) -> torch.Tensor | IntermediateTensors:
        return self.model(input_ids, positions, kv_caches, attn_metadata, intermediate)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        return self._soft_cap(compute_parallel_logits(hidden_states, self._logits_table(),
                                                      self.ops))

    def compute_local_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self._soft_cap(local_logits(hidden_states, self._logits_table(), self.ops))

    def gather_logits(self, local: torch.Tensor) -> torch.Tensor | None:
        return gather_logits(local, self._logits_table())

    def _logits_table(self) -> VocabParallelEmbedding:
        return self.model.embed_tokens if self.lm_head is None else self.lm_head

    def _soft_cap(self, logits: torch.Tensor | None) -> torch.Tensor | None:
        """``cap * tanh(logits / cap)`` with ``arch.final_logit_softcapping`` (elementwise, so
        the local logits of a vocab shard may be capped before they are gathered)."""
        cap = self.arch.final_logit_softcapping
        if logits is None or not cap:
            return logits
        return torch.tanh(logits / cap) * cap

    @torch.no_grad()
    def load_weights(self, weights: Iterable[tuple[str, WeightSource]]) -> set[str]:
        """Copy this rank's slices of HF-named checkpoint tensors; tensors of layers on other
        pipeline stages are skipped unread."""
        loaded: set[str] = set()
        params = dict(self.named_parameters())
        tied_head = self.arch.tie_word_embeddings and self.lm_head is not None
        for name, source in weights:
            if name.endswith(_IGNORED_SUFFIXES) or not self._owned(name):
                continue
            try:
                self._load_one(name, source, params, tied_head, loaded)
            except ValueError as e:
                if str(e).startswith("checkpoint tensor"):
                    raise
                raise ValueError(f"checkpoint tensor {name!r} {e}") from e
        return loaded

    def _load_one(self, name: str, source: WeightSource, params: dict[str, nn.Parameter],
                  tied_head: bool, loaded: set[str]) -> None:
        """One checkpoint tensor into this rank's parameters (its slice of it)."""
        if name == "lm_head.weight":
            if self.lm_head is not None and not tied_head:
                self.lm_head.load(source)
                loaded.add(name)
            return        # tied checkpoints may still carry a copy of the embedding
        if name == "model.embed_tokens.weight":
            if self.model.embed_tokens is not None:
                self.model.embed_tokens.load(source)
                loaded.add(name)
            if tied_head:
                self.lm_head.load(source)
                loaded.add("lm_head.weight")
            return
        kv_scale = kv_scale_target(name)
        if kv_scale is not None:                   # FP8 KV-cache scales (attention/kv_scales)
            self._module(kv_scale[0], name).load_kv_scale(kv_scale[1], read_full(source))
            loaded.add(name)
            return
        owner, _, leaf = name.rpartition(".")
        prefix, _, proj = owner.rpartition(".")
        if proj in _PREFUSED:
            module = self._module(owner, name)
            start = 0
            for part in _PREFUSED[proj]:
                shard = _FUSED[part][1]
                size = module.shards[shard].full_size
                module.load_shard(leaf, row_part(source, start, size), shard)
                loaded.add(f"{owner}.{leaf}[{prefix}.{part}.{leaf}]")
                start += size
            if start != source_shape(source)[0]:
                raise ValueError(f"has {source_shape(source)[0]} rows, expected {start} "
                                 f"(the sum of its fused parts)")
        elif proj in _FUSED:
            fused, shard = _FUSED[proj]
            module = self._module(f"{prefix}.{fused}", name)
            module.load_shard(leaf, source, shard)
            loaded.add(f"{prefix}.{fused}.{leaf}[{name}]")
        elif proj in _ROW_PARALLEL:
            self._module(owner, name).load(leaf, source)
            loaded.add(name)
        else:
            param = params.get(name)
            if param is None:
                raise ValueError(f"checkpoint tensor {name!r} has no matching parameter "
                                 f"in {type(self).__name__}")
            tensor = read_full(source)
            if tuple(param.shape) != tuple(tensor.shape):
                raise ValueError(f"has shape {tuple(tensor.shape)}, expected "
                                 f"{tuple(param.shape)} (config and weights disagree)")
            param.data.copy_(tensor)
            loaded.add(name)

    def expected_weight_keys(self) -> set[str]:
        """The keys ``load_weights`` returns when every parameter of this rank was filled."""
        keys: set[str] = set()
        for pname, _ in self.named_parameters():
            owner, _, leaf = pname.rpartition(".")
            fused = [ck for ck, (fp, _) in _FUSED.items() if owner.endswith(fp)]
            if fused:
                prefix = owner.rpartition(".")[0]
                keys.update(f"{pname}[{prefix}.{ck}.{leaf}]" for ck in fused)
            else:
                keys.add(pname)
        return keys

    def _owned(self, name: str) -> bool:
        """False for a tensor of a module on another pipeline stage (a decoder layer, or the
        final norm)."""
        if name.startswith("model.norm."):
            return self.model.norm is not None
        if not name.startswith("model.layers."):
            return True
        index = int(name.split(".")[2])
        return self.model.start_layer <= index < self.model.end_layer

    def _module(self, path: str, name: str) -> nn.Module:
        try:
            return self.get_submodule(path)
        except AttributeError:
            raise ValueError(f"checkpoint tensor {name!r} has no matching parameter in "
                             f"{type(self).__name__}") from None
