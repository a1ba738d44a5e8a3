"""Qwen2.5-VL (``Qwen2_5_VLForConditionalGeneration``): the vision encoder of
``qwen2_5_vl_vision.py`` in front of our Qwen2 decoder with M-RoPE positions.

The multimodal model contract (read by ``vllm_core.multimodal`` and the model runner), on top of
``CausalLM``:

* ``supports_images = True`` and ``uses_mrope = True`` (class attributes);
* ``embed_input_ids(ids [T]) -> [T, H]``: the token embeddings;
* ``encode_images(pixel_values [N, C*T*P*P], grids [(t, h, w)]) -> list of [L_i, H]``: one
  encoder output per image, ``L_i = t*h*w / merge**2`` rows (= its placeholder tokens);
* ``forward(..., inputs_embeds=[T, H])``: when given, it replaces ``embed_tokens(input_ids)``;
  ``positions`` may be ``[3, T]`` (M-RoPE) or ``[T]`` (text: three equal positions).

Checkpoint names: the HF layout (``model.layers.*``, ``model.embed_tokens``, ``lm_head``,
``visual.*``) and transformers 5's nested one (``model.language_model.*``, ``model.visual.*``)
both load. The config's text fields may sit at the top level (transformers 4) or in
``text_config`` (5); ``hf_config.py`` flattens them, ``mrope_section`` comes from
``rope_scaling`` / ``rope_parameters``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

import torch
from torch import nn

from vllm_core.attention.backend import AttentionBackend
from vllm_core.config import ModelArchConfig
from vllm_core.distributed.parallel_context import ParallelContext
from vllm_core.model_executor.layers.mrope import MRotaryEmbedding
from vllm_core.model_executor.layers.ops import LayerOps
from vllm_core.model_executor.models.decoder import DecoderForCausalLM, DecoderModel
from vllm_core.model_executor.models.interface import IntermediateTensors
from vllm_core.model_executor.models.qwen2_5_vl_vision import (
    Qwen2_5_VisionTransformer,
    VisionConfig,
)
from vllm_core.model_executor.weight_source import WeightSource, read_full


def mrope_section_of(hf: dict[str, Any]) -> list[int]:
    """``mrope_section`` of a Qwen2-VL / Qwen2.5-VL config.json (either generation)."""
    for src in (hf.get("text_config") or {}, hf):
        for key in ("rope_parameters", "rope_scaling"):
            section = (src.get(key) or {}).get("mrope_section")
            if section:
                return [int(s) for s in section]
    raise ValueError("Qwen2.5-VL config has no mrope_section (rope_scaling / rope_parameters)")


class MRopeDecoderModel(DecoderModel):
    """The Qwen2 decoder whose layers rotate with M-RoPE and whose input may be embeddings."""

    def __init__(self, arch: ModelArchConfig, attn_backend: type[AttentionBackend],
                 ops: LayerOps, parallel: ParallelContext, quant: Any = None) -> None:
        super().__init__(arch, attn_backend, ops, parallel, None, quant)
        self.rotary_emb = MRotaryEmbedding(arch.head_dim, arch.rope_theta,
                                           mrope_section_of(arch.hf_config), ops)
        for layer in self.layers[self.start_layer:self.end_layer]:
            layer.self_attn.rotary_emb = self.rotary_emb

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                kv_caches: list[torch.Tensor], attn_metadata: Any,
                intermediate: IntermediateTensors | None = None,
                inputs_embeds: torch.Tensor | None = None
                ) -> torch.Tensor | IntermediateTensors:
        """The decoder's forward with the M-RoPE table of ``positions`` (``[3, T]`` or
        ``[T]``) prepared first."""
        return super().forward(input_ids, self.rotary_emb.prepare(positions), kv_caches,
                               attn_metadata, intermediate, inputs_embeds)


class Qwen2_5_VLForConditionalGeneration(DecoderForCausalLM):
    """Qwen2.5-VL: see the module docstring for the multimodal contract."""

    supports_images: ClassVar[bool] = True
    uses_mrope: ClassVar[bool] = True

    def __init__(self, arch: ModelArchConfig, attn_backend: type[AttentionBackend],
                 ops: LayerOps, parallel: ParallelContext | None = None,
                 quant_config: Any = None) -> None:
        super().__init__(arch, attn_backend, ops, parallel, quant_config)
        vision = arch.hf_config.get("vision_config")
        if not vision:
            raise ValueError("Qwen2.5-VL config has no vision_config")
        self.vision_config = VisionConfig.from_hf(vision)
        if self.vision_config.out_hidden_size != arch.hidden_size:
            raise ValueError(f"vision_config.out_hidden_size {self.vision_config.out_hidden_size}"
                             f" != hidden_size {arch.hidden_size}")
        self.visual = (Qwen2_5_VisionTransformer(self.vision_config)
                       if self.parallel.is_first_stage else None)

    def build_model(self, arch: ModelArchConfig, attn_backend: type[AttentionBackend],
                    ops: LayerOps, parallel: ParallelContext) -> nn.Module:
        return MRopeDecoderModel(arch, attn_backend, ops, parallel,
                                 getattr(self, "quant_config", None))

    # ------------------------------------------------------------------ multimodal contract
    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed_tokens(input_ids)

    def encode_images(self, pixel_values: torch.Tensor,
                      grids: list[tuple[int, int, int]]) -> list[torch.Tensor]:
        if self.visual is None:
            raise RuntimeError("encode_images on a pipeline stage without the vision tower")
        out = self.visual(pixel_values, grids)
        unit = self.vision_config.spatial_merge_size ** 2
        return list(out.split([t * h * w // unit for t, h, w in grids]))

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                kv_caches: list[torch.Tensor], attn_metadata: Any,
                intermediate: IntermediateTensors | None = None,
                inputs_embeds: torch.Tensor | None = None
                ) -> torch.Tensor | IntermediateTensors:
        return self.model(input_ids, positions, kv_caches, attn_metadata, intermediate,
                          inputs_embeds)

    # ------------------------------------------------------------------ loading
    @torch.no_grad()
    def load_weights(self, weights: Iterable[tuple[str, WeightSource]]) -> set[str]:
        loaded: set[str] = set()
        params = dict(self.named_parameters())

        def text_weights() -> Iterable[tuple[str, WeightSource]]:
            for name, source in weights:
                if name.startswith("model.visual."):
                    name = name[len("model."):]
                elif name.startswith("model.language_model."):
                    name = "model." + name[len("model.language_model."):]
                if name.startswith("visual."):
                    if self.visual is not None:
                        self._load_visual(name, source, params, loaded)
                    continue
                yield name, source

        loaded |= super().load_weights(text_weights())
        return loaded

    def _load_visual(self, name: str, source: WeightSource, params: dict[str, nn.Parameter],
                     loaded: set[str]) -> None:
        param = params.get(name)
        if param is None:
            raise ValueError(f"checkpoint tensor {name!r} has no matching parameter in "
                             f"{type(self).__name__}")
        tensor = read_full(source)
        if tuple(param.shape) != tuple(tensor.shape):
            raise ValueError(f"checkpoint tensor {name!r} has shape {tuple(tensor.shape)}, "
                             f"expected {tuple(param.shape)} (config and weights disagree)")
        param.data.copy_(tensor)
        loaded.add(name)
