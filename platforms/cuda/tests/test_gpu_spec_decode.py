"""Speculative decoding on an NVIDIA GPU: the rejection sampler on the device (exponential-race
sampling of the residual) preserves the target distribution, and greedy outputs are identical
with and without n-gram speculation with CUDA graphs on for the plain decode steps.

Marked ``gpu``; skipped with the reason when torch sees no CUDA device.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(),
                       reason="needs an NVIDIA GPU visible to torch (run: nox -s tests-cuda on "
                              "the GPU machine)"),
]


def test_rejection_sampling_on_gpu_preserves_target():
    from scipy.stats import chisquare

    from vllm_core.sampling.metadata import RequestSamplingState, build_sampling_metadata
    from vllm_core.sampling.params import SamplingParams
    from vllm_core.sampling.sampler import Sampler
    from vllm_core.spec_decode.rejection_sampler import rejection_sample

    vocab, num = 512, 20000
    torch.manual_seed(0)
    logits = (torch.randn(2, vocab) * 3).cuda()
    params = SamplingParams(temperature=0.9, top_k=40, top_p=0.9)
    states = [RequestSamplingState(params, [1], [])] * (2 * num)
    md = build_sampling_metadata(states, vocab, "cuda")
    p0 = Sampler.probs(logits.clone(), build_sampling_metadata(states[:2], vocab, "cuda"))[0]
    p0 = p0.double().cpu().numpy()
    support = np.flatnonzero(p0 > 0)
    bad = support[np.argmin(p0[support])]
    drafts = torch.tensor([bad, -1], device="cuda").repeat(num)
    row_start = torch.arange(num, device="cuda").repeat_interleave(2) * 2
    out = rejection_sample(logits.repeat(num, 1), md, drafts, row_start)
    first = out.token_ids.view(num, 2)[:, 0].cpu().numpy()
    counts = np.bincount(first, minlength=vocab).astype(np.float64)
    assert counts[p0 == 0].sum() == 0
    expected = p0[support] / p0[support].sum() * num
    keep = expected >= 5                   # chi-square needs populated cells: pool the tail
    obs, exp = counts[support][keep], expected[keep]
    if not keep.all():
        obs = np.append(obs, counts[support][~keep].sum())
        exp = np.append(exp, expected[~keep].sum())
    assert chisquare(obs, exp).pvalue > 1e-3


def test_greedy_identical_with_ngram_on_gpu(tmp_path):
    from vllm_core import LLM, SamplingParams
    from vllm_core.model_executor.testing import random_hf_causal_lm, write_wordlevel_tokenizer

    model = random_hf_causal_lm("llama", dict(
        vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        tie_word_embeddings=False, bos_token_id=None, eos_token_id=None, pad_token_id=None),
        seed=0, weight_scale=0.3)
    model.save_pretrained(str(tmp_path))
    write_wordlevel_tokenizer(str(tmp_path), 256)
    rng = np.random.default_rng(0)
    motif = rng.integers(1, 250, 11).tolist()
    prompts = [motif * 4, rng.integers(1, 250, 50).tolist(), motif * 2 + [7, 8, 9]]
    params = SamplingParams(temperature=0.0, max_tokens=48, ignore_eos=True)

    def run(**kwargs):
        llm = LLM(str(tmp_path), dtype="float32", max_model_len=256,
                  num_gpu_blocks_override=256, max_num_seqs=8, **kwargs)
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        return [o.outputs[0].token_ids for o in outs]

    spec = {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 3}
    assert run(speculative_config=spec) == run()
