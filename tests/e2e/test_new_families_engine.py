"""Gemma 3 and Phi-3 through the whole engine on the CPU plugin: greedy tokens equal HF
transformers' ``generate`` on the same random weights, and a prompt several times longer than
the sliding window gives the same tokens with chunked prefill on/off, prefix caching on/off,
and the reference backend instead of the CPU kernel (design section 7)."""

from __future__ import annotations

import pytest
import torch

from vllm_core.model_executor.testing import random_hf_causal_lm, write_wordlevel_tokenizer

VOCAB = 256
WINDOW = 8
BASE = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
            bos_token_id=None, eos_token_id=None, pad_token_id=None)
MODELS = {
    # head_dim 64 runs the CPU kernel; layers: sliding, global, sliding
    "gemma3": ("gemma3_text", dict(head_dim=64, sliding_window=WINDOW, sliding_window_pattern=2,
                                   query_pre_attn_scalar=64, final_logit_softcapping=30.0,
                                   tie_word_embeddings=True)),
    "phi3": ("phi3", dict(sliding_window=WINDOW, original_max_position_embeddings=128,
                          rope_scaling={"type": "longrope", "long_factor": [2.0] * 8,
                                        "short_factor": [1.0 + i / 4 for i in range(8)]})),
}


def save(name: str, tmp_path_factory) -> tuple[str, torch.nn.Module]:
    model_type, overrides = MODELS[name]
    hf = random_hf_causal_lm(model_type, {**BASE, **overrides}, seed=1, weight_scale=0.1)
    path = str(tmp_path_factory.mktemp(name))
    hf.save_pretrained(path)
    write_wordlevel_tokenizer(path, VOCAB)
    return path, hf


@pytest.fixture(scope="module", params=sorted(MODELS))
def model(request, tmp_path_factory):
    return save(request.param, tmp_path_factory)


@pytest.fixture(scope="module")
def gemma(tmp_path_factory) -> str:
    return save("gemma3", tmp_path_factory)[0]


def prompts() -> list[list[int]]:
    gen = torch.Generator().manual_seed(5)
    shared = torch.randint(1, VOCAB, (37,), generator=gen).tolist()
    # five prompts, three of them 4-6 windows long, two sharing a 37-token prefix
    return [shared + torch.randint(1, VOCAB, (n,), generator=gen).tolist() for n in (3, 9)] + [
        torch.randint(1, VOCAB, (n,), generator=gen).tolist() for n in (47, 5, 30)]


def run(path: str, **kwargs) -> list[list[int]]:
    from vllm_core import LLM, SamplingParams

    llm = LLM(path, dtype="float32", max_model_len=128, num_gpu_blocks_override=64,
              enforce_eager=True, **kwargs)
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    ps = [{"prompt_token_ids": p} for p in prompts()]
    outs = llm.generate(ps, params, use_tqdm=False)
    again = llm.generate(ps[:2], params, use_tqdm=False)   # cached prefixes, when on
    tokens = [list(o.outputs[0].token_ids) for o in outs]
    assert [list(o.outputs[0].token_ids) for o in again] == tokens[:2]
    return tokens


@pytest.fixture(scope="module")
def baseline(gemma) -> list[list[int]]:
    return run(gemma, enable_prefix_caching=False, enable_chunked_prefill=False)


def test_greedy_tokens_match_hf_generate(model):
    path, hf = model
    ours = run(path, enable_prefix_caching=False, enable_chunked_prefill=False)
    for prompt, tokens in zip(prompts(), ours, strict=True):
        out = hf.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False,
                          attention_mask=torch.ones(1, len(prompt), dtype=torch.long))
        assert out[0, len(prompt):].tolist() == tokens


def test_chunked_prefill_equivalent(gemma, baseline):
    # chunks of 16 tokens: 2 windows, so a chunk's keys straddle blocks the window has left
    assert run(gemma, enable_prefix_caching=False, max_num_batched_tokens=16) == baseline


def test_prefix_caching_equivalent(gemma, baseline):
    assert run(gemma, enable_prefix_caching=True, max_num_batched_tokens=32) == baseline


@pytest.mark.slow
def test_reference_backend_equivalent(gemma, baseline):
    assert run(gemma, attention_backend="reference", enable_prefix_caching=False,
               enable_chunked_prefill=False) == baseline
