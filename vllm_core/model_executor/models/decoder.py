"""The shared pre-norm decoder of the Llama family (Llama, Mistral, Qwen2, Qwen3).

Differences between the families are fields of ``ModelArchConfig``, not subclasses:
``attention_bias`` (Qwen2: biases on q/k/v), ``qk_norm`` (Qwen3: per-head RMSNorm on q and k
before rope), explicit ``head_dim`` (Qwen3, may differ from hidden / heads), GQA
(``num_key_value_heads``), ``tie_word_embeddings``, ``rope_scaling`` and ``sliding_window``.

Parameter names follow HF checkpoints, except that q/k/v are fused into ``qkv_proj`` (rows
[q | k | v]) and gate/up into ``gate_up_proj`` (rows [gate | up]); ``load_weights`` fuses the
separate checkpoint tensors at load time. With tied embeddings there is no ``lm_head``: the
logits use ``embed_tokens.weight``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from vllm_core.attention.backend import AttentionBackend
from vllm_core.config import ModelArchConfig
from vllm_core.model_executor.layers.attention import Attention
from vllm_core.model_executor.layers.layernorm import RMSNorm
from vllm_core.model_executor.layers.linear import Embedding, Linear
from vllm_core.model_executor.layers.ops import LayerOps
from vllm_core.model_executor.layers.rotary_embedding import RotaryEmbedding
from vllm_core.model_executor.models.interface import CausalLM

# checkpoint projection -> (fused parameter, shard)
_FUSED = {"q_proj": ("qkv_proj", "q"), "k_proj": ("qkv_proj", "k"), "v_proj": ("qkv_proj", "v"),
          "gate_proj": ("gate_up_proj", "gate"), "up_proj": ("gate_up_proj", "up")}
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


class DecoderAttention(nn.Module):
    def __init__(self, arch: ModelArchConfig, rotary: RotaryEmbedding,
                 attn_backend: type[AttentionBackend], ops: LayerOps) -> None:
        super().__init__()
        self.num_heads = arch.num_attention_heads
        self.num_kv_heads = arch.num_key_value_heads
        self.head_dim = arch.head_dim
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.qkv_proj = Linear(arch.hidden_size, self.q_size + 2 * self.kv_size,
                               bias=arch.attention_bias, ops=ops)
        # HF: Llama/Qwen3 put the attention_bias on o_proj too, Qwen2 only on q/k/v
        o_bias = arch.attention_bias and arch.model_type != "qwen2"
        self.o_proj = Linear(self.q_size, arch.hidden_size, bias=o_bias, ops=ops)
        self.q_norm = RMSNorm(self.head_dim, arch.rms_norm_eps, ops) if arch.qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, arch.rms_norm_eps, ops) if arch.qk_norm else None
        self.rotary_emb = rotary
        self.attn = Attention(self.num_heads, self.head_dim, self.head_dim ** -0.5,
                              self.num_kv_heads, attn_backend, arch.sliding_window)

    def shard_slice(self, shard: str) -> slice:
        """Rows of ``qkv_proj`` holding the q, k or v projection."""
        start = {"q": 0, "k": self.q_size, "v": self.q_size + self.kv_size}[shard]
        return slice(start, start + (self.q_size if shard == "q" else self.kv_size))

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
    def __init__(self, hidden_size: int, intermediate_size: int, ops: LayerOps) -> None:
        super().__init__()
        self.intermediate_size = intermediate_size
        self.gate_up_proj = Linear(hidden_size, 2 * intermediate_size, bias=False, ops=ops)
        self.down_proj = Linear(intermediate_size, hidden_size, bias=False, ops=ops)
        self.ops = ops

    def shard_slice(self, shard: str) -> slice:
        start = 0 if shard == "gate" else self.intermediate_size
        return slice(start, start + self.intermediate_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        down = self.down_proj
        return self.ops.silu_and_mul_linear(self.gate_up_proj(x), down.weight, down.bias)


class DecoderLayer(nn.Module):
    def __init__(self, arch: ModelArchConfig, rotary: RotaryEmbedding,
                 attn_backend: type[AttentionBackend], ops: LayerOps) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(arch.hidden_size, arch.rms_norm_eps, ops)
        self.self_attn = DecoderAttention(arch, rotary, attn_backend, ops)
        self.post_attention_layernorm = RMSNorm(arch.hidden_size, arch.rms_norm_eps, ops)
        self.mlp = GatedMLP(arch.hidden_size, arch.intermediate_size, ops)

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
                 ops: LayerOps) -> None:
        super().__init__()
        self.embed_tokens = Embedding(arch.vocab_size, arch.hidden_size)
        self.rotary_emb = RotaryEmbedding(arch.head_dim, arch.head_dim,
                                          arch.max_position_embeddings, arch.rope_theta,
                                          arch.rope_scaling, ops)
        self.layers = nn.ModuleList(DecoderLayer(arch, self.rotary_emb, attn_backend, ops)
                                    for _ in range(arch.num_hidden_layers))
        self.norm = RMSNorm(arch.hidden_size, arch.rms_norm_eps, ops)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                kv_caches: list[torch.Tensor], attn_metadata: Any) -> torch.Tensor:
        if len(kv_caches) != len(self.layers):
            raise ValueError(f"expected {len(self.layers)} kv_caches (one per layer), "
                             f"got {len(kv_caches)}")
        hidden = self.embed_tokens(input_ids)
        residual = None
        for layer, kv_cache in zip(self.layers, kv_caches, strict=True):
            hidden, residual = layer(positions, hidden, residual, kv_cache, attn_metadata)
        hidden, _ = self.norm(hidden, residual)
        return hidden


class DecoderForCausalLM(CausalLM):
    """The Llama-family causal LM; see the module docstring for the family switches."""

    def __init__(self, arch: ModelArchConfig, attn_backend: type[AttentionBackend],
                 ops: LayerOps) -> None:
        super().__init__(arch, attn_backend, ops)
        self.arch = arch
        self.ops = ops
        self.model = DecoderModel(arch, attn_backend, ops)
        self.lm_head = (None if arch.tie_word_embeddings
                        else Linear(arch.hidden_size, arch.vocab_size, bias=False, ops=ops))

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                kv_caches: list[torch.Tensor], attn_metadata: Any) -> torch.Tensor:
        return self.model(input_ids, positions, kv_caches, attn_metadata)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        weight = (self.model.embed_tokens.weight if self.lm_head is None
                  else self.lm_head.weight)
        return self.ops.linear(hidden_states, weight).float()

    @torch.no_grad()
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        for name, tensor in weights:
            if name.endswith(_IGNORED_SUFFIXES):
                continue
            if name == "lm_head.weight" and self.lm_head is None:
                continue      # tied checkpoints may still carry a copy of the embedding
            target, rows = self._locate(name)
            param = params.get(target)
            if param is None:
                raise ValueError(f"checkpoint tensor {name!r} has no matching parameter in "
                                 f"{type(self).__name__}")
            dest = param.data if rows is None else param.data[rows]
            if tuple(dest.shape) != tuple(tensor.shape):
                raise ValueError(f"checkpoint tensor {name!r} has shape {tuple(tensor.shape)}, "
                                 f"expected {tuple(dest.shape)} (config and weights disagree)")
            dest.copy_(tensor)
            loaded.add(target if rows is None else f"{target}[{name}]")
        return loaded

    def expected_weight_keys(self) -> set[str]:
        """The keys ``load_weights`` returns when every parameter was filled."""
        keys: set[str] = set()
        for pname, _ in self.named_parameters():
            owner, _, leaf = pname.rpartition(".")
            fused = [ck for ck, (fp, _) in _FUSED.items() if owner.endswith(fp)]
            if fused and leaf in ("weight", "bias"):
                prefix = owner.rpartition(".")[0]
                keys.update(f"{pname}[{prefix}.{ck}.{leaf}]" for ck in fused)
            else:
                keys.add(pname)
        return keys

    def _locate(self, name: str) -> tuple[str, slice | None]:
        """Checkpoint name -> (parameter name, rows of it) applying the q/k/v and gate/up
        fusion."""
        owner, _, leaf = name.rpartition(".")
        prefix, _, proj = owner.rpartition(".")
        if proj not in _FUSED:
            return name, None
        fused, shard = _FUSED[proj]
        try:
            module = self.get_submodule(prefix)
        except AttributeError:
            return name, None
        if not hasattr(module, "shard_slice"):
            return name, None
        return f"{prefix}.{fused}.{leaf}", module.shard_slice(shard)
