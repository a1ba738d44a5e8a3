"""Data parallelism on two GPUs: each engine core sees its own GPU (``CUDA_VISIBLE_DEVICES``
set by ``CudaPlatform.data_parallel_env``), greedy tokens equal the one-GPU engine's with both
cores serving, and a layout needing more GPUs than there are is refused before anything
starts.

Marked ``gpu``; skipped with the reason where torch sees fewer than two CUDA devices.
"""

from __future__ import annotations

import pytest
import torch
from gpu_models import random_prompts, save_case

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(torch.cuda.device_count() < 2,
                       reason="needs two NVIDIA GPUs visible to torch (the two-H200 job)"),
]


def make_llm(folder: str, **kwargs):
    from vllm_core import LLM

    return LLM(folder, dtype="float32", max_model_len=256, num_gpu_blocks_override=512,
               max_num_seqs=32, seed=0, gpu_memory_utilization=0.3, **kwargs)


def greedy(llm, prompts: list[list[int]]) -> list[list[int]]:
    from vllm_core import SamplingParams

    sp = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], sp, use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outs]


def _environ(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/environ", "rb") as f:
        pairs = [e.split(b"=", 1) for e in f.read().split(b"\0") if b"=" in e]
    return {k.decode(): v.decode() for k, v in pairs}


def test_dp2_one_gpu_per_core_matches_one_gpu(tmp_path):
    folder, model = save_case("llama", str(tmp_path))
    prompts = random_prompts([5, 17, 33, 64, 9, 120, 3, 40, 11, 26],
                             model.config.vocab_size, seed=4)
    one = make_llm(folder)
    try:
        want = greedy(one, prompts)
    finally:
        one.shutdown()
    llm = make_llm(folder, data_parallel_size=2)
    try:
        client = llm.llm_engine.core
        devices = [_environ(pid)["CUDA_VISIBLE_DEVICES"] for pid in client.core_pids]
        assert len(set(devices)) == 2 and all("," not in d for d in devices), devices
        assert greedy(llm, prompts) == want
        assert min(client.router.total_assigned) >= 4, client.router.total_assigned
    finally:
        llm.shutdown()


def test_more_gpus_than_visible_are_refused(tmp_path):
    folder, _ = save_case("llama", str(tmp_path))
    n = torch.cuda.device_count()
    with pytest.raises(ValueError, match=f"core {n // 2} needs devices"):
        make_llm(folder, tensor_parallel_size=2, data_parallel_size=n // 2 + 1)
