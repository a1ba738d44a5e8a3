"""LoRA under tensor parallelism (mp executor, 2 processes, gloo): A and B sharded like the
base layers (B column-split for qkv / gate-up, A row-split for o / down with the partial sum
added before the all-reduce) give the single-rank engine's greedy tokens for a mixed batch of
two adapters and the base model, on the Llama (GQA) and Qwen2 (one KV head replicated, q/k/v
biases) shapes; a bad adapter is refused in the engine process (the workers keep serving)."""

from __future__ import annotations

import os

import pytest
import torch
from dist_utils import build_model_folder

from vllm_core.config import ModelArchConfig
from vllm_core.lora.testing import write_random_adapter


def _arch(name: str) -> ModelArchConfig:
    heads, kv = {"llama": (4, 2), "qwen2": (4, 1)}[name]
    return ModelArchConfig(f"{name}", name, 503, 64, 128, 3, heads, kv, 16)


def _run(folder: str, loras: list, tp: int) -> list[list[int]]:
    from vllm_core import LLM, SamplingParams

    llm = LLM(folder, dtype="float32", max_model_len=128, num_gpu_blocks_override=48,
              max_num_seqs=8, max_num_batched_tokens=48, seed=0, enforce_eager=True,
              tensor_parallel_size=tp, enable_lora=True, max_loras=2, max_lora_rank=8)
    try:
        gen = torch.Generator().manual_seed(0)
        prompts = [torch.randint(1, 500, (n,), generator=gen).tolist() for n in (5, 40, 17)]
        sp = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts], sp, use_tqdm=False,
                            lora_request=loras)
        if tp > 1:
            from vllm_core import LoRARequest

            with pytest.raises(ValueError, match="is not a folder"):
                llm.llm_engine.add_lora(LoRARequest("bad", 9, "/no/such/adapter"))
            again = llm.generate([{"prompt_token_ids": prompts[0]}], sp, use_tqdm=False,
                                 lora_request=[loras[0]])
            assert again[0].outputs[0].token_ids == outs[0].outputs[0].token_ids
        return [list(o.outputs[0].token_ids) for o in outs]
    finally:
        llm.llm_engine.shutdown()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["llama", "qwen2"])
def test_tp2_lora_equals_single_rank(tmp_path, name):
    from vllm_core import LoRARequest

    folder = build_model_folder(str(tmp_path), name)
    loras = [LoRARequest(f"a{i}", i + 1, write_random_adapter(
        os.path.join(str(tmp_path), f"a{i}"), _arch(name), rank=8, seed=i, scale=0.2))
        for i in range(2)]
    mixed = [loras[0], None, loras[1]]
    assert _run(folder, mixed, tp=2) == _run(folder, mixed, tp=1)
