"""Greedy outputs with tensor and pipeline parallelism (mp executor, gloo, 2 processes; 4 for
TP=2 x PP=2) equal
the single-rank engine's, on Llama / Qwen2 / Qwen3 shapes: GQA, one KV head replicated over the
TP ranks, q/k/v biases, q/k norms, tied and untied LM heads, an odd vocabulary, chunked
prefill, logprobs and prompt logprobs (gathered logits); shutdown leaves no process or
shared-memory segment behind."""

from __future__ import annotations

import os

import pytest
import torch
from dist_utils import alive, build_model_folder, make_llm

CASES = [("llama", 2, 1, True), ("llama", 1, 2, False), ("qwen2", 2, 1, False),
         ("qwen3", 1, 2, True), ("qwen3", 2, 1, False), ("llama", 2, 2, False)]
_REFERENCE: dict[str, list] = {}


def run(llm) -> list:
    from vllm_core import SamplingParams

    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(1, 500, (n,), generator=gen).tolist() for n in (5, 70, 17, 3)]
    params = [SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True, logprobs=2),
              SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True),
              SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True,
                             prompt_logprobs=1),
              SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)]
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    result = []
    for o in outs:
        c = o.outputs[0]
        result.append((list(c.token_ids),
                       [{t: lp.logprob for t, lp in d.items()} for d in (c.logprobs or [])],
                       [None if d is None else {t: lp.logprob for t, lp in d.items()}
                        for d in (o.prompt_logprobs or [])]))
    return result


def reference(model_root: str, name: str) -> list:
    if name not in _REFERENCE:
        folder = os.path.join(model_root, name)
        if not os.path.isdir(folder):
            build_model_folder(model_root, name)
        llm = make_llm(folder)
        _REFERENCE[name] = run(llm)
        llm.llm_engine.shutdown()
    return _REFERENCE[name]


def assert_same(got: list, want: list) -> None:
    for (ids, lps, plps), (ref_ids, ref_lps, ref_plps) in zip(got, want, strict=True):
        assert ids == ref_ids
        for d, ref in zip(lps + plps, ref_lps + ref_plps, strict=True):
            assert (d is None) == (ref is None)
            if d is not None:
                assert d.keys() == ref.keys()
                for t in d:
                    assert d[t] == pytest.approx(ref[t], abs=1e-4)


@pytest.mark.parametrize("name,tp,pp,async_scheduling", CASES,
                         ids=[f"{n}-tp{t}-pp{p}{'-async' if a else ''}" for n, t, p, a in CASES])
def test_parallel_greedy_matches_single_rank(model_root, name, tp, pp, async_scheduling):
    want = reference(model_root, name)
    llm = make_llm(os.path.join(model_root, name), tp=tp, pp=pp,
                   async_scheduling=async_scheduling)
    executor = llm.llm_engine.executor
    assert type(executor).__name__ == "MultiprocExecutor" and executor.world_size == tp * pp
    pids, shm_name = executor.pids, executor.ring.shm.name
    assert os.path.exists(f"/dev/shm/{shm_name}")
    try:
        assert_same(run(llm), want)
    finally:
        llm.llm_engine.shutdown()
    for pid in pids:
        assert not alive(pid), f"worker {pid} outlived shutdown"
    assert not os.path.exists(f"/dev/shm/{shm_name}")
