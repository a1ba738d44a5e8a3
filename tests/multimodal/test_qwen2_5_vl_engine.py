"""Qwen2.5-VL through the whole engine on the CPU plugin (tiny random weights, fp32): greedy
tokens equal HF ``generate`` with one image, with two images of different sizes, and in a batch
mixing text-only and image requests; the same tokens with prefix caching on/off and with
chunked prefill splitting an image's placeholder run under a small token budget (and async
scheduling); images
shared between requests are encoded once; a text-only model refuses images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vllm_core.multimodal.testing import (
    PLACEHOLDER,
    hf_mm_kwargs,
    random_image,
    random_qwen2_5_vl,
    save_tiny_qwen2_5_vl,
)

MAX_TOKENS = 8


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    hf = random_qwen2_5_vl(seed=7)
    path = str(tmp_path_factory.mktemp("qwen2_5_vl_engine"))
    save_tiny_qwen2_5_vl(path, hf)
    return path, hf


def requests() -> list[dict]:
    img_a, img_b, img_c = (random_image(140, 84, 1), random_image(56, 112, 2),
                           random_image(84, 84, 3))
    return [
        {"prompt": f"t5 t6 {PLACEHOLDER} t7 t8 t9", "multi_modal_data": {"image": img_a}},
        {"prompt": "t11 t12 t13 t14 t15 t16"},
        {"prompt": f"t20 {PLACEHOLDER} t21 {PLACEHOLDER} t22 t23",
         "multi_modal_data": {"image": [img_b, img_c]}},
        {"prompt": f"t5 t6 {PLACEHOLDER} t7 t8 t30", "multi_modal_data": {"image": img_a}},
        {"prompt": "t40 t41 t42"},
    ]


def hf_tokens(path: str, hf, req: dict) -> list[int]:
    from vllm_core.config import ModelConfig
    from vllm_core.engine.arg_utils import EngineArgs
    from vllm_core.engine.input_processor import InputProcessor

    del ModelConfig, InputProcessor, EngineArgs
    from transformers import AutoTokenizer

    from vllm_core.model_executor.loader import load_arch_config
    from vllm_core.multimodal.processing import processor_for

    tok = AutoTokenizer.from_pretrained(path)
    ids = tok(req["prompt"]).input_ids
    kwargs: dict = {}
    if "multi_modal_data" in req:
        ids, feats = processor_for(load_arch_config(path), path).process(
            ids, req["multi_modal_data"])
        kwargs["pixel_values"] = torch.from_numpy(
            np.concatenate([it.pixel_values for it in feats.items]))
        kwargs["image_grid_thw"] = torch.tensor([it.grid_thw for it in feats.items])
    input_ids = torch.tensor([ids])
    kwargs.update(hf_mm_kwargs(hf, input_ids))
    out = hf.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                      max_new_tokens=MAX_TOKENS, do_sample=False, **kwargs)
    return out[0, len(ids):].tolist()


def run(path: str, reqs: list[dict], **kwargs) -> tuple[list[list[int]], object]:
    from vllm_core import LLM, SamplingParams

    kwargs.setdefault("num_gpu_blocks_override", 256)
    llm = LLM(path, dtype="float32", max_model_len=512, enforce_eager=True, **kwargs)
    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
    outs = llm.generate(reqs, params, use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outs], llm


@pytest.fixture(scope="module")
def expected(tiny) -> list[list[int]]:
    path, hf = tiny
    return [hf_tokens(path, hf, r) for r in requests()]


def test_batch_matches_hf_generate(tiny, expected):
    tokens, _ = run(tiny[0], requests(), enable_prefix_caching=False)
    assert tokens == expected


def test_prefix_caching_chunking_async(tiny, expected):
    path, _ = tiny
    # a 16-token budget cuts request 0's first chunk inside its 15-token image run
    # (async scheduling: the CUDA default, a step in flight while the next is prepared)
    tokens, llm = run(path, requests(), enable_prefix_caching=True,
                      enable_chunked_prefill=True, max_num_batched_tokens=16, max_num_seqs=3,
                      async_scheduling=True)
    assert tokens == expected
    runner = llm.llm_engine.executor.worker.runner
    # image a is shared by requests 0 and 3
    assert runner.mm.num_encoded <= 4
    from vllm_core import SamplingParams

    again = llm.generate(requests()[:1], SamplingParams(
        temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True), use_tqdm=False)
    assert list(again[0].outputs[0].token_ids) == expected[0]
    assert again[0].num_cached_tokens >= 16          # its image blocks came from the cache


def test_preemption_recomputes_images(tiny, expected):
    # 7 usable blocks of 8 tokens for five requests of 3-25 prompt tokens: running requests get preempted and
    # recomputed, images included (their encoder outputs reused or encoded again)
    from vllm_core import LLM, SamplingParams

    class Preemptions:
        count = 0

        def record(self, stats, _iteration) -> None:
            if stats is not None:
                self.count += stats.num_preemptions

    llm = LLM(tiny[0], dtype="float32", max_model_len=48, enforce_eager=True,
              enable_prefix_caching=False, block_size=8, num_gpu_blocks_override=8,
              max_num_batched_tokens=48)
    seen = Preemptions()
    llm.llm_engine.stat_loggers.append(seen)
    outs = llm.generate(requests(), SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS,
                                                   ignore_eos=True), use_tqdm=False)
    assert [list(o.outputs[0].token_ids) for o in outs] == expected
    assert seen.count > 0


def test_different_image_same_tokens_not_shared_by_prefix_cache(tiny):
    path, hf = tiny
    a = {"prompt": f"t5 {PLACEHOLDER} t7", "multi_modal_data": {"image": random_image(56, 56, 11)}}
    b = {"prompt": f"t5 {PLACEHOLDER} t7", "multi_modal_data": {"image": random_image(56, 56, 12)}}
    tokens, llm = run(path, [a], enable_prefix_caching=True)
    from vllm_core import SamplingParams

    out_b = llm.generate([b], SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS,
                                             ignore_eos=True), use_tqdm=False)
    assert list(out_b[0].outputs[0].token_ids) == hf_tokens(path, hf, b)
    assert tokens[0] == hf_tokens(path, hf, a)


def test_text_model_refuses_images(tmp_path):
    from vllm_core import LLM
    from vllm_core.model_executor.testing import random_hf_causal_lm, write_wordlevel_tokenizer

    hf = random_hf_causal_lm("llama", dict(vocab_size=64, hidden_size=32, intermediate_size=64,
                                           num_hidden_layers=1, num_attention_heads=2,
                                           max_position_embeddings=128))
    hf.save_pretrained(str(tmp_path))
    write_wordlevel_tokenizer(str(tmp_path), 64)
    llm = LLM(str(tmp_path), dtype="float32", max_model_len=64, enforce_eager=True)
    with pytest.raises(ValueError, match="'LlamaForCausalLM' does not accept images"):
        llm.generate({"prompt": "t1 t2", "multi_modal_data": {"image": random_image(28, 28)}},
                     use_tqdm=False)
    out = llm.generate("t1 t2", use_tqdm=False)       # still serving
    assert out[0].outputs[0].token_ids


def test_engine_core_process_carries_images(tiny, expected):
    """The CUDA default runs the engine core in its own process: images (pixel values, M-RoPE
    positions) cross the ZeroMQ channel and give the in-process tokens."""
    tokens, llm = run(tiny[0], requests(), enable_prefix_caching=False,
                      engine_core_process=True)
    try:
        assert tokens == expected
    finally:
        llm.llm_engine.shutdown()
