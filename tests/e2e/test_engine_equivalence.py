"""Engine features must not change greedy tokens: chunked prefill, prefix caching, preemption,
and the CPU attention backend vs the reference backend (design section 7)."""

from __future__ import annotations

import pytest

from vllm_core import LLM, SamplingParams

SHARED = ("You are a helpful assistant. Answer briefly and precisely. The user asks about "
          "the history of the printing press and its effects on European society. ")
PROMPTS = [SHARED + "When was it invented?", SHARED + "Who invented it?",
           "Short one", SHARED * 2 + "Summarise.", "1 2 3 4 5 6 7 8 9 10 11 12 13 14 15"]
PARAMS = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)


def run(max_model_len: int = 512, **kwargs) -> list[list[int]]:
    llm = LLM(dtype="float32", max_model_len=max_model_len, kv_cache_space_gib=0.1, **kwargs)
    outs = llm.generate(PROMPTS, PARAMS, use_tqdm=False)
    # a second pass reuses cached prefixes when prefix caching is on
    again = llm.generate(PROMPTS[:2], PARAMS, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in again] == [o.outputs[0].token_ids for o in outs[:2]]
    return [o.outputs[0].token_ids for o in outs]


class PreemptionCounter:
    def __init__(self) -> None:
        self.preemptions = 0

    def record(self, scheduler_stats, iteration_stats) -> None:
        self.preemptions += scheduler_stats.num_preemptions


@pytest.fixture(scope="module")
def baseline() -> list[list[int]]:
    return run(enable_prefix_caching=False, enable_chunked_prefill=False)


def test_chunked_prefill_equivalent(baseline):
    assert run(enable_prefix_caching=False, max_num_batched_tokens=32) == baseline


def test_prefix_caching_equivalent(baseline):
    assert run(enable_prefix_caching=True, max_num_batched_tokens=64) == baseline


def test_preemption_equivalent(baseline):
    # 13 usable blocks of 16 tokens cannot hold the batch at once: requests get preempted and
    # recomputed (one max-length request of 192 tokens still fits, as the engine requires)
    llm = LLM(dtype="float32", max_model_len=192, kv_cache_space_gib=0.1,
              num_gpu_blocks_override=14, max_num_batched_tokens=64)
    counter = PreemptionCounter()
    llm.llm_engine.stat_loggers.append(counter)
    outs = llm.generate(PROMPTS, PARAMS, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outs] == baseline
    assert counter.preemptions > 0


def test_reference_backend_equivalent(baseline):
    assert run(attention_backend="reference", enable_prefix_caching=False,
               enable_chunked_prefill=False) == baseline


def test_async_scheduling_equivalent(baseline):
    assert run(async_scheduling=True, enable_prefix_caching=True,
               max_num_batched_tokens=64) == baseline


def test_async_scheduling_with_preemption_equivalent(baseline):
    llm = LLM(dtype="float32", max_model_len=192, kv_cache_space_gib=0.1,
              num_gpu_blocks_override=14, max_num_batched_tokens=64, async_scheduling=True)
    counter = PreemptionCounter()
    llm.llm_engine.stat_loggers.append(counter)
    outs = llm.generate(PROMPTS, PARAMS, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outs] == baseline
    assert counter.preemptions > 0


def test_async_scheduling_stops_like_sync(llm_fp32):
    """EOS, stop strings, stop tokens, max_tokens, n > 1, seeds and logprobs give the same
    outputs when each step is scheduled before the previous step's tokens are known."""
    prompts = ["The capital of France is", "Count: 1, 2, 3,", "Tell me a story.",
               "def add(a, b):"]
    params = [SamplingParams(temperature=0.0, max_tokens=40),
              SamplingParams(temperature=0.0, max_tokens=30, stop=[" 7"]),
              SamplingParams(temperature=0.8, seed=5, max_tokens=17, n=2, logprobs=2),
              SamplingParams(temperature=0.0, max_tokens=3)]
    async_llm = LLM(dtype="float32", max_model_len=1024, kv_cache_space_gib=0.25,
                    async_scheduling=True)
    assert async_llm.llm_engine.async_scheduling and not llm_fp32.llm_engine.async_scheduling

    def summary(llm):
        outs = llm.generate(prompts, params, use_tqdm=False)
        return [[(c.token_ids, c.text, c.finish_reason, c.stop_reason,
                  [sorted(lp) for lp in (c.logprobs or [])]) for c in o.outputs] for o in outs]

    sync, got = summary(llm_fp32), summary(async_llm)
    assert got == sync
    assert sync[0][0][2] == "stop" and sync[1][0][2] == "stop" and sync[3][0][2] == "length"
    assert not async_llm.llm_engine.has_unfinished_requests()
