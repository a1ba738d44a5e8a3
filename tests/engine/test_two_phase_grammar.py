"""The two-phase step under async scheduling (structured outputs): the runner runs step N+1's
forward, the engine collects step N and builds N+1's bitmask meanwhile, then the runner samples.

A tiny random Llama with the default model's real tokenizer (a grammar needs text tokens): the
answers of the two-phase engine equal the synchronous engine's and the old collect-first path's
(greedy), every constrained answer matches its constraint, and the two-phase path really ran.
Beam search applies a grammar too: every beam follows it (each step's request carries the
beam's tokens as the grammar's prefix).
"""

from __future__ import annotations

import json
import re

import jsonschema
import pytest

from vllm_core.model_executor.testing import random_hf_causal_lm

REGEX = r"[a-z]{3,8}-[0-9]{2}"
CHOICES = ["Paris", "London", "Rome"]
SCHEMA = {"type": "object",
          "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 99},
                         "b": {"enum": ["x", "y"]},
                         "c": {"type": "array", "items": {"type": "boolean"}, "maxItems": 2}},
          "required": ["a", "b", "c"], "additionalProperties": False}


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> str:
    from vllm_core.model_executor.loader import get_tokenizer, resolve_model

    tokenizer = get_tokenizer(resolve_model(None), None)
    path = str(tmp_path_factory.mktemp("two_phase"))
    model = random_hf_causal_lm("llama", dict(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        tie_word_embeddings=True, bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=None), seed=0, weight_scale=0.08)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def make_llm(folder: str, async_scheduling: bool, overlap: bool = True):
    from vllm_core import LLM

    return LLM(folder, dtype="float32", max_model_len=256, num_gpu_blocks_override=96,
               max_num_seqs=8, max_num_batched_tokens=48, seed=0, enforce_eager=True,
               async_scheduling=async_scheduling,
               structured_outputs_config={"backend": "xgrammar", "overlap_bitmask": overlap})


def answers(llm) -> list[tuple[str, str]]:
    from vllm_core import SamplingParams
    from vllm_core.structured_output import StructuredOutputsParams as SO

    prompts = [f"Question {i}: " + "tell me something " * (3 * i + 1) for i in range(5)]
    constraints = [SO(regex=REGEX), SO(choice=CHOICES),
                   SO(json=SCHEMA, disable_any_whitespace=True), None, SO(regex=REGEX)]
    params = [SamplingParams(temperature=0.0, max_tokens=40, structured_outputs=c,
                             ignore_eos=c is None) for c in constraints]
    outs = llm.generate(prompts, params, use_tqdm=False)
    result = [(o.outputs[0].text, o.outputs[0].finish_reason) for o in outs]
    for (text, reason), c in zip(result, constraints):
        if c is None:
            continue
        assert reason == "stop", (text, reason)
        if c.regex:
            assert re.fullmatch(REGEX, text), text
        elif c.choice:
            assert text in CHOICES
        else:
            jsonschema.validate(json.loads(text), SCHEMA)
    return result


def test_two_phase_matches_sync_and_collect_first(folder):
    reference = answers(make_llm(folder, async_scheduling=False))

    llm = make_llm(folder, async_scheduling=True)
    engine = llm.llm_engine
    assert engine.async_scheduling and engine.executor.supports_deferred_sampling
    assert answers(llm) == reference
    assert engine.num_two_phase_steps > 0          # bitmasks were built during a forward
    assert not engine.has_unfinished_requests()
    assert engine.executor.worker.runner._forwarded is None

    old = make_llm(folder, async_scheduling=True, overlap=False)
    assert answers(old) == reference
    assert old.llm_engine.num_two_phase_steps == 0


def test_beam_search_follows_the_grammar(folder):
    from vllm_core.sampling.beam_search import BeamSearchParams

    llm = make_llm(folder, async_scheduling=False)
    prompts = ["Pick a city:", "Another one, please:"]
    free = llm.beam_search(prompts, BeamSearchParams(beam_width=3, max_tokens=6))
    assert any(s.text not in CHOICES for out in free for s in out.sequences)
    for kind, ok in ((dict(choice=CHOICES), lambda t: t in CHOICES),
                     (dict(regex=REGEX), lambda t: re.fullmatch(REGEX, t))):
        outs = llm.beam_search(prompts, BeamSearchParams(beam_width=3, max_tokens=16,
                                                         structured_outputs=kind))
        for out in outs:
            assert len(out.sequences) == 3
            for seq in out.sequences:
                assert seq.finish_reason == "stop" and ok(seq.text), seq.text
    with pytest.raises(ValueError, match="not a valid JSON schema"):
        llm.beam_search(prompts, BeamSearchParams(
            beam_width=2, max_tokens=4, structured_outputs={"json": {"type": 3}}))
