"""n-gram speculative decoding on the real default model: greedy tokens identical to the
engine without speculation on input-grounded prompts (where lookup applies and drafts are
really accepted), with prefix caching (a second round hits the cache) and preemption."""

from __future__ import annotations

import json
from pathlib import Path

from vllm_core import LLM, SamplingParams

PROMPTS = json.loads((Path(__file__).resolve().parents[2] / "benchmarks"
                      / "spec_decode_prompts.json").read_text())[:3]
NGRAM = {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 4,
         "prompt_lookup_min": 2}


class Counter:
    def __init__(self) -> None:
        self.draft_tokens = self.accepted = self.preemptions = 0

    def record(self, scheduler_stats, iteration_stats) -> None:
        self.preemptions += scheduler_stats.num_preemptions
        if scheduler_stats.spec_decoding is not None:
            self.draft_tokens += scheduler_stats.spec_decoding.num_draft_tokens
            self.accepted += scheduler_stats.spec_decoding.num_accepted_tokens


def chat_tokens(llm, params) -> list[list[int]]:
    convs = [[{"role": "user", "content": p["prompt"]}] for p in PROMPTS]
    return [list(o.outputs[0].token_ids) for o in llm.chat(convs, params, use_tqdm=False)]


def test_ngram_greedy_identical_on_default_model(llm_fp32):
    params = SamplingParams(temperature=0.0, max_tokens=48)
    expected = chat_tokens(llm_fp32, params)
    llm = LLM(dtype="float32", max_model_len=1024, kv_cache_space_gib=0.25,
              speculative_config=NGRAM)
    counter = Counter()
    llm.llm_engine.stat_loggers.append(counter)
    assert chat_tokens(llm, params) == expected
    assert counter.accepted > 0.3 * counter.draft_tokens > 0
    assert chat_tokens(llm, params) == expected          # prefix-cache hits this time
    assert llm.llm_engine.scheduler.kv_cache_manager.block_pool.usage >= 0


def test_ngram_greedy_identical_with_preemption(llm_fp32):
    params = SamplingParams(temperature=0.0, max_tokens=48)
    expected = chat_tokens(llm_fp32, params)
    # 16 blocks of 16 tokens cannot hold three ~120-token conversations and their outputs
    llm = LLM(dtype="float32", max_model_len=240, num_gpu_blocks_override=17,
              max_num_batched_tokens=128, speculative_config=NGRAM)
    counter = Counter()
    llm.llm_engine.stat_loggers.append(counter)
    assert chat_tokens(llm, params) == expected
    assert counter.preemptions > 0 and counter.accepted > 0
