"""The contract every causal-LM class in the model registry implements.

The loader builds a model as ``cls(arch, attn_backend, ops)`` inside ``with torch.device(device)``
with the target dtype as torch's default dtype (so plain factory calls land where they should),
then streams HF-named checkpoint tensors into ``load_weights`` (or fills every parameter with
dummy values). Parameters may therefore be created uninitialised (``torch.empty``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vllm_core.attention.backend import AttentionBackend
from vllm_core.config import ModelArchConfig
from vllm_core.model_executor.layers.ops import LayerOps


@dataclass(slots=True)
class IntermediateTensors:
    """What a non-last pipeline stage hands the next: the hidden states and the residual
    stream, both ``[T, hidden]`` in the model dtype."""

    hidden: torch.Tensor
    residual: torch.Tensor


class CausalLM(nn.Module, ABC):
    """A decoder-only LM over a flat token axis with a paged KV cache.

    ``forward(input_ids [T] long, positions [T] long, kv_caches (one tensor per layer, possibly
    empty while profiling), attn_metadata (the backend builder's output, shared by all layers))
    -> hidden_states [T, hidden]``; ``compute_logits(hidden [N, hidden]) -> [N, vocab] float32``.

    Parallel (API 2.1): ``parallel`` is the rank's ``ParallelContext`` (TP=PP=1 when absent).
    A pipeline stage other than the first takes ``intermediate`` (the previous stage's
    ``IntermediateTensors``) instead of embedding ``input_ids``; a stage other than the last
    returns ``IntermediateTensors``. ``kv_caches`` holds this stage's layers only.
    ``compute_logits`` returns None on TP ranks other than 0 (the logits are gathered there).

    Multimodal models (``supports_images = True``, e.g. ``models/qwen2_5_vl.py``) also take
    ``inputs_embeds`` [T, hidden] (replacing the embedding of ``input_ids``) and, with
    ``uses_mrope``, ``positions`` [3, T]; they implement ``embed_input_ids`` and
    ``encode_images``. The runner passes ``inputs_embeds`` only to such models.
    """

    @abstractmethod
    def __init__(self, arch: ModelArchConfig, attn_backend: type[AttentionBackend],
                 ops: LayerOps, parallel: Any = None) -> None:
        super().__init__()

    @abstractmethod
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                kv_caches: list[torch.Tensor], attn_metadata: Any,
                intermediate: IntermediateTensors | None = None
                ) -> torch.Tensor | IntermediateTensors:
        ...

    @abstractmethod
    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        ...

    def compute_local_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """This TP rank's logits, before any communication (what a device graph captures; a
        graph must not hold the gather). Default: ``compute_logits`` (one rank)."""
        return self.compute_logits(hidden_states)

    def gather_logits(self, local: torch.Tensor) -> torch.Tensor | None:
        """``compute_local_logits``' output gathered like ``compute_logits``' (None on TP ranks
        other than 0). Default: the identity."""
        return local

    @abstractmethod
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Copy HF-named tensors into the parameters (fusing split projections); return the
        names of the parameters that received data. Unknown names or wrong shapes raise
        ``ValueError``."""
