"""The EAGLE-3 proposer on an NVIDIA GPU: greedy outputs are identical with and without
speculation for a random-weight EAGLE-3 head of the published layout (draft vocabulary
smaller than the target's, ``d2t`` map), with CUDA graphs on for the plain decode steps (their
auxiliary states stay inside the graph: the head skips those positions); temperature sampling
with the head runs (exact rejection sampling with its q rows on the device).

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

LLAMA = dict(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
             tie_word_embeddings=False, bos_token_id=None, eos_token_id=None, pad_token_id=None)


def test_eagle3_greedy_identical_on_gpu(tmp_path):
    from vllm_core import LLM, SamplingParams
    from vllm_core.model_executor.testing import (
        random_hf_causal_lm,
        write_random_eagle3_head,
        write_wordlevel_tokenizer,
    )

    target, head = str(tmp_path / "target"), str(tmp_path / "head")
    random_hf_causal_lm("llama", LLAMA, seed=0, weight_scale=0.3).save_pretrained(target)
    write_wordlevel_tokenizer(target, 256)
    vocab = torch.randperm(256, generator=torch.Generator().manual_seed(1))[:96].sort().values
    write_random_eagle3_head(head, LLAMA, vocab, seed=2, rms_norm_eps=1e-6)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(1, 250, n).tolist() for n in (40, 7, 90)]
    params = SamplingParams(temperature=0.0, max_tokens=48, ignore_eos=True)

    def run(**kwargs):
        llm = LLM(target, dtype="float32", max_model_len=256, num_gpu_blocks_override=256,
                  max_num_seqs=8, **kwargs)
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        return [o.outputs[0].token_ids for o in outs], llm

    base, _ = run()
    got, llm = run(speculative_config={"method": "eagle3", "model": head,
                                       "num_speculative_tokens": 3})
    assert got == base
    sampled = llm.generate([{"prompt_token_ids": p} for p in prompts],
                           SamplingParams(temperature=0.8, top_k=20, max_tokens=24, seed=1,
                                          ignore_eos=True), use_tqdm=False)
    assert all(len(o.outputs[0].token_ids) == 24 for o in sampled)
