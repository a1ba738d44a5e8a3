"""Embeddings from a decoder model: its final hidden states (after the last norm), pooled.

``pool(hidden, method, normalize)`` reduces one prompt's ``[num_tokens, hidden_size]`` states:
``"last"`` takes the last token's state (the usual choice for decoder embedding models),
``"mean"`` averages all tokens; ``normalize`` scales the result to unit L2 norm. Computed in
float32.

``Embedder`` runs the engine's already-loaded model over token-id prompts in one batched
forward pass each call, with no sampling and a scratch KV cache of just the blocks the prompts
need (the engine's own cache is not touched, so nothing it holds is disturbed). It must run on
the thread that runs the engine's steps (``LLM`` offline; ``AsyncLLMEngine`` queues it between
steps). This is the interim path until the runner returns pooled states itself (design.md s.9).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import numpy as np
import torch

PoolingMethod = Literal["last", "mean"]
POOLING_METHODS = ("last", "mean")


def pool(hidden: torch.Tensor, method: PoolingMethod = "last",
         normalize: bool = True) -> torch.Tensor:
    """One prompt's states ``[num_tokens, hidden]`` -> ``[hidden]`` (float32)."""
    if method not in POOLING_METHODS:
        raise ValueError(f"pooling must be one of {', '.join(POOLING_METHODS)}, got {method!r}")
    states = hidden.float()
    vector = states[-1] if method == "last" else states.mean(dim=0)
    if normalize:
        vector = torch.nn.functional.normalize(vector, p=2.0, dim=0)
    return vector


class Embedder:
    """Hidden states and pooled embeddings from a loaded ``ModelRunner``'s model."""

    def __init__(self, runner: Any, max_model_len: int) -> None:
        self.runner = runner
        self.max_model_len = max_model_len

    @torch.inference_mode()
    def hidden_states(self, prompts: list[list[int]]) -> list[torch.Tensor]:
        """Final hidden states per prompt (``[len(prompt), hidden_size]``, model dtype)."""
        from vllm_core.model_executor.batch_utils import make_batch_layout

        if not prompts or any(not p for p in prompts):
            raise ValueError("input must hold at least one token per prompt")
        for p in prompts:
            if len(p) > self.max_model_len:
                raise ValueError(f"input is {len(p)} tokens, more than max_model_len="
                                 f"{self.max_model_len}")
        runner = self.runner
        arch = runner.arch
        lens = [len(p) for p in prompts]
        layout = make_batch_layout([0] * len(prompts), lens, runner.block_size,
                                   device=runner.device)
        shape = runner.attn_backend.get_kv_cache_shape(
            layout.num_blocks, runner.block_size, arch.num_key_value_heads, arch.head_dim)
        scratch = [torch.zeros(shape, dtype=runner.kv_cache_dtype, device=runner.device)
                   for _ in range(arch.num_hidden_layers)]
        # the runner's convention: every index tensor int64 (kernels check it)
        common = dataclasses.replace(layout.metadata, **{
            f.name: getattr(layout.metadata, f.name).long()
            for f in dataclasses.fields(layout.metadata)
            if isinstance(getattr(layout.metadata, f.name), torch.Tensor)})
        metadata = runner.builder.build(common)
        ids = torch.tensor([t for p in prompts for t in p], dtype=torch.long,
                           device=runner.device)
        if getattr(runner, "lora", None) is not None:     # the base model: no adapter
            runner.lora.prepare_step(np.zeros(len(ids), dtype=np.int64))
        hidden = runner.model(ids, layout.positions.to(runner.device), scratch, metadata)
        return list(hidden.split(lens))

    def embed(self, prompts: list[list[int]], method: PoolingMethod = "last",
              normalize: bool = True) -> list[list[float]]:
        return [pool(h, method, normalize).cpu().tolist() for h in self.hidden_states(prompts)]
