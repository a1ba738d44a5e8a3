"""The embedded default model end to end: HF parity, chat answer, engine feature equivalence."""

from __future__ import annotations

import pytest
import torch

from vllm_core import SamplingParams

MAX_TOKENS = 12


def hf_greedy(model, tokenizer, prompt: str, max_tokens: int) -> list[int]:
    ids = torch.tensor([tokenizer(prompt).input_ids])
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=max_tokens, do_sample=False,
                             attention_mask=torch.ones_like(ids), pad_token_id=0)
    return out[0, ids.shape[1]:].tolist()


def test_greedy_parity_fp32_mixed_batch(llm_fp32, hf_model_fp32, mixed_prompts):
    tok = llm_fp32.get_tokenizer()
    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
    outs = llm_fp32.generate(mixed_prompts, params, use_tqdm=False)
    for prompt, out in zip(mixed_prompts, outs):
        expected = hf_greedy(hf_model_fp32, tok, prompt, MAX_TOKENS)
        assert out.outputs[0].token_ids == expected, prompt


def test_capital_of_france_chat(llm_fp32):
    out = llm_fp32.chat([{"role": "user", "content": "What is the capital of France?"}],
                        SamplingParams(temperature=0.0, max_tokens=24), use_tqdm=False)
    assert "Paris" in out[0].outputs[0].text


def test_outputs_metrics_and_finish_reasons(llm_fp32):
    out = llm_fp32.generate("Hello", SamplingParams(temperature=0.0, max_tokens=5,
                                                     ignore_eos=True), use_tqdm=False)[0]
    c = out.outputs[0]
    assert c.finish_reason == "length" and len(c.token_ids) == 5
    assert c.text == llm_fp32.get_tokenizer().decode(c.token_ids, skip_special_tokens=True)
    m = out.metrics
    assert m.arrival_time <= m.first_token_time <= m.finished_time


@pytest.mark.parametrize("prompt,field", [
    ("", "prompt"),
])
def test_bad_prompts_raise_and_engine_keeps_serving(llm_fp32, prompt, field):
    with pytest.raises(ValueError, match=field):
        llm_fp32.generate([prompt, "fine"], SamplingParams(max_tokens=2), use_tqdm=False)
    assert not llm_fp32.llm_engine.has_unfinished_requests()
    out = llm_fp32.generate("still alive", SamplingParams(max_tokens=2), use_tqdm=False)
    assert len(out[0].outputs[0].token_ids) == 2


def test_too_long_prompt_and_bad_params(llm_fp32):
    with pytest.raises(ValueError, match="max_model_len"):
        llm_fp32.generate({"prompt_token_ids": [1] * 1024}, use_tqdm=False)
    with pytest.raises(ValueError, match="stop_token_ids"):
        llm_fp32.generate("x", SamplingParams(stop_token_ids=[10**9]), use_tqdm=False)
    for kwargs, field in [({"max_tokens": 0}, "max_tokens"), ({"temperature": -1}, "temperature"),
                          ({"top_p": 0.0}, "top_p"), ({"top_p": 1.5}, "top_p"), ({"n": 0}, "n")]:
        with pytest.raises(ValueError, match=field):
            SamplingParams(**kwargs)


def test_seeded_sampling_independent_of_batch(llm_fp32):
    seeded = SamplingParams(temperature=1.0, top_p=0.9, seed=1234, max_tokens=10, ignore_eos=True)
    alone = llm_fp32.generate("Once upon a time", seeded, use_tqdm=False)[0]
    others = SamplingParams(temperature=0.8, max_tokens=10, ignore_eos=True)
    mixed = llm_fp32.generate(["A long while ago in a kingdom", "Once upon a time", "Zebra"],
                              [others, seeded, others], use_tqdm=False)[1]
    assert alone.outputs[0].token_ids == mixed.outputs[0].token_ids


def test_n_children_logprobs_and_stop_strings(llm_fp32):
    out = llm_fp32.generate("The best fruit is", SamplingParams(
        n=3, temperature=1.0, seed=7, max_tokens=6, logprobs=2, ignore_eos=True),
        use_tqdm=False)[0]
    assert [c.index for c in out.outputs] == [0, 1, 2]
    for c in out.outputs:
        assert len(c.logprobs) == len(c.token_ids) == 6
        for tok, pos in zip(c.token_ids, c.logprobs):
            assert tok in pos and len(pos) >= 2
        assert c.cumulative_logprob == pytest.approx(
            sum(pos[t].logprob for t, pos in zip(c.token_ids, c.logprobs)), abs=1e-4)
    greedy = llm_fp32.generate("1, 2, 3, 4,", SamplingParams(temperature=0, max_tokens=20),
                               use_tqdm=False)[0].outputs[0]
    assert "7" in greedy.text
    stop = llm_fp32.generate("1, 2, 3, 4,", SamplingParams(temperature=0, max_tokens=20,
                                                            stop=["7"]), use_tqdm=False)[0]
    c = stop.outputs[0]
    assert c.finish_reason == "stop" and c.stop_reason == "7"
    assert c.text == greedy.text[: greedy.text.index("7")]


def test_prompt_logprobs_match_hf(llm_fp32, hf_model_fp32):
    prompt = "The quick brown fox jumps over the lazy dog"
    out = llm_fp32.generate(prompt, SamplingParams(max_tokens=1, prompt_logprobs=1),
                            use_tqdm=False)[0]
    ids = out.prompt_token_ids
    assert out.prompt_logprobs[0] is None and len(out.prompt_logprobs) == len(ids)
    with torch.no_grad():
        logits = hf_model_fp32(torch.tensor([ids])).logits[0].float()
    ref = torch.log_softmax(logits, -1)
    for pos in range(1, len(ids)):
        got = out.prompt_logprobs[pos][ids[pos]].logprob
        assert got == pytest.approx(ref[pos - 1, ids[pos]].item(), abs=2e-3)
