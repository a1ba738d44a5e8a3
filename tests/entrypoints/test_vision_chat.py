"""The openai client sends images (``data:`` URLs) to a real server running a tiny random
Qwen2.5-VL checkpoint and gets the answer HF transformers gives on the same weights.

The checkpoint is built here with transformers (``Qwen2_5_VLForConditionalGeneration(config)
.save_pretrained``, a word-level tokenizer whose vision special tokens have the config's ids and
that carries Qwen2.5-VL's real chat template, and the image processor's config). The reference
runs HF ``generate`` greedily on the same rendered prompt with each ``<|image_pad|>`` expanded
to the image's token count, as Qwen2.5-VL's processor does.
"""

from __future__ import annotations

import base64
import inspect
import io

import numpy as np
import openai
import pytest
import torch
from PIL import Image
from server_utils import start_server
from vl_templates import QWEN2_5_VL_TEMPLATE

IMAGE, VIDEO, V_START, V_END, IM_START, IM_END = 500, 501, 502, 503, 504, 505
SPECIAL = {IMAGE: "<|image_pad|>", VIDEO: "<|video_pad|>", V_START: "<|vision_start|>",
           V_END: "<|vision_end|>", IM_START: "<|im_start|>", IM_END: "<|im_end|>"}
MAX_TOKENS = 5
MERGE = 2                       # spatial_merge_size: one token per 2x2 patches


def tiny_checkpoint(folder: str) -> tuple[torch.nn.Module, object, object]:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import (
        PreTrainedTokenizerFast,
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2VLImageProcessor,
    )

    cfg = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=512, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=4096, rms_norm_eps=1e-6,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                          "mrope_section": [2, 3, 3]},
                         bos_token_id=None, eos_token_id=None, pad_token_id=None),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2,
                           out_hidden_size=64, patch_size=14, spatial_merge_size=MERGE,
                           temporal_patch_size=2, window_size=56, fullatt_block_indexes=[1]),
        image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=V_START,
        vision_end_token_id=V_END)
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(cfg).to(torch.float32).eval()
    model.save_pretrained(folder)
    vocab = {SPECIAL.get(i, f"t{i}"): i for i in range(512)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    tok.add_special_tokens([AddedToken(s, special=True) for s in SPECIAL.values()])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="t0",
                                        eos_token="<|im_end|>")
    tokenizer.chat_template = QWEN2_5_VL_TEMPLATE
    tokenizer.save_pretrained(folder)
    processor = Qwen2VLImageProcessor(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 64)
    processor.save_pretrained(folder)
    return model, tokenizer, processor


def random_image(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def data_url(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")            # lossless: the server decodes the same pixels
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def hf_answer(model, tokenizer, processor, hf_messages, images) -> tuple[list[int], int]:
    """HF greedy tokens and the expanded prompt length."""
    text = tokenizer.apply_chat_template(hf_messages, tokenize=False,
                                         add_generation_prompt=True)
    pixels = processor(images=images, return_tensors="pt")
    grids = pixels["image_grid_thw"]
    parts = text.split(SPECIAL[IMAGE])
    assert len(parts) == len(images) + 1
    expanded = parts[0]
    for grid, rest in zip(grids, parts[1:]):
        expanded += SPECIAL[IMAGE] * (int(grid.prod()) // MERGE ** 2) + rest
    ids = torch.tensor([tokenizer(expanded, add_special_tokens=False).input_ids])
    extra = {}
    if "mm_token_type_ids" in inspect.signature(model.forward).parameters:   # newer transformers
        extra["mm_token_type_ids"] = (ids == IMAGE).int()
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                         pixel_values=pixels["pixel_values"], image_grid_thw=grids,
                         max_new_tokens=MAX_TOKENS, do_sample=False, **extra)
    return out[0, ids.shape[1]:].tolist(), ids.shape[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("vision-chat")
    folder = str(root / "tiny-qwen2_5_vl")
    model, tokenizer, processor = tiny_checkpoint(folder)
    srv = start_server("real", root, api_key=None,
                       extra=[folder, "--served-model-name", "tiny-vl", "--dtype", "float32",
                              "--limit-mm-per-prompt", '{"image": 2}'])
    client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="none", max_retries=0,
                           timeout=300)
    yield client, (model, tokenizer, processor)
    srv.stop()


@pytest.mark.parametrize("sizes", [[(112, 84)], [(140, 84), (56, 112)]],
                         ids=["one-image", "two-images"])
def test_openai_client_image_answer_matches_hf(setup, sizes):
    client, (model, tokenizer, processor) = setup
    images = [random_image(w, h, seed=i) for i, (w, h) in enumerate(sizes)]
    content = [{"type": "text", "text": "t5 t6"}]
    hf_content = [{"type": "text", "text": "t5 t6"}]
    for image in images:
        content.append({"type": "image_url", "image_url": {"url": data_url(image)}})
        hf_content.append({"type": "image"})
    content.append({"type": "text", "text": "t7"})
    hf_content.append({"type": "text", "text": "t7"})
    expected, prompt_len = hf_answer(model, tokenizer, processor,
                                     [{"role": "user", "content": hf_content}], images)
    resp = client.chat.completions.create(
        model="tiny-vl", messages=[{"role": "user", "content": content}],
        max_tokens=MAX_TOKENS, temperature=0, logprobs=True,
        extra_body={"ignore_eos": True})
    got = [entry.token for entry in resp.choices[0].logprobs.content]
    assert got == [tokenizer.decode([t]) for t in expected]
    assert resp.usage.prompt_tokens == prompt_len          # placeholders expanded
    assert resp.usage.completion_tokens == MAX_TOKENS


def test_text_only_request_to_the_vision_model(setup):
    client, _ = setup
    resp = client.chat.completions.create(
        model="tiny-vl", messages=[{"role": "user", "content": "t5 t6 t7"}], max_tokens=3,
        temperature=0, extra_body={"ignore_eos": True})
    assert resp.usage.completion_tokens == 3


def test_bad_image_is_a_400_and_the_server_keeps_serving(setup):
    client, _ = setup
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="tiny-vl", max_tokens=2, messages=[{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}])
    assert "messages[0].content[0].image_url" in str(info.value)
    resp = client.chat.completions.create(
        model="tiny-vl", max_tokens=2, messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": data_url(random_image(56, 56, 9))}}]}])
    assert resp.usage.completion_tokens >= 1


def test_llm_chat_with_images_matches_hf(tmp_path_factory):
    """``LLM.chat`` with an ``image_pil`` part and a ``data:`` URL part (two sizes) gives HF's
    tokens; ``LLM.generate`` with the contract's dict gives the same."""
    from vllm_core import LLM, SamplingParams

    folder = str(tmp_path_factory.mktemp("vision-llm") / "tiny")
    model, tokenizer, processor = tiny_checkpoint(folder)
    images = [random_image(84, 56, seed=3), random_image(56, 84, seed=4)]
    expected, _ = hf_answer(model, tokenizer, processor, [{"role": "user", "content": [
        {"type": "image"}, {"type": "text", "text": "t9"}, {"type": "image"}]}], images)
    llm = LLM(folder, dtype="float32", max_model_len=512, enforce_eager=True,
              limit_mm_per_prompt={"image": 2})
    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
    out = llm.chat([{"role": "user", "content": [
        {"type": "image_pil", "image_pil": images[0]}, {"type": "text", "text": "t9"},
        {"type": "image_url", "image_url": {"url": data_url(images[1])}}]}], params,
        use_tqdm=False)
    assert list(out[0].outputs[0].token_ids) == expected
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": [
        {"type": "image"}, {"type": "text", "text": "t9"}, {"type": "image"}]}],
        tokenize=False, add_generation_prompt=True)
    out = llm.generate({"prompt": prompt, "multi_modal_data": {"image": images}}, params,
                       use_tqdm=False)
    assert list(out[0].outputs[0].token_ids) == expected
    with pytest.raises(ValueError, match="3 images, more than the limit of 2"):
        llm.generate({"prompt": prompt, "multi_modal_data": {"image": [*images, images[0]]}},
                      params, use_tqdm=False)
