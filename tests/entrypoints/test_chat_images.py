"""Image parts in /v1/chat/completions (in-process app over the fake engine) and in
``LLM.generate`` / ``LLM.chat`` input checks.

``VisionFakeEngine`` stands in for a vision-language engine (its architecture is registered,
for this module, with a class declaring ``supports_images``): it records the engine input
(``{"prompt_token_ids", "multi_modal_data": {"image": [...]}}``) and, like the real one,
expands each image into several prompt tokens, so ``usage.prompt_tokens`` must come from the
engine. The chat template is Qwen2.5-VL's real one (``QWEN2_5_VL_TEMPLATE``), rendered both by
the server and by transformers' ``apply_chat_template`` on a HF tokenizer.
"""

from __future__ import annotations

import base64
import io
import types
from typing import Any

import pytest
from fake_engine import FakeAsyncEngine
from fastapi.testclient import TestClient
from PIL import Image
from vl_templates import QWEN2_5_VL_TEMPLATE

from vllm_core.config import EngineConfig, ModelConfig, MultiModalConfig
from vllm_core.entrypoints.chat_utils import ContentPartError, parse_content
from vllm_core.entrypoints.openai.api_server import build_app
from vllm_core.entrypoints.openai.serving_common import ServingContext
from vllm_core.entrypoints.prompt_inputs import check_prompt

PAD = "<|vision_start|><|image_pad|><|vision_end|>"
TOKENS_PER_IMAGE = 4
VISION_ARCH = "TinyVisionForImageInputTests"


class TinyVisionModel:
    """What the server asks of a model class: whether it ``supports_images``."""

    supports_images = True


@pytest.fixture(scope="module", autouse=True)
def vision_architecture():
    from vllm_core.model_executor.models.registry import MODELS, register_model

    register_model(VISION_ARCH, f"{__name__}:TinyVisionModel")
    yield
    MODELS.unregister(VISION_ARCH)


def png_url(color: tuple[int, int, int], size: tuple[int, int] = (6, 4)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def image_part(url: str, **extra: Any) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url, **extra}}


class VisionFakeEngine(FakeAsyncEngine):
    """The fake engine with a vision model's config; records what ``generate`` receives."""

    def __init__(self, multimodal: MultiModalConfig | None = None) -> None:
        super().__init__(max_model_len=512, step_delay=0.0)
        self.config.model.arch = types.SimpleNamespace(vocab_size=259,
                                                       architecture=VISION_ARCH)
        self.config.multimodal = multimodal or MultiModalConfig()
        self.inputs: list[Any] = []

    async def generate(self, prompt: Any, sampling_params: Any, request_id: str,
                       priority: int = 0):
        self.inputs.append(prompt)
        ids = prompt
        if isinstance(prompt, dict):
            images = prompt.get("multi_modal_data", {}).get("image", [])
            ids = list(prompt["prompt_token_ids"]) + [ord("x") + 3] * (
                TOKENS_PER_IMAGE * len(images))
        async for out in super().generate(ids, sampling_params, request_id, priority):
            yield out


def client_for(engine: FakeAsyncEngine, **args: Any) -> TestClient:
    return TestClient(build_app(engine, types.SimpleNamespace(**args)))


def chat(client: TestClient, content: Any, **body: Any):
    return client.post("/v1/chat/completions", json={
        "messages": [{"role": "user", "content": content}], "max_tokens": 3, **body})


# ---------------------------------------------------------------- parsing


def test_parse_content_keeps_text_only_messages_as_strings():
    parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    assert parse_content(parts, 0).content == "a\nb"
    assert parse_content("plain", 0).content == "plain"
    assert parse_content(None, 0).content == ""


def test_parse_content_with_images_keeps_the_order():
    parsed = parse_content([{"type": "text", "text": "first"}, image_part("data:x"),
                            {"type": "text", "text": "then"},
                            {"type": "image_url", "image_url": "http://h/i.png"}], 3)
    assert parsed.content == [{"type": "text", "text": "first"}, {"type": "image"},
                              {"type": "text", "text": "then"}, {"type": "image"}]
    assert [(r.location, r.url) for r in parsed.images] == [
        ("messages[3].content[1].image_url", "data:x"),
        ("messages[3].content[3].image_url", "http://h/i.png")]


@pytest.mark.parametrize("part,where", [
    ({"type": "image_url"}, "messages[0].content[0].image_url"),
    ({"type": "image_url", "image_url": {"url": ""}}, "messages[0].content[0].image_url.url"),
    ({"type": "image_url", "image_url": {"url": "data:x", "detail": "max"}},
     "messages[0].content[0].image_url.detail"),
    ({"type": "input_audio", "input_audio": {}}, "messages[0].content[0]"),
    ({"type": "image_pil", "image_pil": None}, "messages[0].content[0]"),  # LLM.chat only
    ({"type": "text", "text": 3}, "messages[0].content[0].text"),
    ("just a string", "messages[0].content[0]"),
])
def test_parse_content_errors_name_the_part(part, where):
    with pytest.raises(ContentPartError) as info:
        parse_content([part], 0)
    assert info.value.location == where and str(info.value).startswith(where + ": ")


# ---------------------------------------------------------------- template rendering


def render(template_ctx: ServingContext, content: Any) -> str:
    from vllm_core.entrypoints.openai.protocol import ChatMessage

    refs: list[Any] = []
    text = template_ctx.apply_chat_template(
        [ChatMessage(role="user", content=content)], add_generation_prompt=True,
        continue_final_message=False, chat_template=QWEN2_5_VL_TEMPLATE,
        chat_template_kwargs=None, images=refs)
    return text


def hf_tokenizer():
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel({"<unk>": 0},
                                                                        unk_token="<unk>")))


def test_qwen2_5_vl_template_renders_image_placeholders():
    """Our content parts render exactly as transformers renders the HF-convention
    conversation with the model's template (one placeholder per image, in order)."""
    engine = types.SimpleNamespace(tokenizer=hf_tokenizer())
    ctx = ServingContext(engine=engine, served_model_names=["m"], max_model_len=64,
                         vocab_size=1, accepts_images=True)
    text = render(ctx, [image_part(png_url((1, 2, 3))), {"type": "text", "text": "What is it?"},
                        image_part(png_url((4, 5, 6)))])
    expected = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                f"<|im_start|>user\n{PAD}What is it?{PAD}<|im_end|>\n<|im_start|>assistant\n")
    assert text == expected
    hf = engine.tokenizer.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"},
                                      {"type": "image"}]}],
        chat_template=QWEN2_5_VL_TEMPLATE, tokenize=False, add_generation_prompt=True)
    assert text == hf
    # text-only list content stays a string for the template
    assert render(ctx, [{"type": "text", "text": "hi"}]).count("<|im_start|>user\nhi<|im_end|>")


# ---------------------------------------------------------------- the server


def test_images_reach_the_engine_in_order():
    engine = VisionFakeEngine()
    with client_for(engine, chat_template=QWEN2_5_VL_TEMPLATE) as client:
        resp = chat(client, [image_part(png_url((255, 0, 0), (6, 4)), detail="low"),
                             {"type": "text", "text": "compare"},
                             image_part(png_url((0, 0, 255), (3, 5)))])
        assert resp.status_code == 200, resp.text
        sent = engine.inputs[-1]
        images = sent["multi_modal_data"]["image"]
        assert [(im.size, im.getpixel((0, 0))) for im in images] == [
            ((6, 4), (255, 0, 0)), ((3, 5), (0, 0, 255))]
        prompt = engine.tokenizer.decode(sent["prompt_token_ids"])
        assert prompt.endswith(f"<|im_start|>user\n{PAD}compare{PAD}<|im_end|>\n"
                               f"<|im_start|>assistant\n")
        usage = resp.json()["usage"]                   # the engine's (expanded) count
        assert usage["prompt_tokens"] == len(sent["prompt_token_ids"]) + 2 * TOKENS_PER_IMAGE
        # text-only requests still send plain token ids
        assert chat(client, "hello").status_code == 200
        assert isinstance(engine.inputs[-1], list)


def test_streaming_with_an_image():
    engine = VisionFakeEngine()
    with client_for(engine, chat_template=QWEN2_5_VL_TEMPLATE) as client:
        resp = chat(client, [image_part(png_url((9, 9, 9))), {"type": "text", "text": "hi"}],
                    stream=True, stream_options={"include_usage": True})
        assert resp.status_code == 200
        assert '"finish_reason":"length"' in resp.text.replace(" ", "")
        assert len(engine.inputs[-1]["multi_modal_data"]["image"]) == 1


def test_limit_mm_per_prompt_is_a_400():
    engine = VisionFakeEngine(MultiModalConfig(limit_per_prompt={"image": 1}))
    with client_for(engine, chat_template=QWEN2_5_VL_TEMPLATE) as client:
        resp = chat(client, [image_part(png_url((1, 1, 1))), image_part(png_url((2, 2, 2)))])
        assert resp.status_code == 400
        err = resp.json()["error"]
        assert "2 images" in err["message"] and "--limit-mm-per-prompt" in err["message"]
        assert err["param"] == "messages"
        assert engine.inputs == []                    # nothing reached the engine
        assert chat(client, [image_part(png_url((1, 1, 1)))]).status_code == 200


def test_images_to_a_text_only_model_are_a_400_naming_it():
    engine = FakeAsyncEngine(max_model_len=256, step_delay=0.0, served_model_name="tiny-text")
    with client_for(engine) as client:
        resp = chat(client, [{"type": "text", "text": "hi"}, image_part(png_url((1, 1, 1)))])
        assert resp.status_code == 400
        assert "the model 'tiny-text' takes text only" in resp.json()["error"]["message"]
        assert chat(client, "hi").status_code == 200


@pytest.mark.parametrize("url,param,words", [
    ("data:image/png;base64,!!!", "messages.0.content.1.image_url", "invalid base64"),
    ("data:image/png;base64," + base64.b64encode(b"GIF89a garbage").decode(),
     "messages.0.content.1.image_url", "not a valid"),
    ("file:///etc/passwd", "messages.0.content.1.image_url", "--allowed-local-media-path"),
    ("gopher://x/y", "messages.0.content.1.image_url", "unsupported image URL scheme"),
])
def test_bad_images_are_400s_naming_the_part(url, param, words):
    engine = VisionFakeEngine()
    with client_for(engine, chat_template=QWEN2_5_VL_TEMPLATE) as client:
        resp = chat(client, [{"type": "text", "text": "look"}, image_part(url)])
        assert resp.status_code == 400, resp.text
        err = resp.json()["error"]
        assert err["param"] == param and words in err["message"], err
        assert err["message"].startswith("messages[0].content[1].image_url: ")
        assert chat(client, [image_part(png_url((1, 1, 1)))]).status_code == 200


def test_oversized_image_is_a_400():
    engine = VisionFakeEngine(MultiModalConfig(max_image_pixels=100))
    with client_for(engine, chat_template=QWEN2_5_VL_TEMPLATE) as client:
        resp = chat(client, [image_part(png_url((1, 1, 1), (20, 20)))])
        assert resp.status_code == 400
        assert resp.json()["error"]["param"] == "messages.0.content.0.image_url"
        assert "--max-image-pixels" in resp.json()["error"]["message"]


def test_image_parts_elsewhere_are_refused():
    """/tokenize and /v1/responses take text only: a clear 400, not a silent drop."""
    engine = VisionFakeEngine()
    with client_for(engine) as client:
        resp = client.post("/tokenize", json={"messages": [
            {"role": "user", "content": [image_part(png_url((1, 1, 1)))]}]})
        assert resp.status_code == 400
        assert "/v1/chat/completions only" in resp.json()["error"]["message"]


# ---------------------------------------------------------------- LLM input checks

TEXT = dict(config=MultiModalConfig(), accepts_images=False, model_name="tiny-text")
VISION = dict(config=MultiModalConfig(limit_per_prompt={"image": 2}), accepts_images=True,
              model_name="tiny-vl")


def test_check_prompt_accepts_the_contract_forms():
    img = Image.new("RGB", (4, 4))
    for prompt in ({"prompt": "hi", "multi_modal_data": {"image": img}},
                   {"prompt": "hi", "multi_modal_data": {"image": [img, img]}},
                   {"prompt_token_ids": [1, 2], "multi_modal_data": {"image": (img,)}},
                   {"prompt": "text only"}, "plain", [1, 2, 3]):
        check_prompt(prompt, "prompts[0]", **VISION)


@pytest.mark.parametrize("prompt,exc,words", [
    ({"prompt": "hi", "images": []}, ValueError, "unknown keys ['images']"),
    ({"multi_modal_data": {}}, ValueError, "needs 'prompt'"),
    ({"prompt": 5}, TypeError, "['prompt'] must be a str"),
    ({"prompt": "hi", "multi_modal_data": [1]}, TypeError, "must be a dict"),
    ({"prompt": "hi", "multi_modal_data": {"video": []}}, ValueError, "unsupported modalities"),
    ({"prompt": "hi", "multi_modal_data": {"image": []}}, ValueError, "empty list"),
    ({"prompt": "hi", "multi_modal_data": {"image": "cat.png"}}, TypeError,
     "['image'] must be a PIL.Image.Image, got str"),
    ({"prompt": "hi", "multi_modal_data": {"image": [Image.new("RGB", (2, 2)), b"png"]}},
     TypeError, "['image'][1] must be a PIL.Image.Image, got bytes"),
    ({"prompt": "hi", "multi_modal_data": {"image": [Image.new("RGB", (2, 2))] * 3}},
     ValueError, "3 images, more than the limit of 2"),
])
def test_check_prompt_errors(prompt, exc, words):
    with pytest.raises(exc) as info:
        check_prompt(prompt, "prompts[1]", **VISION)
    assert words in str(info.value) and str(info.value).startswith("prompts[1]")


def test_check_prompt_refuses_images_for_a_text_model():
    with pytest.raises(ValueError, match="'tiny-text' takes text only: architecture "
                                         "'LlamaForCausalLM' does not accept images"):
        check_prompt({"prompt": "hi", "multi_modal_data": {"image": Image.new("RGB", (2, 2))}},
                     "prompts[0]", architecture="LlamaForCausalLM", **TEXT)


def test_model_accepts_images_follows_the_model_class():
    from vllm_core.entrypoints.chat_utils import model_accepts_images

    def config(arch):
        return ModelConfig(model="m", arch=types.SimpleNamespace(architecture=arch))

    assert model_accepts_images(config(VISION_ARCH))
    assert not model_accepts_images(config("LlamaForCausalLM"))
    assert not model_accepts_images(config("NoSuchArchitecture"))
    assert not model_accepts_images(ModelConfig(model="m"))


def test_engine_config_carries_the_multimodal_settings():
    from vllm_core.engine.arg_utils import EngineArgs

    args = EngineArgs(limit_mm_per_prompt='{"image": 3}', media_fetch_timeout=2.5,
                      max_media_bytes=1000, max_image_pixels=4096)
    mm = args.multimodal_config()
    assert (mm.limit("image"), mm.media_fetch_timeout_s, mm.max_media_bytes,
            mm.max_image_pixels) == (3, 2.5, 1000, 4096)
    assert EngineArgs().multimodal_config().limit("image") == 999
    assert EngineArgs().multimodal_config().allowed_media_domains is None
    assert EngineArgs(allowed_media_domains=["Example.COM."]).multimodal_config() \
        .allowed_media_domains == ("example.com",)
    for bad, words in (('{"image": -1}', ">= 0"), ('{"audio": 1}', "unknown modality"),
                       ("[1]", "JSON object"), ("{", "not valid JSON")):
        with pytest.raises(ValueError, match=words):
            EngineArgs(limit_mm_per_prompt=bad).multimodal_config()
    assert EngineConfig(model=ModelConfig(model="m")).multimodal.allowed_local_media_path is None
