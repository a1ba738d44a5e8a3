"""The engine core in its own process (``LLM(engine_core_process=True)``): the same tokens as
the in-process engine on a tiny random-weight model (greedy, seeded sampling with n > 1, stop
strings found by the front end, logprobs), the wire messages round-trip, and a core that
fails to start or dies is reported, never waited on forever."""

from __future__ import annotations

import os
import signal
import time

import pytest

from vllm_core.engine import core_messages as m
from vllm_core.engine.errors import EngineDeadError
from vllm_core.engine.stats import SchedulerStats
from vllm_core.messages import EngineCoreOutput, Logprobs
from vllm_core.model_executor.testing import random_hf_causal_lm, write_wordlevel_tokenizer
from vllm_core.sampling.params import SamplingParams
from vllm_core.structured_output.params import StructuredOutputsParams

VOCAB = 211


def build_tiny_llama(folder: str, max_positions: int = 512) -> str:
    config = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
                  max_position_embeddings=max_positions, bos_token_id=None, eos_token_id=None,
                  pad_token_id=None)
    random_hf_causal_lm("llama", config, seed=3, weight_scale=0.08).save_pretrained(folder)
    write_wordlevel_tokenizer(folder, VOCAB)
    return folder


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    return build_tiny_llama(str(tmp_path_factory.mktemp("tiny-llama")))


def _llm(folder: str, engine_core_process: bool):
    from vllm_core import LLM

    return LLM(folder, dtype="float32", max_model_len=128, num_gpu_blocks_override=64,
               max_num_seqs=8, max_num_batched_tokens=64, seed=0,
               engine_core_process=engine_core_process)


def _run(llm) -> list:
    prompts = [" ".join(f"t{(7 * i + j) % VOCAB}" for j in range(5 + i)) for i in range(4)]
    greedy = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True, logprobs=3)
    seeded = SamplingParams(temperature=0.9, top_k=20, seed=11, n=2, max_tokens=9,
                            ignore_eos=True)
    outs = llm.generate(prompts, greedy, use_tqdm=False)
    result = [(o.outputs[0].token_ids,
               [[(t, v.logprob, v.decoded_token) for t, v in lp.items()]
                for lp in o.outputs[0].logprobs])
              for o in outs]
    result += [[c.token_ids for c in o.outputs]
               for o in llm.generate(prompts, seeded, use_tqdm=False)]
    # A stop string: the third greedy token's text, found by the front end's detokenizer.
    stop_word = llm.get_tokenizer().decode([outs[0].outputs[0].token_ids[2]]).strip()
    stopped = llm.generate(prompts[:1], SamplingParams(temperature=0.0, max_tokens=12,
                                                       ignore_eos=True, stop=[stop_word]),
                           use_tqdm=False)[0].outputs[0]
    result.append((stopped.text, stopped.finish_reason, stopped.stop_reason))
    return result


def _rounded(result: list) -> list:
    """``result`` without the logprob values (compared with a tolerance)."""
    head = [(ids, [[(t, text) for t, _, text in pos] for pos in lps]) for ids, lps in result[:4]]
    return head + result[4:]


def test_core_process_matches_in_process(tiny_model):
    local = _llm(tiny_model, engine_core_process=False)
    expected = _run(local)
    local.shutdown()
    import torch

    torch.set_num_threads(2)
    remote = _llm(tiny_model, engine_core_process=True)
    try:
        assert not remote.llm_engine.in_process
        assert torch.get_num_threads() == 1       # the front end leaves the cores to the core
        got = _run(remote)
    finally:
        remote.shutdown()
    assert torch.get_num_threads() == 2           # given back at shutdown
    # Tokens and texts equal; logprobs within 1e-4 (the core process may run another
    # number of torch threads, which changes float summation order, not the tokens).
    assert _rounded(got) == _rounded(expected)
    for (_, lps_got), (_, lps_exp) in zip(got[:4], expected[:4], strict=True):
        for pos_got, pos_exp in zip(lps_got, lps_exp, strict=True):
            assert [v for _, v, _ in pos_got] == pytest.approx([v for _, v, _ in pos_exp],
                                                               abs=1e-4)
    assert expected[-1][1] == "stop"


def test_dead_core_raises_instead_of_hanging(tiny_model):
    llm = _llm(tiny_model, engine_core_process=True)
    try:
        client = llm.llm_engine.core
        os.kill(client.process.pid, signal.SIGKILL)
        t0 = time.monotonic()
        with pytest.raises(EngineDeadError, match="exited with code -9"):
            llm.generate(["t1 t2 t3"], SamplingParams(max_tokens=50, ignore_eos=True),
                         use_tqdm=False)
        assert time.monotonic() - t0 < 10
    finally:
        llm.shutdown()


def test_core_start_failure_is_reported(tiny_model):
    from vllm_core import LLM

    with pytest.raises(RuntimeError, match="engine core failed to start.*max_model_len"):
        LLM(tiny_model, dtype="float32", max_model_len=128, num_gpu_blocks_override=2,
            engine_core_process=True)


def test_messages_round_trip():
    params = SamplingParams(temperature=0.5, top_k=-1, stop=["x"], logit_bias={3: 1.5},
                            seed=4, logprobs=2, eos_token_ids=[0],
                            structured_outputs=StructuredOutputsParams(json={"type": "object"}))
    enc = m.encoder()
    add = m.AddRequest(1, "r", [1, 2, 3], params, 12.5, priority=2, parent_id="p")
    back = m.to_core_decoder().decode(enc.encode(add))
    assert back == add and isinstance(back.sampling_params, SamplingParams)
    step = m.StepOutputs([EngineCoreOutput("r", [5], finish_reason="stop", stop_reason="x",
                                           new_logprobs=[Logprobs([5], [-0.1], [1])])],
                         m.StepStats(SchedulerStats(num_running_reqs=1), 7, 0.01),
                         SchedulerStats(kv_cache_usage=0.5))
    assert m.from_core_decoder().decode(enc.encode(step)) == step


def test_image_features_round_trip():
    import numpy as np

    from vllm_core.multimodal.inputs import ImageItem, MultiModalFeatures

    rng = np.random.default_rng(0)
    feats = MultiModalFeatures(
        [ImageItem("ab", 3, 4, rng.standard_normal((16, 12)).astype(np.float32), (1, 4, 4)),
         ImageItem("cd", 9, 1, rng.standard_normal((4, 12)).astype(np.float32), (1, 2, 2))],
        rng.integers(0, 50, size=(3, 12)), mrope_delta=-5)
    add = m.AddRequest(0, "r", [1] * 12, SamplingParams(), 1.0, mm=m.mm_to_wire(feats))
    back = m.mm_from_wire(m.to_core_decoder().decode(m.encoder().encode(add)).mm)
    assert [(i.hash, i.offset, i.length, i.grid_thw) for i in back.items] == \
        [(i.hash, i.offset, i.length, i.grid_thw) for i in feats.items]
    for a, b in zip(back.items, feats.items):
        assert a.pixel_values.dtype == b.pixel_values.dtype
        np.testing.assert_array_equal(a.pixel_values, b.pixel_values)
    np.testing.assert_array_equal(back.mrope_positions, feats.mrope_positions)
    assert back.mrope_delta == -5 and m.mm_to_wire(None) is None
