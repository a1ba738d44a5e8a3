"""Helpers of the GPU tests: tiny random-weight HF models saved with a synthetic tokenizer.

Every supported architecture gets a model whose head size the Triton backend serves. The
tokenizer is a ``tokenizers`` WordLevel vocabulary ``t0 .. t{V-1}`` (id i = "t{i}"), so any
token id decodes and the engine needs no real tokenizer files.
"""

from __future__ import annotations

import os

import pytest
import torch

from vllm_core.model_executor.testing import random_hf_causal_lm, write_wordlevel_tokenizer

# ``pytestmark`` of the device tests: marked ``gpu`` and skipped, with the reason, where torch
# sees no CUDA device
GPU_ONLY = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(),
                       reason="needs an NVIDIA GPU visible to torch (run: nox -s tests-cuda on "
                              "the GPU machine)"),
]

CASES: dict[str, tuple[str, dict]] = {
    # GQA 4:2, head 64, llama3 rope scaling, untied
    "llama": ("llama", dict(hidden_size=256, num_attention_heads=4, num_key_value_heads=2,
                            rope_theta=500000.0,
                            rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                          "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                          "original_max_position_embeddings": 64})),
    # head 80, sliding window shorter than the sequences, one KV head
    "mistral": ("mistral", dict(hidden_size=160, head_dim=80, num_attention_heads=2,
                                num_key_value_heads=1, sliding_window=24)),
    # q/k/v biases, tied embeddings, head 32
    "qwen2": ("qwen2", dict(hidden_size=192, num_attention_heads=6, num_key_value_heads=2,
                            tie_word_embeddings=True)),
    # explicit head_dim 64 != 192 / 6, q/k norms
    "qwen3": ("qwen3", dict(hidden_size=192, head_dim=64, num_attention_heads=6,
                            num_key_value_heads=2)),
}


def tiny_hf_model(model_type: str, seed: int = 0, **overrides) -> torch.nn.Module:
    """A random float32 HF causal LM on the CPU (see ``random_hf_causal_lm``)."""
    base = dict(vocab_size=512, hidden_size=128, intermediate_size=344, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                rms_norm_eps=1e-6, tie_word_embeddings=False, bos_token_id=None,
                eos_token_id=None, pad_token_id=None)
    return random_hf_causal_lm(model_type, {**base, **overrides}, seed, weight_scale=0.08)


def save_case(name: str, root: str) -> tuple[str, torch.nn.Module]:
    """Save case ``name`` (weights + tokenizer) under ``root``; returns (folder, hf model)."""
    model_type, overrides = CASES[name]
    model = tiny_hf_model(model_type, **overrides)
    folder = os.path.join(root, name)
    model.save_pretrained(folder)
    write_wordlevel_tokenizer(folder, model.config.vocab_size)
    return folder, model


@torch.no_grad()
def hf_greedy(model: torch.nn.Module, prompt: list[int], max_tokens: int,
              top: int = 5) -> tuple[list[int], list[list[int]]]:
    """Greedy continuation by full re-forwards (no cache) on the model's device: tokens and
    each step's top ids."""
    device = next(model.parameters()).device
    ids = list(prompt)
    out, tops = [], []
    for _ in range(max_tokens):
        logits = model(torch.tensor([ids], device=device)).logits[0, -1].float()
        best = logits.topk(top).indices.tolist()
        tok = int(logits.argmax())
        out.append(tok)
        tops.append(best)
        ids.append(tok)
    return out, tops


def random_prompts(lengths: list[int], vocab_size: int, seed: int = 0) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab_size, (n,), generator=gen).tolist() for n in lengths]
