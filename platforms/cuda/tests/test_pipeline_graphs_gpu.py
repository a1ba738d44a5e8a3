"""CUDA graphs per pipeline stage on two real GPUs: PP=2 with decode graphs on every stage
(one step at a time, and micro-batched) gives TP=1's greedy tokens, and both stages replay
graphs. Marked ``gpu``; skipped, with the reason, where fewer than two GPUs are visible. The
device-independent parts run on the CPU (``test_stage_graphs.py``)."""

from __future__ import annotations

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2,
                       reason="needs two NVIDIA GPUs visible to torch (the two-GPU host)"),
]


def _generate(folder: str, prompts: list[list[int]], **kwargs):
    from vllm_core import LLM, SamplingParams

    sp = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True, logprobs=5)
    llm = LLM(folder, dtype="float32", max_model_len=256, num_gpu_blocks_override=512,
              max_num_seqs=32, seed=0, **kwargs)
    try:
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts], sp, use_tqdm=False)
        result = [(list(o.outputs[0].token_ids), [set(step) for step in o.outputs[0].logprobs])
                  for o in outs]
        reports = (llm.llm_engine.executor.collective_rpc("graph_report")
                   if kwargs.get("pipeline_parallel_size", 1) > 1 else None)
    finally:
        llm.llm_engine.shutdown()
    return result, reports


def _assert_parity(ours, ref):
    for (a_ids, a_tops), (b_ids, b_tops) in zip(ours, ref, strict=True):
        for i, (a, b) in enumerate(zip(a_ids, b_ids, strict=True)):
            if a != b:         # a near-tie flipped: each side's token in the other's top-5
                assert a in b_tops[i] and b in a_tops[i], (i, a_ids, b_ids)
                break


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The model folder, the prompts and TP=1's greedy tokens (one engine for both tests)."""
    from gpu_models import random_prompts, save_case

    folder, hf = save_case("llama", str(tmp_path_factory.mktemp("pp_graphs")))   # 2 layers
    prompts = random_prompts([5, 17, 33, 64, 9, 120, 3, 40, 7, 11, 26, 2], hf.config.vocab_size,
                             seed=2)
    return folder, prompts, _generate(folder, prompts)[0]


@pytest.mark.parametrize("micro_batching", [False, True], ids=["one-step", "micro-batched"])
def test_pp2_stage_graphs_greedy_parity_with_tp1(reference, micro_batching):
    folder, prompts, ref = reference
    ours, reports = _generate(folder, prompts, pipeline_parallel_size=2,
                              pipeline_micro_batching=micro_batching)
    print(reports)
    assert len(reports) == 2
    for rep in reports:
        assert rep["graph_sizes"] and rep["graph_steps"] > 0, rep
    if micro_batching:                  # sizes stop at the half batch: ceil(32 / 2) = 16
        assert all(rep["graph_sizes"][-1] == 16 for rep in reports), reports
    _assert_parity(ours, ref)
