"""Gemma 3 and Phi-3 / Phi-4-mini on an NVIDIA GPU (Triton backend, CUDA graphs): greedy parity
with HF transformers, and Gemma 3's interleaved sliding windows unchanged by chunked prefill and
prefix caching. Marked ``gpu`` (see test_gpu_engine.py)."""

from __future__ import annotations

import gc
import os

import pytest
import torch
from gpu_models import GPU_ONLY, hf_greedy, random_prompts, tiny_hf_model

from vllm_core.model_executor.testing import write_wordlevel_tokenizer

pytestmark = GPU_ONLY

PHI3_ROPE = {"type": "longrope", "long_factor": [1.0 + i / 4 for i in range(32)],
             "short_factor": [1.0 + i / 16 for i in range(32)]}
NEW_CASES: dict[str, tuple[str, dict]] = {
    # head 64, window 24 < the longer prompts, layers sliding / global / sliding / global
    "gemma3": ("gemma3_text", dict(hidden_size=256, head_dim=64, num_hidden_layers=4,
                                   num_attention_heads=4, num_key_value_heads=2,
                                   sliding_window=24, sliding_window_pattern=2,
                                   query_pre_attn_scalar=64, tie_word_embeddings=True,
                                   rope_scaling={"rope_type": "linear", "factor": 2.0})),
    # Gemma 3's real head size (256)
    "gemma3-head256": ("gemma3_text", dict(hidden_size=256, head_dim=256, num_hidden_layers=2,
                                           num_attention_heads=2, num_key_value_heads=1,
                                           sliding_window=16, sliding_window_pattern=2,
                                           query_pre_attn_scalar=256)),
    # LongRoPE (prompts below original_max_position_embeddings), window 40
    "phi3": ("phi3", dict(hidden_size=256, num_attention_heads=4, num_key_value_heads=2,
                          original_max_position_embeddings=256, rope_scaling=PHI3_ROPE,
                          sliding_window=40)),
    # partial rotary (48 of 64 channels), tied
    "phi4-mini": ("phi3", dict(hidden_size=256, num_attention_heads=4, num_key_value_heads=2,
                               partial_rotary_factor=0.75, tie_word_embeddings=True,
                               original_max_position_embeddings=256,
                               rope_scaling={**PHI3_ROPE, "long_factor": [2.0] * 24,
                                             "short_factor": [1.0] * 24})),
}
LENGTHS = [5, 17, 33, 64, 9, 120, 3]
MAX_TOKENS = 16


def make_llm(folder: str, **kwargs):
    from vllm_core import LLM

    args = dict(dtype="float32", max_model_len=256, num_gpu_blocks_override=512,
                max_num_seqs=32, seed=0)
    args.update(kwargs)
    return LLM(folder, **args)


def generate(llm, prompts: list[list[int]]) -> list[list[int]]:
    from vllm_core import SamplingParams

    sp = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], sp, use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outs]


def free(llm) -> None:
    llm.llm_engine.shutdown()
    del llm
    gc.collect()
    torch.cuda.empty_cache()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("gpu_new_families"))
    out = {}
    for name, (model_type, overrides) in NEW_CASES.items():
        model = tiny_hf_model(model_type, **overrides)
        folder = os.path.join(root, name)
        model.save_pretrained(folder)
        write_wordlevel_tokenizer(folder, model.config.vocab_size)
        out[name] = (folder, model)
    return out


@pytest.mark.parametrize("name", sorted(NEW_CASES))
def test_greedy_parity_with_hf(models, name):
    folder, hf = models[name]
    hf.set_attn_implementation("eager")
    prompts = random_prompts(LENGTHS, hf.config.vocab_size, seed=1)
    llm = make_llm(folder)
    try:
        ours = generate(llm, prompts)
    finally:
        free(llm)
    exact = 0
    for prompt, got in zip(prompts, ours):
        ref, tops = hf_greedy(hf, prompt, MAX_TOKENS)
        for i, (a, b) in enumerate(zip(got, ref, strict=True)):
            if a != b:          # numerics may flip a near-tie; nothing after it is compared
                assert a in tops[i], f"token {i}: ours {a} not in HF top-5 {tops[i]}"
                break
        exact += got == ref
    assert exact >= len(prompts) - 1, f"only {exact}/{len(prompts)} sequences identical"


def test_gemma3_sliding_window_equivalent_under_chunking_and_prefix_caching(models):
    folder, hf = models["gemma3"]
    prompts = random_prompts(LENGTHS, hf.config.vocab_size, seed=2)
    shared = prompts[5][:100]
    prompts += [shared + [7, 8, 9], shared + [10]]
    results = []
    for kwargs in (dict(enable_prefix_caching=False, enable_chunked_prefill=False),
                   dict(enable_prefix_caching=False, max_num_batched_tokens=32),
                   dict(enable_prefix_caching=True, max_num_batched_tokens=64)):
        llm = make_llm(folder, **kwargs)
        try:
            results.append(generate(llm, prompts))
            if kwargs["enable_prefix_caching"]:
                results.append(generate(llm, prompts))      # again: the prefixes are cached
        finally:
            free(llm)
    assert all(r == results[0] for r in results[1:])
