"""Image inputs against a real server process (the embedded text model, SmolLM2) with the
real ``openai`` client: images to a text-only model, too many images, malformed parts and
image parts on text-only endpoints are 400s naming the model or the part, and the server
answers the next good request. The flags are parsed by the real CLI."""

from __future__ import annotations

import base64
import io

import httpx
import openai
import pytest
from PIL import Image
from server_utils import start_server


def png_url(size: tuple[int, int] = (8, 8)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("image-server")
    media = root / "media"
    media.mkdir()
    Image.new("RGB", (8, 8)).save(media / "cat.png")
    srv = start_server("real", root, extra=["--served-model-name", "smol-text",
                                            "--limit-mm-per-prompt", '{"image": 2}',
                                            "--allowed-local-media-path", str(media)],
                       api_key=None)
    client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="none", max_retries=0,
                           timeout=120)
    yield srv, client, media
    srv.stop()


def ask(client: openai.OpenAI, content) -> str:
    resp = client.chat.completions.create(
        model="smol-text", messages=[{"role": "user", "content": content}], max_tokens=3,
        temperature=0)
    return resp.choices[0].message.content


def error_of(exc: openai.APIStatusError) -> dict:
    body = exc.body if isinstance(exc.body, dict) else {}
    return body.get("error", body)


def assert_serving(client: openai.OpenAI) -> None:
    assert ask(client, [{"type": "text", "text": "Say hi"}])        # list content, text only


def test_image_to_a_text_model_is_a_400_naming_it(setup):
    _, client, media = setup
    for url in (png_url(), f"file://{media}/cat.png"):
        with pytest.raises(openai.BadRequestError) as info:
            ask(client, [{"type": "text", "text": "What is this?"},
                         {"type": "image_url", "image_url": {"url": url, "detail": "auto"}}])
        assert ("the model 'smol-text' takes text only: architecture 'LlamaForCausalLM' does "
                "not accept images") in error_of(info.value)["message"]
        assert_serving(client)


def test_too_many_images_is_a_400(setup):
    _, client, _ = setup
    with pytest.raises(openai.BadRequestError) as info:
        ask(client, [{"type": "image_url", "image_url": {"url": png_url()}}] * 3)
    err = error_of(info.value)
    assert "3 images" in err["message"] and "limit of 2" in err["message"]
    assert_serving(client)


@pytest.mark.parametrize("part,param", [
    ({"type": "image_url", "image_url": {}}, "messages.0.content.1.image_url.url"),
    ({"type": "image_url", "image_url": {"url": "data:x", "detail": "huge"}},
     "messages.0.content.1.image_url.detail"),
    ({"type": "video_url", "video_url": {"url": "x"}}, "messages.0.content.1"),
])
def test_malformed_parts_are_400s_naming_the_part(setup, part, param):
    _, client, _ = setup
    with pytest.raises(openai.BadRequestError) as info:
        ask(client, [{"type": "text", "text": "look"}, part])
    assert error_of(info.value)["param"] == param
    assert_serving(client)


def test_image_on_tokenize_is_a_400(setup):
    srv, client, _ = setup
    resp = httpx.post(f"{srv.url}/tokenize", json={"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": png_url()}}]}]}, timeout=60)
    assert resp.status_code == 400
    assert resp.json()["error"]["param"] == "messages.0.content.0.image_url"
    assert_serving(client)
