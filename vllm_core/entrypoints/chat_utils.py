"""Chat messages with image parts, shared by ``/v1/chat/completions`` and ``LLM.chat``.

OpenAI content parts become what chat templates expect (transformers' convention): a message
whose parts are all text keeps a plain string (the parts joined by newlines, as before), a
message with images keeps a list of ``{"type": "text", "text": ...}`` and ``{"type": "image"}``
parts in the client's order, which Qwen2.5-VL's template renders as
``<|vision_start|><|image_pad|><|vision_end|>``. The images are collected in the same order
(the order of their placeholders in the rendered prompt) and handed to the engine as
``{"prompt_token_ids": ..., "multi_modal_data": {"image": [PIL.Image, ...]}}``
(``vllm_core.multimodal.inputs``' contract).

Accepted parts: ``{"type": "text", "text"}`` (also ``input_text``); ``{"type": "image_url",
"image_url": {"url", "detail"?}}`` (``image_url`` may also be the URL string; ``detail`` is
checked and otherwise ignored: the model's processor picks the resolution);
``{"type": "image_pil", "image_pil": PIL.Image}`` and ``{"type": "image", "image": PIL.Image
or URL}`` in ``LLM.chat`` only (Python objects).

Order of checks, cheapest first, so a refused request fetches nothing: part shapes while
parsing, then the per-prompt image limit, then whether the model accepts images, then each
image is loaded (``MediaLoader``). Every error is a ``ValueError`` whose ``location`` names the
part: ``messages[0].content[1].image_url``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from vllm_core.config import MultiModalConfig
from vllm_core.multimodal.media import MediaLoader

IMAGE_DETAILS = ("auto", "low", "high")


class ContentPartError(ValueError):
    """A malformed or refused content part; ``location`` names it, the message starts with it."""

    def __init__(self, location: str, reason: str) -> None:
        super().__init__(f"{location}: {reason}")
        self.location = location


class ImageLimitError(ValueError):
    """More images in one prompt than ``--limit-mm-per-prompt`` allows."""

    location = "messages"


class ImagesNotSupportedError(ValueError):
    """Images sent to a model that takes text only."""

    location = "messages"


@dataclass(slots=True)
class ImageRef:
    """One image part, not loaded yet: a URL, or (``LLM.chat``) a PIL image given directly."""

    location: str                # "messages[0].content[1].image_url"
    url: str | None = None
    image: Any = None


@dataclass(slots=True)
class ParsedContent:
    """A message's content as the template takes it, and the images it refers to."""

    content: str | list[dict[str, Any]]
    images: list[ImageRef] = field(default_factory=list)


def parse_content(content: Any, index: int, allow_objects: bool = False) -> ParsedContent:
    """Parse ``messages[index].content`` (a string, None, or a list of parts).

    ``allow_objects``: accept the Python-only parts (``image_pil``; ``image`` holding a PIL
    image), as ``LLM.chat`` does.
    """
    if content is None or isinstance(content, str):
        return ParsedContent(content or "")
    where = f"messages[{index}].content"
    if not isinstance(content, list):
        raise ContentPartError(where, "must be a string or a list of content parts")
    texts: list[str] = []
    parts: list[dict[str, Any]] = []
    images: list[ImageRef] = []
    for j, part in enumerate(content):
        at = f"{where}[{j}]"
        if not isinstance(part, dict):
            raise ContentPartError(at, "a content part must be an object with a 'type'")
        kind = part.get("type")
        if kind in ("text", "input_text"):
            text = part.get("text")
            if not isinstance(text, str):
                raise ContentPartError(f"{at}.text", "must be a string")
            texts.append(text)
            parts.append({"type": "text", "text": text})
        elif kind == "image_url":
            images.append(_image_url_ref(part.get("image_url"), f"{at}.image_url"))
            parts.append({"type": "image"})
        elif kind in ("image_pil", "image") and allow_objects:
            images.append(_object_ref(part.get(kind), f"{at}.{kind}"))
            parts.append({"type": "image"})
        else:
            known = "text, image_url" + (", image_pil, image" if allow_objects else "")
            raise ContentPartError(at, f"content part type {kind!r} is not supported "
                                       f"({known})")
    if not images:
        return ParsedContent("\n".join(texts))
    return ParsedContent(parts, images)


def _image_url_ref(value: Any, location: str) -> ImageRef:
    if isinstance(value, str):
        return ImageRef(location, url=value)
    if not isinstance(value, dict):
        raise ContentPartError(location, "must be an object {\"url\": ...} or a URL string")
    url = value.get("url")
    if not isinstance(url, str) or not url:
        raise ContentPartError(f"{location}.url", "must be a non-empty string")
    detail = value.get("detail")
    if detail is not None and detail not in IMAGE_DETAILS:
        raise ContentPartError(f"{location}.detail", f"must be one of "
                                                     f"{', '.join(IMAGE_DETAILS)}, got {detail!r}")
    return ImageRef(location, url=url)


def _object_ref(value: Any, location: str) -> ImageRef:
    if isinstance(value, str):
        return ImageRef(location, url=value)
    from PIL import Image

    if not isinstance(value, Image.Image):
        raise ContentPartError(location, f"must be a PIL.Image.Image or a URL string, got "
                                         f"{type(value).__name__}")
    return ImageRef(location, image=value)


def check_images(refs: list[ImageRef], config: MultiModalConfig, accepts_images: bool,
                 model_name: str, architecture: str | None = None) -> None:
    """The per-prompt limit, then the model's support (``ImageLimitError`` /
    ``ImagesNotSupportedError``); nothing is fetched."""
    if not refs:
        return
    limit = config.limit("image")
    if len(refs) > limit:
        raise ImageLimitError(f"this request has {len(refs)} images, more than the limit of "
                              f"{limit} per prompt (--limit-mm-per-prompt)")
    if not accepts_images:
        raise ImagesNotSupportedError(text_only_message(model_name, architecture))


def text_only_message(model_name: str, architecture: str | None) -> str:
    """Why images are refused, naming the model (and its architecture, as the engine does)."""
    if architecture:
        return (f"the model {model_name!r} takes text only: architecture {architecture!r} "
                f"does not accept images")
    return f"the model {model_name!r} takes text only: it does not accept images"


def load_images(refs: list[ImageRef], loader: MediaLoader) -> list[Any]:
    """Each image decoded, in order (``MediaError`` naming the first bad one)."""
    out = []
    for ref in refs:
        if ref.image is not None:
            out.append(ref.image)
        else:
            out.append(loader.load_image(ref.url, ref.location))
    return out


def model_accepts_images(model_config: Any) -> bool:
    """Whether the served model takes images: its registered class declares
    ``supports_images`` (the engine's input processing applies the same rule and refuses
    images otherwise; checking here first means nothing is fetched for such a model)."""
    architecture = model_architecture(model_config)
    if not architecture:
        return False
    from vllm_core.model_executor.models.registry import resolve_model_cls

    try:
        return bool(getattr(resolve_model_cls(architecture), "supports_images", False))
    except (ValueError, ImportError):
        return False


def model_architecture(model_config: Any) -> str | None:
    """The served model's architecture name (None for test doubles without one)."""
    return getattr(getattr(model_config, "arch", None), "architecture", None)


def location_param(location: str) -> str:
    """``messages[0].content[1].image_url`` as an OpenAI error ``param``:
    ``messages.0.content.1.image_url``."""
    return re.sub(r"\[(\d+)\]", r".\1", location)
