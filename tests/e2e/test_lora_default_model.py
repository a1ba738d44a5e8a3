"""Multi-LoRA on the embedded default model (SmolLM2-135M GGUF): random PEFT adapters with
non-zero B made on HF transformers' load of the same GGUF (the parity twin); greedy tokens of
a mixed batch (two adapters + base) equal HF + PEFT's in float32."""

from __future__ import annotations

import copy

import pytest
import torch

MAX_TOKENS = 8
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _adapter(hf, folder: str, seed: int, r: int, targets: list[str]) -> str:
    from peft import LoraConfig, get_peft_model

    peft = get_peft_model(copy.deepcopy(hf), LoraConfig(
        r=r, lora_alpha=2 * r, target_modules=targets, init_lora_weights=False))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    peft.save_pretrained(folder)
    return folder


@torch.no_grad()
def _greedy(model, prompt: list[int]) -> list[int]:
    ids = torch.tensor([prompt])
    for _ in range(MAX_TOKENS):
        ids = torch.cat([ids, model(input_ids=ids).logits[0, -1].argmax().view(1, 1)], 1)
    return ids[0, len(prompt):].tolist()


@pytest.mark.slow
def test_default_model_lora_matches_peft(hf_model_fp32, tmp_path):
    from peft import PeftModel

    from vllm_core import LLM, LoRARequest, SamplingParams

    paths = [_adapter(hf_model_fp32, str(tmp_path / "a"), 1, 8, TARGETS),
             _adapter(hf_model_fp32, str(tmp_path / "b"), 2, 16, ["q_proj", "v_proj"])]
    llm = LLM(dtype="float32", max_model_len=256, kv_cache_space_gib=0.1, enable_lora=True,
              max_loras=2, max_lora_rank=16)
    tok = llm.get_tokenizer()
    prompts = [tok.encode(t) for t in ("The capital of France is", "def fibonacci(n):",
                                       "The capital of France is")]
    loras = [LoRARequest("a", 1, paths[0]), LoRARequest("b", 2, paths[1]), None]
    sp = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
    got = [list(o.outputs[0].token_ids) for o in llm.generate(
        [{"prompt_token_ids": p} for p in prompts], sp, use_tqdm=False, lora_request=loras)]
    expected = []
    for prompt, lora in zip(prompts, loras):
        model = hf_model_fp32 if lora is None else PeftModel.from_pretrained(
            copy.deepcopy(hf_model_fp32), lora.lora_path).eval()
        expected.append(_greedy(model, prompt))
    assert expected[0] != expected[2]                       # the adapter changes the answer
    assert got == expected
