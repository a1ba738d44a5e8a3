"""Qwen2.5-VL on an NVIDIA GPU (the selected attention backend, CUDA graphs on for decode):
greedy tokens of a batch mixing text-only and image requests (one image, two images of
different sizes) equal HF transformers' ``generate`` on the same tiny random fp32 weights, with
prefix caching on and chunked prefill splitting image runs. Marked ``gpu``."""

from __future__ import annotations

import gc

import numpy as np
import pytest
import torch
from gpu_models import GPU_ONLY

from vllm_core.multimodal.testing import (
    PLACEHOLDER,
    hf_mm_kwargs,
    random_image,
    random_qwen2_5_vl,
    save_tiny_qwen2_5_vl,
)

pytestmark = GPU_ONLY
MAX_TOKENS = 12
# head_dim 64 (mrope_section sums to 32): a size every GPU backend serves
TEXT = dict(hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                             "mrope_section": [8, 12, 12]})
VISION = dict(out_hidden_size=256)


def requests() -> list[dict]:
    a, b, c = random_image(140, 84, 1), random_image(56, 112, 2), random_image(224, 168, 3)
    return [
        {"prompt": f"t5 t6 {PLACEHOLDER} t7 t8 t9", "multi_modal_data": {"image": a}},
        {"prompt": "t11 t12 t13 t14 t15 t16"},
        {"prompt": f"t20 {PLACEHOLDER} t21 {PLACEHOLDER} t22 t23",
         "multi_modal_data": {"image": [b, c]}},
        {"prompt": f"t5 t6 {PLACEHOLDER} t7 t8 t30", "multi_modal_data": {"image": a}},
    ]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    # HF's patch embedding is a Conv3d: keep cuDNN off TF32 so both sides compute in fp32
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    hf = random_qwen2_5_vl(TEXT, VISION, seed=5)
    path = str(tmp_path_factory.mktemp("gpu_qwen2_5_vl"))
    save_tiny_qwen2_5_vl(path, hf)
    return path, hf.cuda()


def hf_tokens(path: str, hf, req: dict) -> list[int]:
    from transformers import AutoTokenizer

    from vllm_core.model_executor.loader import load_arch_config
    from vllm_core.multimodal.processing import processor_for

    ids = AutoTokenizer.from_pretrained(path)(req["prompt"]).input_ids
    kwargs: dict = {}
    if "multi_modal_data" in req:
        ids, feats = processor_for(load_arch_config(path), path).process(
            ids, req["multi_modal_data"])
        kwargs["pixel_values"] = torch.from_numpy(
            np.concatenate([it.pixel_values for it in feats.items])).cuda()
        kwargs["image_grid_thw"] = torch.tensor([it.grid_thw for it in feats.items]).cuda()
    input_ids = torch.tensor([ids], device="cuda")
    with torch.no_grad():
        out = hf.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                          max_new_tokens=MAX_TOKENS, do_sample=False,
                          **hf_mm_kwargs(hf, input_ids), **kwargs)
    return out[0, len(ids):].tolist()


@pytest.mark.parametrize("engine_kwargs", [
    dict(enable_prefix_caching=False),
    dict(enable_prefix_caching=True, enable_chunked_prefill=True, max_num_batched_tokens=64),
], ids=["plain", "prefix-cache+chunked"])
def test_greedy_tokens_match_hf(tiny, engine_kwargs):
    from vllm_core import LLM, SamplingParams

    path, hf = tiny
    expected = [hf_tokens(path, hf, r) for r in requests()]
    llm = LLM(path, dtype="float32", max_model_len=1024, num_gpu_blocks_override=512,
              max_num_seqs=8, seed=0, **engine_kwargs)
    try:
        sp = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
        outs = llm.generate(requests(), sp, use_tqdm=False)
        assert [list(o.outputs[0].token_ids) for o in outs] == expected
    finally:
        llm.llm_engine.shutdown()
        del llm
        gc.collect()
        torch.cuda.empty_cache()
