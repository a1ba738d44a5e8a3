"""Multi-LoRA on an NVIDIA GPU: a mixed batch of 4 random PEFT adapters (non-zero B) + the
base model gives HF + PEFT's greedy tokens (fp32) with CUDA graphs and async scheduling (the
Triton SGMV kernels), with eager execution, and with fewer slots than adapters (swapping).

Marked ``gpu``; skipped with the reason when torch sees no CUDA device.
"""

from __future__ import annotations

import copy
import gc

import pytest
import torch
from gpu_models import GPU_ONLY

pytestmark = GPU_ONLY

MAX_TOKENS = 12
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from peft import LoraConfig, PeftModel, get_peft_model

    from vllm_core.model_executor.testing import random_hf_causal_lm, write_wordlevel_tokenizer

    root = tmp_path_factory.mktemp("gpu_lora")
    folder = str(root / "base")
    hf = random_hf_causal_lm("llama", dict(
        vocab_size=512, hidden_size=128, intermediate_size=344, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        tie_word_embeddings=False, bos_token_id=None, eos_token_id=None, pad_token_id=None),
        seed=0, weight_scale=0.08)
    hf.save_pretrained(folder)
    write_wordlevel_tokenizer(folder, 512)
    adapters = []
    for i, (r, rs) in enumerate([(8, False), (16, True), (4, False), (16, False)]):
        peft = get_peft_model(copy.deepcopy(hf), LoraConfig(
            r=r, lora_alpha=16, target_modules=TARGETS, use_rslora=rs, init_lora_weights=False))
        gen = torch.Generator().manual_seed(i + 1)
        with torch.no_grad():
            for name, p in peft.named_parameters():
                if "lora_" in name:
                    p.copy_(0.05 * torch.randn(p.shape, generator=gen))
        path = str(root / f"a{i}")
        peft.save_pretrained(path)
        adapters.append(path)
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(1, 500, (n,), generator=gen).tolist() for n in (9, 40, 17, 5, 70)]
    expected = []
    model = hf.cuda().eval()
    for i, prompt in enumerate(prompts):
        m = model if i == 0 else PeftModel.from_pretrained(copy.deepcopy(model),
                                                           adapters[i - 1]).cuda().eval()
        ids = torch.tensor([prompt], device="cuda")
        with torch.no_grad():
            for _ in range(MAX_TOKENS):
                ids = torch.cat([ids, m(input_ids=ids).logits[0, -1].argmax().view(1, 1)], 1)
        expected.append(ids[0, len(prompt):].tolist())
    return folder, adapters, prompts, expected


def _run(folder, adapters, prompts, **kw):
    from vllm_core import LLM, LoRARequest, SamplingParams

    llm = LLM(folder, dtype="float32", max_model_len=256, num_gpu_blocks_override=256,
              max_num_seqs=16, enable_lora=True, max_lora_rank=16, **kw)
    loras = [None] + [LoRARequest(f"a{i}", i + 1, p) for i, p in enumerate(adapters)]
    sp = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], sp, use_tqdm=False,
                        lora_request=loras)
    runner = llm.llm_engine.executor.worker.runner
    info = (runner.lora.batch.mode, runner.num_graph_steps)
    llm.llm_engine.shutdown()
    del llm
    gc.collect()
    torch.cuda.empty_cache()
    return [list(o.outputs[0].token_ids) for o in outs], info


def test_mixed_adapters_match_peft_with_cuda_graphs(setup):
    folder, adapters, prompts, expected = setup
    got, (mode, graph_steps) = _run(folder, adapters, prompts, max_loras=4)
    assert mode == "sgmv" and graph_steps > 0
    assert got == expected


def test_eager_and_swapping_match_peft(setup):
    folder, adapters, prompts, expected = setup
    got, _ = _run(folder, adapters, prompts, max_loras=4, enforce_eager=True)
    assert got == expected
    got, _ = _run(folder, adapters, prompts, max_loras=2, max_cpu_loras=2)
    assert got == expected
