"""``LLM.encode`` / ``LLM.embed`` against HuggingFace transformers' hidden states of the same
GGUF: the last hidden state (after the final norm) per token, then last-token and mean pooling
with and without normalisation."""

from __future__ import annotations

import pytest
import torch

from vllm_core.pooling import pool

TEXTS = ["The capital of France is", "def fibonacci(n):\n    return"]


@pytest.fixture(scope="module")
def hf_states(hf_model_fp32, llm_fp32):
    tok = llm_fp32.get_tokenizer()
    out = []
    for text in TEXTS:
        ids = tok(text).input_ids
        with torch.no_grad():
            res = hf_model_fp32(torch.tensor([ids]), output_hidden_states=True)
        out.append(res.hidden_states[-1][0])
    return out


def test_encode_matches_hf_hidden_states(llm_fp32, hf_states):
    ours = llm_fp32.encode(TEXTS)
    for mine, ref in zip(ours, hf_states):
        assert mine.shape == ref.shape
        torch.testing.assert_close(mine.float(), ref, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("method", ["last", "mean"])
@pytest.mark.parametrize("normalize", [True, False])
def test_embed_pools_like_hf(llm_fp32, hf_states, method, normalize):
    ours = llm_fp32.embed(TEXTS, pooling=method, normalize=normalize)
    for mine, ref in zip(ours, hf_states):
        expected = ref[-1] if method == "last" else ref.mean(dim=0)
        if normalize:
            expected = expected / expected.norm()
            assert abs(torch.tensor(mine).norm().item() - 1.0) < 1e-5
        torch.testing.assert_close(torch.tensor(mine), expected, atol=2e-4, rtol=1e-4)


def test_pool_rejects_unknown_method():
    with pytest.raises(ValueError, match="pooling must be one of"):
        pool(torch.zeros(2, 4), "cls")  # type: ignore[arg-type]


def test_embed_does_not_disturb_generation(llm_fp32):
    from vllm_core import SamplingParams

    params = SamplingParams(temperature=0, max_tokens=8)
    before = llm_fp32.generate(TEXTS[0], params, use_tqdm=False)[0].outputs[0].token_ids
    llm_fp32.embed(TEXTS)
    after = llm_fp32.generate(TEXTS[0], params, use_tqdm=False)[0].outputs[0].token_ids
    assert before == after
