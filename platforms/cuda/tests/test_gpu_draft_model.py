"""The draft-model proposer on an NVIDIA GPU: greedy outputs are identical with and without
speculation (a different random draft, and a truncated-layer view of the target), with CUDA
graphs on for the plain decode steps; temperature sampling with a draft runs (exact rejection
sampling with the draft's q rows on the device).

Marked ``gpu``; skipped with the reason when torch sees no CUDA device.
"""

from __future__ import annotations

import numpy as np
from gpu_models import GPU_ONLY

pytestmark = GPU_ONLY

LLAMA = dict(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
             tie_word_embeddings=False, bos_token_id=None, eos_token_id=None, pad_token_id=None)


def test_draft_model_greedy_identical_on_gpu(tmp_path):
    from vllm_core import LLM, SamplingParams
    from vllm_core.model_executor.testing import random_hf_causal_lm, write_wordlevel_tokenizer

    target, other = str(tmp_path / "target"), str(tmp_path / "other")
    for path, seed, layers in ((target, 0, 2), (other, 5, 1)):
        random_hf_causal_lm("llama", {**LLAMA, "num_hidden_layers": layers}, seed=seed,
                            weight_scale=0.3).save_pretrained(path)
        write_wordlevel_tokenizer(path, 256)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(1, 250, n).tolist() for n in (40, 7, 90)]
    params = SamplingParams(temperature=0.0, max_tokens=48, ignore_eos=True)

    def run(**kwargs):
        llm = LLM(target, dtype="float32", max_model_len=256, num_gpu_blocks_override=256,
                  max_num_seqs=8, **kwargs)
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        return [o.outputs[0].token_ids for o in outs], llm

    base, _ = run()
    for spec in ({"method": "draft_model", "model": other, "num_speculative_tokens": 4},
                 {"method": "draft_model", "model": target, "num_speculative_tokens": 3,
                  "num_hidden_layers": 1}):
        got, llm = run(speculative_config=spec)
        assert got == base, spec
    sampled = llm.generate([{"prompt_token_ids": p} for p in prompts],
                           SamplingParams(temperature=0.8, top_k=20, max_tokens=24, seed=1,
                                          ignore_eos=True), use_tqdm=False)
    assert all(len(o.outputs[0].token_ids) == 24 for o in sampled)
