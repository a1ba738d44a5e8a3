"""``LLM.generate`` / ``LLM.chat`` with images on the embedded text model (SmolLM2): refused
before anything is queued, with errors naming the model, the prompt and the key; the engine
keeps generating afterwards."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from vllm_core import SamplingParams

PARAMS = SamplingParams(temperature=0.0, max_tokens=3)


def png_url() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def test_generate_with_images_names_the_model(llm_fp32):
    img = Image.new("RGB", (8, 8))
    with pytest.raises(ValueError, match=r"prompts\[1\].*takes text only: architecture "
                                         r"'LlamaForCausalLM' does not accept images"):
        llm_fp32.generate(["Hello", {"prompt": "Describe", "multi_modal_data": {"image": img}}],
                          PARAMS, use_tqdm=False)
    assert llm_fp32.generate("Hello", PARAMS, use_tqdm=False)[0].outputs[0].token_ids


@pytest.mark.parametrize("prompt,exc,words", [
    ({"prompt": "hi", "multi_modal_data": {"image": "cat.png"}}, TypeError,
     "must be a PIL.Image.Image"),
    ({"prompt": "hi", "multi_modal_data": "cat.png"}, TypeError, "must be a dict"),
    ({"prompt": "hi", "image": Image.new("RGB", (2, 2))}, ValueError, "unknown keys"),
])
def test_generate_checks_the_dict_shape(llm_fp32, prompt, exc, words):
    with pytest.raises(exc, match=words):
        llm_fp32.generate(prompt, PARAMS, use_tqdm=False)


def test_chat_with_an_image_part_names_the_model(llm_fp32):
    messages = [{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": png_url()}}]}]
    with pytest.raises(ValueError, match="takes text only"):
        llm_fp32.chat(messages, PARAMS, use_tqdm=False)
    with pytest.raises(ValueError, match=r"messages\[0\].content\[0\].image_url.detail"):
        llm_fp32.chat([{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": png_url(), "detail": "x"}}]}], PARAMS,
            use_tqdm=False)
    text_parts = [{"role": "user", "content": [{"type": "text", "text": "Say hi"}]}]
    assert llm_fp32.chat(text_parts, PARAMS, use_tqdm=False)[0].outputs[0].token_ids
