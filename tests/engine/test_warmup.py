"""The start-up warm-up (``vllm_core.engine.warmup``) on a tiny random Llama: it runs every
sampling variant (each generates its tokens; logprobs come back), a long prefill next to
decodes (a mixed step), and decode batches of all variants; the start-up phases are reported;
afterwards the engine is empty and answers exactly as an engine without the warm-up (the
warm-up left nothing in the prefix cache). Compile caches go under the cache root."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from vllm_core.engine.startup import COMPILE_CACHE_DIRS, describe_phases, persist_compile_caches
from vllm_core.engine.warmup import DECODE_TOKENS, SAMPLING_VARIANTS
from vllm_core.sampling.params import SamplingParams

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_engine_core_process import build_tiny_llama  # noqa: E402


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    return build_tiny_llama(str(tmp_path_factory.mktemp("tiny-llama-warmup")))


def _llm(folder: str, warmup: bool):
    from vllm_core import LLM

    return LLM(folder, dtype="float32", max_model_len=128, num_gpu_blocks_override=64,
               max_num_seqs=8, max_num_batched_tokens=64, seed=0, warmup=warmup)


def _answers(llm) -> list:
    prompts = [" ".join(f"t{(5 * i + j) % 200}" for j in range(6 + i)) for i in range(3)]
    params = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)
    return [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]


def test_warmup_runs_every_variant_and_leaves_nothing(tiny_model):
    cold = _llm(tiny_model, warmup=False)
    expected = _answers(cold)
    assert cold.llm_engine.core.warmup_report is None
    assert "warm-up" not in cold.llm_engine.startup_phases
    cold.shutdown()

    llm = _llm(tiny_model, warmup=True)
    try:
        engine = llm.llm_engine
        report = engine.core.warmup_report
        assert set(report.tokens) == {*SAMPLING_VARIANTS, "prefill"}
        assert all(report.tokens[name] == DECODE_TOKENS for name in SAMPLING_VARIANTS)
        assert report.tokens["prefill"] == 2
        assert report.logprobs == ["logprobs"]
        # The long prompt fills a step's budget (64 tokens) and ran beside decodes.
        assert report.long_prompt_tokens == 64 and report.mixed_steps >= 1
        assert report.max_decode_batch >= len(SAMPLING_VARIANTS)
        assert list(engine.startup_phases)[:3] == [
            "model load", "KV cache allocation and graph capture", "warm-up"]
        assert engine.startup_phases["total"] >= engine.startup_phases["warm-up"] > 0
        assert "warm-up" in describe_phases(engine.startup_phases)
        assert not engine.has_unfinished_requests()
        assert engine.scheduler.kv_cache_usage == 0.0
        snapshot = engine.scheduler.make_stats()
        assert snapshot.prefix_cache_queries == 0 and snapshot.num_running_reqs == 0
        assert _answers(llm) == expected
    finally:
        llm.shutdown()


def test_compile_caches_persist_under_the_cache_root(tmp_path, monkeypatch):
    for var in COMPILE_CACHE_DIRS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "mine"))      # the user's wins
    used = persist_compile_caches(str(tmp_path / "root"))
    assert used == {"TRITON_CACHE_DIR": str(tmp_path / "mine"),
                    "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "root" / "inductor")}
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == used["TORCHINDUCTOR_CACHE_DIR"]
    assert os.path.isdir(used["TORCHINDUCTOR_CACHE_DIR"])
