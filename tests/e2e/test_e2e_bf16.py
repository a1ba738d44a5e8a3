"""bf16 on the default model: HF parity (design section 7 rule) and seeded batch invariance."""

from __future__ import annotations

import os

import pytest
import torch

from vllm_core import LLM, SamplingParams

TOP_K = 5
MAX_TOKENS = 12


@pytest.fixture(scope="module")
def llm_bf16():
    return LLM(dtype="bfloat16", max_model_len=1024, kv_cache_space_gib=0.25)


@pytest.fixture(scope="module")
def hf_bf16(gguf_path):
    """A plain HF bf16 model holding the same dequantized weights as ours (transformers' own
    GGUF path keeps weights packed and computes in float32, which is not a bf16 model)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from vllm_core.model_executor.gguf_loader import iter_gguf_weights
    from vllm_core.model_executor.loader import load_arch_config

    config = AutoConfig.from_pretrained(os.path.dirname(gguf_path),
                                        gguf_file=os.path.basename(gguf_path))
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = dict(iter_gguf_weights(gguf_path, load_arch_config(gguf_path)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all("lm_head" in m for m in missing)
    model.tie_weights()
    return model.to(torch.bfloat16).eval()


def test_greedy_parity_bf16(llm_bf16, hf_bf16, mixed_prompts):
    """Identical greedy tokens, or - where bf16 rounding differs - from the first divergence
    each side's token is within the other's top-5."""
    tok = llm_bf16.get_tokenizer()
    outs = llm_bf16.generate(mixed_prompts, SamplingParams(temperature=0, max_tokens=MAX_TOKENS,
                                                     ignore_eos=True, logprobs=TOP_K),
                             use_tqdm=False)
    exact = 0
    for prompt, out in zip(mixed_prompts, outs):
        ids = torch.tensor([tok(prompt).input_ids])
        with torch.no_grad():
            ref = hf_bf16.generate(ids, max_new_tokens=MAX_TOKENS, do_sample=False,
                                   attention_mask=torch.ones_like(ids), pad_token_id=0,
                                   output_scores=True, return_dict_in_generate=True)
        ref_ids = ref.sequences[0, ids.shape[1]:].tolist()
        ours = out.outputs[0].token_ids
        if ours == ref_ids:
            exact += 1
            continue
        i = next(j for j, (a, b) in enumerate(zip(ours, ref_ids)) if a != b)
        hf_top = torch.topk(ref.scores[i][0].float(), TOP_K).indices.tolist()
        assert ours[i] in hf_top, (prompt, i)
        assert ref_ids[i] in out.outputs[0].logprobs[i], (prompt, i)
    assert exact >= len(mixed_prompts) - 2


def test_seeded_sampling_bf16_invariant_to_cache_and_batch(llm_bf16):
    msgs = [{"role": "user", "content": "Write a short poem about the moon and the stars."}]
    seeded = SamplingParams(temperature=0.9, seed=42, max_tokens=24)
    cold = llm_bf16.chat(msgs, seeded, use_tqdm=False)[0].outputs[0].token_ids
    warm = llm_bf16.chat(msgs, seeded, use_tqdm=False)[0].outputs[0].token_ids   # prefix hit
    assert cold == warm
    ids = llm_bf16.apply_chat_template(msgs)
    others = SamplingParams(temperature=1.0, max_tokens=30, ignore_eos=True)
    mixed = llm_bf16.generate(
        [{"prompt_token_ids": ids[:7] + [42] * 50}, {"prompt_token_ids": ids},
         "A completely different prompt about cooking pasta"],
        [others, seeded, others], use_tqdm=False)
    assert mixed[1].outputs[0].token_ids == cold
