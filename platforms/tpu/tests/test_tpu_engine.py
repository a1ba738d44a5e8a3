"""The TPU platform end to end on XLA's CPU device (``PJRT_DEVICE=CPU``): the real default model
(SmolLM2-135M-Instruct), float32, greedy tokens identical to the CPU plugin's, and the XLA
compile count fixed after the warm-up however request shapes vary.

Kept small on purpose (compiling the 30-layer model for XLA's CPU takes ~10 s per graph): a
32-token budget and 2 sequences give 2 token buckets x 2 request buckets = 4 graphs.
"""

from __future__ import annotations

import pytest

from vllm_core import EngineArgs, SamplingParams
from vllm_core.engine.llm_engine import LLMEngine
from vllm_core.platforms import reset_current_platform, set_current_platform
from vllm_core_cpu.platform import CpuPlatform
from vllm_core_tpu import runtime
from vllm_core_tpu.platform import TpuPlatform

ENGINE = dict(dtype="float32", max_model_len=96, kv_cache_space_gib=0.05,
              max_num_batched_tokens=32, max_num_seqs=2)
ROUND_1 = ["Hi", "The capital of France is"]
# different lengths, a prompt longer than the 32-token budget (chunked prefill), one alone
ROUND_2 = ["List three colours: red, green, and one more that you like best of all of them "
           "when you look at the evening sky over the sea", "1 2 3 4"]
ROUND_3 = ["Hello"]


def make_engine(platform) -> LLMEngine:
    reset_current_platform()
    set_current_platform(platform)
    config, plat = EngineArgs(**ENGINE).create_engine_config()
    return LLMEngine(config, plat)


def generate(engine: LLMEngine, prompts: list[str], max_tokens: int = 5) -> list[list[int]]:
    for i, prompt in enumerate(prompts):
        engine.add_request(f"r{i}", prompt, SamplingParams(max_tokens=max_tokens, temperature=0))
    done: dict[str, list[int]] = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                done[out.request_id] = list(out.outputs[0].token_ids)
    return [done[f"r{i}"] for i in range(len(prompts))]


@pytest.fixture(scope="module")
def cpu_tokens():
    engine = make_engine(CpuPlatform)
    try:
        return [generate(engine, p) for p in (ROUND_1, ROUND_2, ROUND_3)]
    finally:
        engine.executor.shutdown()
        reset_current_platform()


@pytest.fixture(scope="module")
def tpu_engine():
    engine = make_engine(TpuPlatform)
    yield engine
    engine.executor.shutdown()
    reset_current_platform()


def test_startup_reports_buckets_and_compiles_every_graph(tpu_engine):
    report = tpu_engine.executor.worker.startup_report()
    assert report["token_buckets"] == [16, 32] and report["request_buckets"] == [1, 2]
    assert report["max_graphs"] == 4
    assert report["warmup_compiles"] == 4          # one XLA compile per bucket graph
    assert tpu_engine.executor.worker.runner.attn_backend.name == "xla_paged"
    assert runtime.pjrt_device_type() == "CPU"


def test_greedy_parity_with_cpu_plugin_and_bounded_compiles(tpu_engine, cpu_tokens):
    runner = tpu_engine.executor.worker.runner
    after_warmup = runtime.compile_count()
    got = [generate(tpu_engine, p) for p in (ROUND_1, ROUND_2, ROUND_3)]
    assert got == cpu_tokens
    # varied prompt lengths, chunked prefill, 1 and 2 requests: no new graph was compiled
    assert runtime.compile_count() == after_warmup
    assert runner.graphs_run <= set(runner.buckets.graphs())
    assert len(runner.graphs_run) >= 3
