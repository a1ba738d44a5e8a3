"""Mixture-of-experts models through the whole engine on the CPU platform (its attention
kernel, continuous batching, chunked prefill under a small token budget): greedy tokens equal
HF transformers' ``generate`` on the same random weights, for every prompt of a mixed batch."""

from __future__ import annotations

import pytest
import torch

from vllm_core.model_executor.testing import (
    hf_greedy_tokens,
    random_hf_causal_lm,
    write_wordlevel_tokenizer,
)

VOCAB = 211
# (Mixtral's greedy decode is compared with HF at the model level in test_moe_parity.py)
MODELS = {
    "qwen3_moe": ("qwen3_moe", dict(num_experts=8, num_experts_per_tok=4, head_dim=16,
                                    moe_intermediate_size=32, norm_topk_prob=True)),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_engine_greedy_matches_hf_generate(tmp_path, name):
    from vllm_core import LLM, SamplingParams

    model_type, extra = MODELS[name]
    cfg = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
               bos_token_id=None, eos_token_id=None, pad_token_id=None, **extra)
    hf = random_hf_causal_lm(model_type, cfg, seed=3, weight_scale=0.1)
    hf.save_pretrained(str(tmp_path))
    write_wordlevel_tokenizer(str(tmp_path), VOCAB)
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, VOCAB, (n,), generator=gen).tolist() for n in (3, 29, 11, 17)]
    llm = LLM(str(tmp_path), dtype="float32", max_model_len=128, num_gpu_blocks_override=64,
              max_num_batched_tokens=16, max_num_seqs=4, enforce_eager=True)
    try:
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts],
                            SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True),
                            use_tqdm=False)
    finally:
        llm.llm_engine.shutdown()
    for prompt, out in zip(prompts, outs, strict=True):
        assert list(out.outputs[0].token_ids) == hf_greedy_tokens(hf, prompt, 8)
