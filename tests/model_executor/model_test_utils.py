"""Helpers for model tests: tiny random HF models and one-step runs through our model."""

from __future__ import annotations

import torch

from vllm_core.attention.backends.reference import ReferenceAttentionBackend
from vllm_core.model_executor.batch_utils import make_batch_layout
from vllm_core.model_executor.testing import random_hf_causal_lm

BLOCK_SIZE = 4


def tiny_hf_model(model_type: str, seed: int = 0, **overrides):
    """A small random-weight HF causal LM in float32 (see ``random_hf_causal_lm``)."""
    base = dict(vocab_size=97, hidden_size=64, intermediate_size=88, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                rms_norm_eps=1e-6, tie_word_embeddings=False)
    return random_hf_causal_lm(model_type, {**base, **overrides}, seed, weight_scale=0.15)


def new_kv_caches(arch, num_blocks: int, dtype=torch.float32) -> list[torch.Tensor]:
    shape = ReferenceAttentionBackend.get_kv_cache_shape(
        num_blocks, BLOCK_SIZE, arch.num_key_value_heads, arch.head_dim)
    return [torch.zeros(shape, dtype=dtype) for _ in range(arch.num_hidden_layers)]


@torch.no_grad()
def run_step(model, kv_caches, new_tokens: list[list[int]], context_lens: list[int],
             block_ids: list[list[int]] | None = None) -> list[torch.Tensor]:
    """One forward of a batch (request r: ``context_lens[r]`` cached tokens, then
    ``new_tokens[r]``); returns per-request logits [len(new_tokens[r]), vocab]."""
    layout = make_batch_layout(context_lens, [len(t) for t in new_tokens], BLOCK_SIZE,
                               block_ids=block_ids)
    builder = ReferenceAttentionBackend.get_builder_cls()(BLOCK_SIZE, torch.device("cpu"))
    md = builder.build(layout.metadata)
    ids = torch.tensor([t for toks in new_tokens for t in toks])
    logits = model.compute_logits(model(ids, layout.positions, kv_caches, md))
    assert logits.dtype == torch.float32
    return list(logits.split([len(t) for t in new_tokens]))


@torch.no_grad()
def hf_logits(hf_model, tokens: list[int]) -> torch.Tensor:
    return hf_model(torch.tensor([tokens])).logits[0].float()
