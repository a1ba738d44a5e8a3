"""``CudaModelRunner``'s async-scheduling path, driven on any device (the CPU here, the GPU on
the GPU machine): a step launched before the previous one is collected takes the tokens in
flight from the previous step's sampled ids, and the outputs equal the synchronous engine's."""

from __future__ import annotations

import pytest
import torch
from gpu_models import save_case


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> str:
    return save_case("llama", str(tmp_path_factory.mktemp("async_runner")))[0]


def make_llm(folder: str, cuda_runner: bool, async_scheduling: bool):
    """An LLM on the selected platform; with ``cuda_runner`` on a machine without CUDA the
    CPU worker's runner is replaced by a ``CudaModelRunner`` over the same model and cache."""
    from vllm_core import LLM
    from vllm_core_cuda.model_runner import CudaModelRunner

    llm = LLM(folder, dtype="float32", max_model_len=128, num_gpu_blocks_override=64,
              max_num_seqs=8, max_num_batched_tokens=64, seed=0, enforce_eager=True,
              attention_backend=None if torch.cuda.is_available() else "reference",
              async_scheduling=async_scheduling)
    worker = llm.llm_engine.executor.worker
    if cuda_runner and not isinstance(worker.runner, CudaModelRunner):
        old = worker.runner
        runner = CudaModelRunner(old.config, old.device, old.attn_backend, old.ops)
        runner.model, runner.kv_caches = old.model, old.kv_caches
        worker.runner = runner
        worker.execute_model_async = runner.execute_model_async
    return llm


def outputs(llm, prompts, params):
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    return [[(c.token_ids, c.finish_reason, [sorted(lp) for lp in (c.logprobs or [])])
             for c in o.outputs] for o in outs]


def test_async_runner_feeds_tokens_in_flight_and_matches_sync(folder):
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
    reference = outputs(make_llm(folder, cuda_runner=False, async_scheduling=False),
                        prompts, params)
    sync = make_llm(folder, cuda_runner=True, async_scheduling=False)
    assert outputs(sync, prompts, params) == reference
    assert sync.llm_engine.executor.worker.runner.num_fed_rows == 0

    llm = make_llm(folder, cuda_runner=True, async_scheduling=True)
    assert outputs(llm, prompts, params) == reference
    runner = llm.llm_engine.executor.worker.runner
    assert runner.num_fed_rows > 0                  # tokens came from the step in flight
    assert runner._in_flight is None and not llm.llm_engine.has_unfinished_requests()
    # a second round on the same engine: slots were recycled correctly
    assert outputs(llm, prompts[::-1], params[::-1]) == reference[::-1]
