"""Fixtures for the structured-output tests: the default model's real tokenizer."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tokenizer():
    from vllm_core.model_executor.loader import get_tokenizer, resolve_model

    return get_tokenizer(resolve_model(None), None)


@pytest.fixture(scope="session")
def vocab_size() -> int:
    from vllm_core.model_executor.loader import load_arch_config, resolve_model

    return load_arch_config(resolve_model(None), "auto").vocab_size


@pytest.fixture(scope="session")
def eos_ids(tokenizer) -> list[int]:
    return [tokenizer.eos_token_id]
