"""LLM.beam_search against HF transformers' beam search on the default model (fp32)."""

from __future__ import annotations

import torch

from vllm_core import SamplingParams
from vllm_core.sampling.beam_search import BeamSearchParams


def test_beam_width_one_is_greedy(llm_fp32):
    prompt = "The capital of France is"
    beams = llm_fp32.beam_search([prompt], BeamSearchParams(beam_width=1, max_tokens=8,
                                                            ignore_eos=True))
    greedy = llm_fp32.generate(prompt, SamplingParams(temperature=0, max_tokens=8,
                                                       ignore_eos=True), use_tqdm=False)[0]
    assert beams[0].sequences[0].tokens == greedy.outputs[0].token_ids


def test_beam_search_matches_hf(llm_fp32, hf_model_fp32):
    tok = llm_fp32.get_tokenizer()
    for prompt in ["The capital of France is", "My favourite colour is"]:
        ours = llm_fp32.beam_search([prompt], BeamSearchParams(beam_width=3, max_tokens=6,
                                                               ignore_eos=True))[0]
        ids = torch.tensor([tok(prompt).input_ids])
        with torch.no_grad():
            ref = hf_model_fp32.generate(ids, num_beams=3, max_new_tokens=6, do_sample=False,
                                         early_stopping=False, length_penalty=1.0,
                                         attention_mask=torch.ones_like(ids), pad_token_id=0,
                                         eos_token_id=None)
        assert ours.sequences[0].tokens == ref[0, ids.shape[1]:].tolist(), prompt
        assert len(ours.sequences) == 3
        scores = [s.cum_logprob for s in ours.sequences]
        assert scores == sorted(scores, reverse=True)
