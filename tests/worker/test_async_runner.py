"""The core runner's async pipeline on the CPU plugin: a step launched before the previous one
is collected takes the tokens in flight from the previous step's sampled ids (on the device),
and the outputs equal the synchronous engine's (greedy, seeded sampling, logprobs, penalties,
n > 1, stop tokens, slot reuse)."""

from __future__ import annotations

import pytest
import torch

from vllm_core.model_executor.testing import random_hf_causal_lm, write_wordlevel_tokenizer


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("async_runner"))
    model = random_hf_causal_lm("llama", dict(
        vocab_size=512, hidden_size=128, intermediate_size=344, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        tie_word_embeddings=False, bos_token_id=None, eos_token_id=None, pad_token_id=None),
        seed=0, weight_scale=0.08)
    model.save_pretrained(path)
    write_wordlevel_tokenizer(path, 512)
    return path


def make_llm(folder: str, async_scheduling: bool):
    from vllm_core import LLM

    return LLM(folder, dtype="float32", max_model_len=128, num_gpu_blocks_override=64,
               max_num_seqs=8, max_num_batched_tokens=64, seed=0, enforce_eager=True,
               async_scheduling=async_scheduling)


def outputs(llm, prompts, params):
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    return [[(c.token_ids, c.finish_reason, [sorted(lp) for lp in (c.logprobs or [])])
             for c in o.outputs] for o in outs]


def test_async_pipeline_feeds_tokens_in_flight_and_matches_sync(folder):
    from vllm_core import SamplingParams

    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(1, 500, (n,), generator=gen).tolist() for n in (5, 40, 17, 90, 3)]
    params = [SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True),
              SamplingParams(temperature=0.9, seed=3, max_tokens=20, ignore_eos=True,
                             logprobs=2),
              SamplingParams(temperature=0.0, max_tokens=7, ignore_eos=True, n=2),
              SamplingParams(temperature=0.7, top_k=20, seed=11, max_tokens=9,
                             ignore_eos=True, repetition_penalty=1.3, presence_penalty=0.5),
              SamplingParams(temperature=0.0, max_tokens=15, ignore_eos=True,
                             stop_token_ids=[7])]
    sync = make_llm(folder, async_scheduling=False)
    reference = outputs(sync, prompts, params)
    assert sync.llm_engine.executor.worker.runner.num_fed_rows == 0

    llm = make_llm(folder, async_scheduling=True)
    assert llm.llm_engine.async_scheduling
    assert outputs(llm, prompts, params) == reference
    runner = llm.llm_engine.executor.worker.runner
    assert runner.num_fed_rows > 0                  # tokens came from the step in flight
    assert runner._in_flight is None and not llm.llm_engine.has_unfinished_requests()
    # a second round on the same engine: slots were recycled correctly
    assert outputs(llm, prompts[::-1], params[::-1]) == reference[::-1]
