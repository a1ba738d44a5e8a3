"""Quantized models through the whole engine on an NVIDIA GPU (CUDA graphs on): greedy tokens
equal HF transformers running the same de-quantized weights; FP8 KV cache doubles the blocks.

Marked ``gpu``: ``nox -s tests-cuda`` runs them on a CUDA machine and reports them as NOT RUN
elsewhere.
"""

from __future__ import annotations

import gc

import pytest
import torch
from gpu_models import GPU_ONLY

from vllm_core.model_executor.quantization.testing import (
    hf_with_weights,
    tiny_llama,
    write_awq,
    write_gptq,
)
from vllm_core.model_executor.testing import write_wordlevel_tokenizer

pytestmark = GPU_ONLY

PROMPTS = [[3, 14, 15, 92, 65, 35], [8, 9, 7, 9], [50, 40, 30, 20, 10, 1, 2, 3, 4, 5, 6]]
MAX_TOKENS = 12
GPU_SHAPE = dict(hidden_size=128)       # head_dim 32: the Triton attention's smallest


def _generate(folder: str, **kwargs) -> tuple[list[list[int]], object]:
    from vllm_core import LLM, SamplingParams

    llm = LLM(folder, dtype="float32", max_model_len=64, num_gpu_blocks_override=64,
              max_num_seqs=8, **kwargs)
    sp = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
    outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], sp, use_tqdm=False)
    tokens = [list(o.outputs[0].token_ids) for o in outs]
    runner = llm.llm_engine.executor.worker.runner
    info = (runner.num_graph_steps, llm.llm_engine.config)
    llm.llm_engine.shutdown()
    del llm
    gc.collect()
    torch.cuda.empty_cache()
    return tokens, info


def _hf_greedy(model, prompt: list[int]) -> list[int]:
    out = model.generate(torch.tensor([prompt]), max_new_tokens=MAX_TOKENS,
                         min_new_tokens=MAX_TOKENS, do_sample=False)
    return out[0, len(prompt):].tolist()


@pytest.mark.parametrize("writer,kwargs", [
    (write_gptq, dict(bits=4, group_size=32, desc_act=True, sym=False)),
    (write_gptq, dict(bits=8, group_size=-1)),
    (write_awq, dict(group_size=32)),
])
def test_w4a16_engine_with_graphs_matches_hf(tmp_path, writer, kwargs):
    hf = tiny_llama(seed=4, **GPU_SHAPE)
    reference = writer(str(tmp_path), hf, **kwargs)
    write_wordlevel_tokenizer(str(tmp_path), hf.config.vocab_size)
    oracle = hf_with_weights(hf, reference)
    want = [_hf_greedy(oracle, p) for p in PROMPTS]
    got, (graph_steps, _) = _generate(str(tmp_path))
    assert got == want
    assert graph_steps > 0                     # decode steps replayed CUDA graphs


def _greedy_with_top5(folder: str, **kwargs) -> list[tuple[list[int], list[set[int]]]]:
    """Per prompt: the greedy tokens and, at each of them, the set of the 5 likeliest tokens."""
    from vllm_core import LLM, SamplingParams

    llm = LLM(folder, dtype="float32", max_model_len=64, num_gpu_blocks_override=64,
              max_num_seqs=8, **kwargs)
    sp = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True, logprobs=5)
    outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], sp, use_tqdm=False)
    got = [(list(o.outputs[0].token_ids), [set(lp) for lp in o.outputs[0].logprobs])
           for o in outs]
    llm.llm_engine.shutdown()
    del llm
    gc.collect()
    torch.cuda.empty_cache()
    return got


def test_fp8_kv_cache_doubles_blocks_and_keeps_greedy_tokens(tmp_path):
    """FP8 KV halves the bytes per block; greedy tokens follow the float cache's, and where
    they leave it, the fp8 run's token is among the float run's top 5 at that position (both
    runs share the context up to there). Leaving it at all is e4m3 rounding, not a cache bug:
    on this random model the float run's top-2 margin falls to 0.03-0.07 logits at the
    positions where the fp8 run turns, and the reference backend (torch's cast, CPU) leaves
    at the same positions with the same tokens as the Triton kernels
    (``tests/model_executor/test_fp8_kv_cache.py``,
    ``platforms/triton/tests/test_fp8_kv_kernels.py``)."""
    hf = tiny_llama(seed=6, **GPU_SHAPE)
    hf.save_pretrained(str(tmp_path))
    write_wordlevel_tokenizer(str(tmp_path), hf.config.vocab_size)
    from vllm_core import LLM

    sizes = {}
    for kv in ("auto", "fp8"):
        llm = LLM(str(tmp_path), dtype="bfloat16", max_model_len=64, gpu_memory_utilization=0.3,
                  kv_cache_dtype=kv, max_num_seqs=8)
        sizes[kv] = llm.llm_engine.executor.worker.runner.kv_cache_bytes_per_block()
        llm.llm_engine.shutdown()
        del llm
        gc.collect()
        torch.cuda.empty_cache()
    assert sizes["auto"] == 2 * sizes["fp8"]
    base = _greedy_with_top5(str(tmp_path))
    for kv in ("fp8", "fp8_e5m2"):
        fp8 = _greedy_with_top5(str(tmp_path), kv_cache_dtype=kv)
        for (want, top5), (got, _) in zip(base, fp8, strict=True):
            turn = next((i for i, (a, b) in enumerate(zip(want, got, strict=True)) if a != b),
                        None)
            if turn is not None:
                assert got[turn] in top5[turn], (kv, turn, want, got)


def test_w4a16_default_cuda_gemv_in_the_engine_follows_triton(tmp_path, monkeypatch, caplog):
    """A bf16 GPTQ 4-bit group-128 model (the shapes the CUDA tensor-core GEMV serves), CUDA
    graphs on: the default kernel (``VLLM_CUDA_WNA16_KERNEL`` unset: the CUDA GEMV, named in
    the start-up log) and ``triton`` give the same greedy tokens, or, where they first differ
    (bf16 rounding of two exact-up-to-reassociation kernels), the token is in the other's
    top 5."""
    import logging

    from vllm_core import LLM, SamplingParams

    hf = tiny_llama(seed=4, hidden_size=256, intermediate_size=512)
    write_gptq(str(tmp_path), hf, bits=4, group_size=128)
    write_wordlevel_tokenizer(str(tmp_path), hf.config.vocab_size)
    runs = {}
    for kernel in ("", "triton"):
        monkeypatch.setenv("VLLM_CUDA_WNA16_KERNEL", kernel)
        caplog.clear()
        with caplog.at_level(logging.INFO):
            llm = LLM(str(tmp_path), dtype="bfloat16", max_model_len=64,
                      num_gpu_blocks_override=64, max_num_seqs=8)
        sp = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True,
                            logprobs=5)
        outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], sp, use_tqdm=False)
        runs[kernel] = [(list(o.outputs[0].token_ids), [set(lp) for lp in o.outputs[0].logprobs])
                        for o in outs]
        assert llm.llm_engine.executor.worker.runner.num_graph_steps > 0
        assert ("cuda wna16 mma GEMV" in caplog.text) == (kernel == "")
        llm.llm_engine.shutdown()
        del llm
        gc.collect()
        torch.cuda.empty_cache()
    for (got, _), (want, want_top5) in zip(runs[""], runs["triton"], strict=True):
        turn = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), None)
        if turn is not None:
            assert got[turn] in want_top5[turn]
