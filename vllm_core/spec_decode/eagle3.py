"""EAGLE-3 heads (``{"method": "eagle3", "model": PATH}``): the published checkpoint layout and
the head module; the proposer is ``EagleProposer`` (``spec_decode/eagle.py``).

Layout (as published for Llama targets, e.g. ``yuhuili/EAGLE3-LLaMA3.1-Instruct-8B``):
``config.json`` is a one-layer Llama config (``architectures`` names an EAGLE-3 class such as
``LlamaForCausalLMEagle3``) with ``vocab_size`` the target's vocabulary, ``draft_vocab_size``
(default: ``vocab_size``) and optionally ``target_hidden_size`` (default: ``hidden_size``),
``eagle_aux_hidden_state_layer_ids`` (top level or inside ``eagle_config``; default
``(2, L // 2, L - 3)`` for a target of ``L`` layers) and ``norm_before_residual``. Tensors
(names may carry a ``model.`` prefix; ``layers.0.`` may stand for ``midlayer.``):

- ``fc.weight`` [H, 3 * H_target]: fuses the target's residual stream entering the three
  auxiliary layers (HF's ``output_hidden_states[i]``), concatenated in the listed order;
- ``midlayer.{input_layernorm, hidden_norm, post_attention_layernorm}.weight`` [H];
- ``midlayer.self_attn.{q,k,v}_proj.weight`` [*, 2H] (they read [embedding, hidden]),
  ``o_proj``; ``midlayer.mlp.{gate,up,down}_proj.weight``;
- ``norm.weight`` [H]; ``lm_head.weight`` [draft_vocab_size, H];
- ``d2t`` [draft_vocab_size] int: draft id ``d`` is target id ``d + d2t[d]`` (required when the
  draft vocabulary is smaller); ``t2d`` (its inverse, as a mask) is not needed;
- ``embed_tokens.weight`` [vocab, H] optional: absent, the target's embedding is shared.

The head at position ``j`` (see ``eagle.py`` for the positions) computes, with ``f`` the
fused target states ``fc(aux[j])`` on a catch-up row or the state its previous step fed
forward on a later step::

    r = f                      (norm_before_residual: r = hidden_norm(f))
    x = self_attn(concat(input_layernorm(embed(t[j+1])), hidden_norm(f)))
    x, r = post_attention_layernorm(x, r)        # fused residual add
    out, g = norm(mlp(x), r)                     # g = mlp(x) + r, the pre-norm state

``out`` is scored by its LM head (draft vocabulary, mapped to target ids; other ids -inf) and
``g`` is fed forward. The target exposes the auxiliary states without an extra forward: the
head installs an ``AuxHiddenCapture`` on the target's decoder (``models/aux_hidden.py``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from vllm_core.config import ModelArchConfig
from vllm_core.distributed.parallel_context import single_rank_context
from vllm_core.logger import init_logger
from vllm_core.model_executor.models.aux_hidden import AuxHiddenCapture
from vllm_core.spec_decode.eagle import EagleHeadBase, eagle_name

if TYPE_CHECKING:  # pragma: no cover
    from vllm_core.worker.model_runner import ModelRunner

logger = init_logger(__name__)

# checkpoint name -> (module path in Eagle3Head, fused shard or None)
_FUSED = {"q_proj": ("self_attn.qkv_proj", "q"), "k_proj": ("self_attn.qkv_proj", "k"),
          "v_proj": ("self_attn.qkv_proj", "v"), "gate_proj": ("mlp.gate_up_proj", "gate"),
          "up_proj": ("mlp.gate_up_proj", "up")}
_ROW = {"o_proj": "self_attn.o_proj", "down_proj": "mlp.down_proj"}
_REQUIRED = ("fc.weight", "norm.weight", "lm_head.weight",
             *(f"midlayer.{n}.weight" for n in ("input_layernorm", "hidden_norm",
                                                "post_attention_layernorm")),
             *(f"midlayer.self_attn.{p}_proj.weight" for p in "qkvo"),
             *(f"midlayer.mlp.{p}_proj.weight" for p in ("gate", "up", "down")))


@dataclass(frozen=True, slots=True)
class Eagle3Layout:
    """What an EAGLE-3 head's ``config.json`` says, checked against its target.

    ``arch``: the head's one layer (``vocab_size`` the target's). ``aux_layer_ids``: the
    target layers whose input streams ``fc`` fuses, in its input order."""

    arch: ModelArchConfig
    draft_vocab_size: int
    target_hidden_size: int
    aux_layer_ids: tuple[int, ...]
    norm_before_residual: bool


def default_aux_layer_ids(num_layers: int) -> tuple[int, int, int]:
    """The layers EAGLE-3 heads are trained on when their config names none."""
    return (2, num_layers // 2, num_layers - 3)


def read_eagle3_layout(path: str, target: ModelArchConfig) -> Eagle3Layout:
    """The layout of the head at ``path``; ValueError naming what does not fit ``target``."""
    from vllm_core.model_executor.loader import load_arch_config

    arch = load_arch_config(path)
    cfg = arch.hf_config
    archs = cfg.get("architectures") or []
    if not any("eagle3" in str(a).lower() for a in archs):
        raise ValueError(f"{path} is not an EAGLE-3 head: its config.json names architectures "
                         f"{archs}, expected an EAGLE-3 class such as "
                         f"'LlamaForCausalLMEagle3'")
    if arch.num_hidden_layers != 1:
        raise ValueError(f"EAGLE-3 head {path} has {arch.num_hidden_layers} layers; only "
                         f"one-layer heads are supported")
    if arch.vocab_size != target.vocab_size:
        raise ValueError(f"EAGLE-3 head {path} has vocab_size {arch.vocab_size}, the target "
                         f"{target.vocab_size}: the head must be trained for this target")
    draft_vocab = int(cfg.get("draft_vocab_size") or arch.vocab_size)
    if not 1 <= draft_vocab <= arch.vocab_size:
        raise ValueError(f"EAGLE-3 head {path}: draft_vocab_size {draft_vocab} is not in "
                         f"1..{arch.vocab_size}")
    target_hidden = int(cfg.get("target_hidden_size") or arch.hidden_size)
    if target_hidden != target.hidden_size:
        raise ValueError(f"EAGLE-3 head {path} expects a target hidden size of "
                         f"{target_hidden}, the target has {target.hidden_size}")
    eagle_cfg = cfg.get("eagle_config") or {}
    if eagle_cfg.get("use_aux_hidden_state") is False:
        raise ValueError(f"EAGLE-3 head {path} sets use_aux_hidden_state=false; only heads "
                         f"that fuse auxiliary hidden states are supported")
    ids = (cfg.get("eagle_aux_hidden_state_layer_ids")
           or eagle_cfg.get("eagle_aux_hidden_state_layer_ids")
           or default_aux_layer_ids(target.num_hidden_layers))
    ids = tuple(int(i) for i in ids)
    bad = [i for i in ids if not 0 <= i < target.num_hidden_layers]
    if bad or not ids:
        raise ValueError(f"EAGLE-3 head {path}: auxiliary layers {list(ids)} are not layers "
                         f"of the {target.num_hidden_layers}-layer target (set "
                         f"eagle_aux_hidden_state_layer_ids in its config.json)")
    return Eagle3Layout(dataclasses.replace(arch, tie_word_embeddings=False), draft_vocab,
                        target_hidden, ids, bool(cfg.get("norm_before_residual", False)))


class Eagle3Head(EagleHeadBase):
    """The EAGLE-3 head (formula in the module docstring). ``embed``: the target's embedding
    module, or None to build one of its own (loaded from the checkpoint); ``capture``: the
    auxiliary-state collector installed on the target's decoder."""

    def __init__(self, layout: Eagle3Layout, attn_backend: Any, ops: Any,
                 embed: nn.Module | None, capture: AuxHiddenCapture, fc_bias: bool) -> None:
        from vllm_core.model_executor.layers.layernorm import RMSNorm
        from vllm_core.model_executor.layers.rotary_embedding import RotaryEmbedding
        from vllm_core.model_executor.layers.vocab_parallel import VocabParallelEmbedding
        from vllm_core.model_executor.models.decoder import (
            DecoderAttention,
            GatedMLP,
            rotary_dim_of,
        )

        super().__init__()
        arch, one = layout.arch, single_rank_context()
        hidden = arch.hidden_size
        self.layout = layout
        self.capture = capture
        self.ops = ops
        self.feature_size = len(layout.aux_layer_ids) * layout.target_hidden_size
        self.num_kv_heads = arch.num_key_value_heads
        self.head_dim = arch.head_dim
        self.fc = nn.Linear(self.feature_size, hidden, bias=fc_bias)
        self.embed_tokens = (embed if embed is not None
                             else VocabParallelEmbedding(arch.vocab_size, hidden, one.tp))
        self.rotary_emb = RotaryEmbedding(arch.head_dim, rotary_dim_of(arch),
                                          arch.max_position_embeddings, arch.rope_theta,
                                          arch.rope_scaling, ops)
        self.input_layernorm = RMSNorm(hidden, arch.rms_norm_eps, ops)
        self.hidden_norm = RMSNorm(hidden, arch.rms_norm_eps, ops)
        self.self_attn = DecoderAttention(arch, self.rotary_emb, attn_backend, ops, one,
                                          prefix="midlayer.self_attn", input_size=2 * hidden)
        self.post_attention_layernorm = RMSNorm(hidden, arch.rms_norm_eps, ops)
        self.mlp = GatedMLP(hidden, arch.intermediate_size, ops, one, "midlayer.mlp")
        self.norm = RMSNorm(hidden, arch.rms_norm_eps, ops)
        self.lm_head = nn.Parameter(torch.empty(layout.draft_vocab_size, hidden),
                                    requires_grad=False)
        self.register_buffer("draft_to_target", torch.arange(layout.draft_vocab_size))

    # ------------------------------------------------------------------ EagleHeadBase
    def target_features(self, hidden: Any) -> torch.Tensor | None:
        if not isinstance(hidden, torch.Tensor):
            self.capture.reset()
            return None
        return self.capture.take()

    def forward(self, input_ids: torch.Tensor, features: torch.Tensor,
                positions: torch.Tensor, kv_cache: torch.Tensor, attn_metadata: Any,
                from_target: bool) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = self.fc.weight.dtype
        f = self.fc(features.to(dtype)) if from_target else features.to(dtype)
        embeds = self.input_layernorm(self.embed_tokens(input_ids).to(dtype))
        normed = self.hidden_norm(f)
        residual = normed.clone() if self.layout.norm_before_residual else f.clone()
        x = self.self_attn(positions, torch.cat([embeds, normed], dim=-1), kv_cache,
                           attn_metadata)
        x, residual = self.post_attention_layernorm(x, residual)
        return self.norm(self.mlp(x), residual)

    def compute_logits(self, out: torch.Tensor) -> torch.Tensor:
        draft = self.ops.linear(out, self.lm_head).float()
        logits = draft.new_full((out.shape[0], self.layout.arch.vocab_size), float("-inf"))
        logits[:, self.draft_to_target] = draft
        return logits

    # ------------------------------------------------------------------ loading
    @torch.no_grad()
    def load_tensors(self, tensors: dict[str, torch.Tensor], path: str) -> None:
        """Fill every parameter from the checkpoint's tensors (names without ``model.``);
        ValueError naming a missing, unknown or misshapen tensor."""
        hidden = self.layout.arch.hidden_size
        need = set(_REQUIRED)
        if self.layout.draft_vocab_size < self.layout.arch.vocab_size:
            need.add("d2t")
        missing = sorted(need - set(tensors))
        if missing:
            raise ValueError(f"{path} is not an EAGLE-3 checkpoint: it lacks {missing}")
        for name, tensor in tensors.items():
            try:
                self._load_one(name, tensor, hidden)
            except ValueError as e:
                raise ValueError(f"EAGLE-3 head {path}: tensor {name!r} {e}") from e

    def _load_one(self, name: str, tensor: torch.Tensor, hidden: int) -> None:
        if name == "t2d":
            return
        if name == "d2t":
            if tuple(tensor.shape) != (self.layout.draft_vocab_size,):
                raise ValueError(f"has shape {tuple(tensor.shape)}, expected "
                                 f"({self.layout.draft_vocab_size},) (draft_vocab_size)")
            ids = torch.arange(tensor.shape[0]) + tensor.long()
            if int(ids.min()) < 0 or int(ids.max()) >= self.layout.arch.vocab_size:
                raise ValueError("maps draft ids outside the target's vocabulary")
            self.draft_to_target.copy_(ids)
            return
        if name == "embed_tokens.weight":
            self.embed_tokens.load(tensor)
            return
        if name.startswith("midlayer."):
            owner, _, leaf = name[len("midlayer."):].rpartition(".")
            proj = owner.rpartition(".")[2]
            if proj in ("q_proj", "k_proj", "v_proj") and tensor.shape[-1] != 2 * hidden:
                raise ValueError(f"reads {tensor.shape[-1]} features, expected 2 * "
                                 f"hidden_size = {2 * hidden} ([embedding, hidden]): not an "
                                 f"EAGLE-3 layer")
            if proj in _FUSED:
                module, shard = _FUSED[proj]
                self.get_submodule(module).load_shard(leaf, tensor, shard)
                return
            if proj in _ROW:
                self.get_submodule(_ROW[proj]).load(leaf, tensor)
                return
            name = name[len("midlayer."):]
        target = self.lm_head if name == "lm_head.weight" else dict(
            self.named_parameters()).get(name)
        if target is None:
            raise ValueError("has no matching parameter in an EAGLE-3 head")
        if tuple(target.shape) != tuple(tensor.shape):
            raise ValueError(f"has shape {tuple(tensor.shape)}, expected "
                             f"{tuple(target.shape)} (config and weights disagree)")
        target.copy_(tensor)


def checkpoint_name(name: str) -> str:
    """A head tensor's name in the layout's spelling (no ``model.``, ``midlayer.``)."""
    name = eagle_name(name)
    return "midlayer." + name[len("layers.0."):] if name.startswith("layers.0.") else name


def load_eagle3_head(runner: ModelRunner, path: str, dtype: torch.dtype) -> Eagle3Head:
    """The EAGLE-3 head at ``path`` for ``runner``'s target, its auxiliary-state capture
    installed on the target's decoder."""
    from vllm_core.model_executor.layers.ops import TorchLayerOps
    from vllm_core.model_executor.loader import default_dtype
    from vllm_core.model_executor.safetensors_loader import iter_safetensors_lazy
    from vllm_core.model_executor.weight_source import read_full

    decoder = getattr(runner.model, "model", None)
    if not hasattr(decoder, "aux_capture"):
        raise ValueError(f"EAGLE-3 heads need a target whose decoder exposes auxiliary "
                         f"hidden states (the Llama-family decoder); "
                         f"{type(runner.model).__name__} does not")
    layout = read_eagle3_layout(path, runner.arch)
    try:
        tensors = {checkpoint_name(n): read_full(t) for n, t in iter_safetensors_lazy(path)}
    except ValueError as e:
        if "pickle" not in str(e):
            raise
        raise ValueError(f"{e} For an EAGLE-3 head (transformers cannot load its class): "
                         f"safetensors.torch.save_file(torch.load('pytorch_model.bin', "
                         f"weights_only=True), 'model.safetensors') in its folder.") from e
    own_embed = "embed_tokens.weight" in tensors
    if not own_embed and layout.arch.hidden_size != runner.arch.hidden_size:
        raise ValueError(f"EAGLE-3 head {path} has hidden_size {layout.arch.hidden_size} and "
                         f"no embed_tokens of its own; the target's embedding has "
                         f"{runner.arch.hidden_size}")
    fc = tensors.get("fc.weight")
    feature_size = len(layout.aux_layer_ids) * layout.target_hidden_size
    if fc is not None and tuple(fc.shape) != (layout.arch.hidden_size, feature_size):
        raise ValueError(f"EAGLE-3 head {path}: fc.weight has shape {tuple(fc.shape)}, "
                         f"expected ({layout.arch.hidden_size}, {feature_size}) = (hidden, "
                         f"{len(layout.aux_layer_ids)} auxiliary layers x target hidden "
                         f"{layout.target_hidden_size})")
    capture = AuxHiddenCapture(layout.aux_layer_ids)
    with default_dtype(dtype), runner.device:
        head = Eagle3Head(layout, runner.attn_backend, runner.ops or TorchLayerOps(),
                          None if own_embed else decoder.embed_tokens, capture,
                          fc_bias="fc.bias" in tensors)
    head.load_tensors(tensors, path)
    head.requires_grad_(False).eval()
    decoder.aux_capture = capture
    logger.info("EAGLE-3 head: %s (%s, draft vocabulary %d, auxiliary layers %s)", path,
                dtype, layout.draft_vocab_size, list(layout.aux_layer_ids))
    return head

