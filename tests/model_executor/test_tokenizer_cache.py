"""The GGUF tokenizer is converted once and reused from the cache, identically."""

from __future__ import annotations

import os

from vllm_core.model_executor.loader import get_tokenizer, resolve_model


def test_gguf_tokenizer_cached_roundtrip(tmp_path, monkeypatch):
    monkeypatch.setenv("VLLM_CACHE_ROOT", str(tmp_path))
    path = resolve_model(None)
    first = get_tokenizer(path)
    cached = [os.path.join(r, f) for r, _, fs in os.walk(tmp_path) for f in fs]
    assert any(f.endswith("tokenizer.json") for f in cached)
    second = get_tokenizer(path)
    text = "What is the capital of France? 日本語 🙂"
    assert second(text).input_ids == first(text).input_ids
    assert second.chat_template == first.chat_template and second.chat_template
    assert second.eos_token_id == first.eos_token_id
    msgs = [{"role": "user", "content": "hi"}]
    assert second.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == \
        first.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
