"""Structured outputs with the real default model through ``LLM.generate``.

- 50 generated JSON schemas (nested objects, arrays, enums, required fields, bounded integers
  and numbers), answered in one batch: every answer parses and validates with ``jsonschema``.
- Regex and choice constraints under random sampling (n > 1, seeds): every answer matches.
- The same under async scheduling with chunked prefill (a 32-token budget splits the prompts),
  where each step's bitmask needs the tokens of the step in flight (the two-phase step).
The two long ones are marked ``slow`` (CI runs them); the fast check of the two-phase step on
a tiny model is ``tests/engine/test_two_phase_grammar.py``.
"""

from __future__ import annotations

import json
import random
import re

import jsonschema
import pytest

from vllm_core.sampling.params import SamplingParams
from vllm_core.structured_output import StructuredOutputsParams

WORDS = ["alpha", "beta", "gamma", "delta", "red", "green", "blue", "north", "south", "cat"]


def gen_schema(rng: random.Random, depth: int = 0) -> dict:
    """A random object schema whose every instance is short (bounded strings and arrays)."""
    props: dict[str, dict] = {}
    for i in range(rng.randint(2, 4)):
        name = f"{rng.choice(WORDS)}_{i}"
        kind = rng.choice(["int", "num", "str", "enum", "bool", "array"]
                          + (["object"] if depth == 0 else []))
        if kind == "int":
            lo = rng.randint(-50, 50)
            props[name] = {"type": "integer", "minimum": lo, "maximum": lo + rng.randint(1, 500)}
        elif kind == "num":
            props[name] = {"type": "number", "minimum": 0, "maximum": rng.choice([1, 10, 100])}
        elif kind == "str":
            props[name] = {"type": "string", "minLength": 1, "maxLength": rng.randint(3, 10)}
        elif kind == "enum":
            props[name] = {"enum": rng.sample(WORDS, rng.randint(2, 4))}
        elif kind == "bool":
            props[name] = {"type": "boolean"}
        elif kind == "array":
            item = rng.choice([{"type": "integer", "minimum": 0, "maximum": 99},
                               {"enum": rng.sample(WORDS, 3)},
                               {"type": "string", "maxLength": 5}])
            props[name] = {"type": "array", "items": item, "minItems": 1,
                           "maxItems": rng.randint(1, 3)}
        else:
            props[name] = gen_schema(rng, depth + 1)
    required = sorted(props) if depth or rng.random() < 0.7 else sorted(props)[:-1]
    return {"type": "object", "properties": props, "required": required,
            "additionalProperties": False}


SCHEMAS = [gen_schema(random.Random(seed)) for seed in range(50)]


def chat_prompt(llm, text: str) -> str:
    return llm.get_tokenizer().apply_chat_template(
        [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)


def test_generated_schemas_cover_the_features():
    text = json.dumps(SCHEMAS)
    for feature in ('"enum"', '"minimum"', '"maxItems"', '"boolean"', '"number"'):
        assert feature in text
    assert any(any(p.get("type") == "object" for p in s["properties"].values()) for s in SCHEMAS)
    assert any(len(s["required"]) < len(s["properties"]) for s in SCHEMAS)


@pytest.mark.slow          # 50 answers of up to 256 tokens from the real model (minutes on 2 CPUs)
def test_fifty_json_schemas_all_valid(llm_fp32):
    prompts = [chat_prompt(llm_fp32, f"Fill in this JSON object about item {i}.")
               for i in range(len(SCHEMAS))]
    params = [SamplingParams(temperature=0, max_tokens=256,
                             structured_outputs=StructuredOutputsParams(
                                 json=schema, disable_any_whitespace=True))
              for schema in SCHEMAS]
    outputs = llm_fp32.generate(prompts, params, use_tqdm=False)
    assert len(outputs) == len(SCHEMAS)
    for schema, out in zip(SCHEMAS, outputs):
        completion = out.outputs[0]
        assert completion.finish_reason == "stop", completion.text
        jsonschema.validate(json.loads(completion.text), schema)


REGEX = r"[A-Z][a-z]{2,6}-[0-9]{2,4}"
CHOICES = ["Paris", "London", "Rome", "Madrid"]


def check_regex_and_choice(llm, n: int) -> None:
    prompts = [chat_prompt(llm, "Give a product code."), chat_prompt(llm, "Pick a city.")]
    params = [SamplingParams(temperature=1.0, seed=7, n=n, max_tokens=24,
                             structured_outputs=StructuredOutputsParams(regex=REGEX)),
              SamplingParams(temperature=1.0, seed=8, n=n, max_tokens=24,
                             structured_outputs=StructuredOutputsParams(choice=CHOICES))]
    codes, cities = llm.generate(prompts, params, use_tqdm=False)
    assert len(codes.outputs) == n and len(cities.outputs) == n
    for c in codes.outputs:
        assert re.fullmatch(REGEX, c.text) and c.finish_reason == "stop", c.text
    for c in cities.outputs:
        assert c.text in CHOICES and c.finish_reason == "stop", c.text


def test_regex_and_choice_always_match(llm_fp32):
    check_regex_and_choice(llm_fp32, n=4)


def test_invalid_schema_is_refused_before_queueing(llm_fp32):
    bad = SamplingParams(structured_outputs=StructuredOutputsParams(
        json={"type": "object", "properties": {"a": {"type": 3}}}))
    with pytest.raises(ValueError, match="not a valid JSON schema"):
        llm_fp32.generate(["x"], bad, use_tqdm=False)
    assert not llm_fp32.llm_engine.has_unfinished_requests()


@pytest.fixture(scope="module")
def llm_async_chunked():
    from vllm_core import LLM

    llm = LLM(dtype="float32", max_model_len=1024, kv_cache_space_gib=0.25,
              async_scheduling=True, max_num_batched_tokens=32)
    assert llm.llm_engine.async_scheduling
    return llm


@pytest.mark.slow          # a 32-token budget: many small steps with the real model
def test_async_scheduling_with_chunked_prefill(llm_async_chunked):
    llm = llm_async_chunked
    check_regex_and_choice(llm, n=2)
    schemas = SCHEMAS[:3]
    prompts = [chat_prompt(llm, f"Fill in this JSON object about item {i}; answer with the "
                                "JSON only, nothing else, and keep it short.")
               for i in range(len(schemas))]
    assert all(len(llm.get_tokenizer().encode(p)) > 32 for p in prompts)   # chunked
    params = [SamplingParams(temperature=0, max_tokens=256,
                             structured_outputs=StructuredOutputsParams(
                                 json=s, disable_any_whitespace=True)) for s in schemas]
    for schema, out in zip(schemas, llm.generate(prompts, params, use_tqdm=False)):
        assert out.outputs[0].finish_reason == "stop"
        jsonschema.validate(json.loads(out.outputs[0].text), schema)
