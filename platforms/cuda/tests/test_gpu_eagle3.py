"""The EAGLE-3 proposer on an NVIDIA GPU: greedy outputs are identical with and without
speculation for a random-weight EAGLE-3 head of the published layout (draft vocabulary
smaller than the target's, ``d2t`` map), with CUDA graphs on for the plain decode steps (their
auxiliary states stay inside the graph: the head skips those positions); temperature sampling
with the head runs (exact rejection sampling with its q rows on the device).

Marked ``gpu``; skipped with the reason when torch sees no CUDA device.
"""

from __future__ import annotations

import numpy as np
import torch
from gpu_models import GPU_ONLY
from test_gpu_draft_model import LLAMA as DRAFT_TEST_LLAMA

pytestmark = GPU_ONLY

LLAMA = {**DRAFT_TEST_LLAMA, "num_hidden_layers": 4}     # default auxiliary layers (2, 2, 1)


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
    greedy = SamplingParams(temperature=0.0, max_tokens=48, ignore_eos=True)
    tokens = {}
    for spec in (None, {"method": "eagle3", "model": head, "num_speculative_tokens": 3}):
        llm = LLM(target, dtype="float32", max_model_len=256, num_gpu_blocks_override=256,
                  max_num_seqs=8, speculative_config=spec)
        tokens[spec is None] = [o.outputs[0].token_ids for o in llm.generate(
            [{"prompt_token_ids": p} for p in prompts], greedy, use_tqdm=False)]
    assert tokens[False] == tokens[True]
    sampled = llm.generate([{"prompt_token_ids": p} for p in prompts],
                           SamplingParams(temperature=0.8, top_k=20, max_tokens=24, seed=1,
                                          ignore_eos=True), use_tqdm=False)
    assert all(len(o.outputs[0].token_ids) == 24 for o in sampled)
