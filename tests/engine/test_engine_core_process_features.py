"""Features that run inside the engine core also work with the core in its own process
(``LLM(engine_core_process=True)``): speculative decoding (n-gram drafts, greedy tokens equal
to the engine without speculation, the draft counters reach the front end's stat
loggers; the core's start-up phases, warm-up included, reach the front end) and structured
outputs under async scheduling (the two-phase step; the same answers
as the synchronous in-process engine, each matching its constraint)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "spec_decode"))

from test_spec_engine import NGRAM, generate, make_llm  # noqa: E402
from test_two_phase_grammar import answers  # noqa: E402

from vllm_core.model_executor.testing import random_hf_causal_lm, write_wordlevel_tokenizer  # noqa: E402,I001


@pytest.fixture(scope="module")
def spec_folder(tmp_path_factory) -> str:
    """The speculative-decoding tests' model (``tests/spec_decode/test_spec_engine.py``)."""
    path = str(tmp_path_factory.mktemp("spec_llama_core"))
    random_hf_causal_lm("llama", dict(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        tie_word_embeddings=False, bos_token_id=None, eos_token_id=None, pad_token_id=None),
        seed=0, weight_scale=0.3).save_pretrained(path)
    write_wordlevel_tokenizer(path, 256)
    return path


@pytest.fixture(scope="module")
def grammar_folder(tmp_path_factory) -> str:
    """The two-phase tests' model: the default model's tokenizer (grammars need text tokens)."""
    from vllm_core.model_executor.loader import get_tokenizer, resolve_model

    tokenizer = get_tokenizer(resolve_model(None), None)
    path = str(tmp_path_factory.mktemp("two_phase_core"))
    random_hf_causal_lm("llama", dict(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        tie_word_embeddings=True, bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=None), seed=0, weight_scale=0.08).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_core_process_speculative_decoding_greedy_identical(spec_folder):
    from vllm_core import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    base, _ = make_llm(spec_folder)
    expected = generate(base, params)
    base.shutdown()
    llm, counter = make_llm(spec_folder, NGRAM, engine_core_process=True, warmup=True)
    try:
        assert not llm.llm_engine.in_process
        assert "warm-up" in llm.llm_engine.startup_phases       # reported by the core
        assert generate(llm, params) == expected
    finally:
        llm.shutdown()
    # The prompts repeat a motif, so n-gram lookup proposed drafts (a random model rarely
    # accepts them); the counters crossed the process boundary in the step stats.
    assert counter.drafts > 0 and counter.draft_tokens > 0


def test_core_process_structured_outputs_match_in_process(grammar_folder):
    from vllm_core import LLM

    def make(engine_core_process: bool, async_scheduling: bool):
        return LLM(grammar_folder, dtype="float32", max_model_len=256,
                   num_gpu_blocks_override=96, max_num_seqs=8, max_num_batched_tokens=48,
                   seed=0, enforce_eager=True, async_scheduling=async_scheduling,
                   structured_outputs_config={"backend": "xgrammar"},
                   engine_core_process=engine_core_process)

    local = make(False, async_scheduling=False)
    reference = answers(local)                     # asserts each answer fits its constraint
    local.shutdown()
    remote = make(True, async_scheduling=True)
    try:
        assert not remote.llm_engine.in_process
        assert answers(remote) == reference
    finally:
        remote.shutdown()


if __name__ == "__main__":                          # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
