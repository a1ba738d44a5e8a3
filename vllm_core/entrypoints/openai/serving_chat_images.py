"""The chat prompt of /v1/chat/completions with its images (``chat_utils`` does the parsing).

``render_chat_prompt`` checks the image count against ``--limit-mm-per-prompt`` and that the
model accepts images, renders the template (image parts become the template's image
placeholders), loads each image (``MediaLoader``: data:, file:// inside
``--allowed-local-media-path``, http(s) with size and time limits), then tokenizes. Every
refusal is an ``OpenAIServingError`` 400 whose ``param`` names the part
(``messages.0.content.1.image_url``); nothing reaches the engine, which keeps serving.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vllm_core.entrypoints.chat_utils import ImageRef, load_images, location_param
from vllm_core.entrypoints.openai.errors import OpenAIServingError
from vllm_core.multimodal.media import MediaLoader


@dataclass(slots=True)
class ChatPrompt:
    """A rendered, tokenized chat prompt and its images (in placeholder order)."""

    token_ids: list[int]
    images: list[Any] = field(default_factory=list)

    def engine_input(self) -> list[int] | dict[str, Any]:
        """What ``engine.generate`` takes: the token ids, or with images the
        ``multi_modal_data`` dict of ``vllm_core.multimodal.inputs``' contract."""
        if not self.images:
            return self.token_ids
        return {"prompt_token_ids": self.token_ids,
                "multi_modal_data": {"image": list(self.images)}}


def render_chat_prompt(ctx: Any, messages: list[Any], template_args: dict[str, Any]
                       ) -> ChatPrompt:
    """Blocking (run it on a worker thread). ``ctx`` is the ``ServingContext``;
    ``template_args`` are ``chat_prompt_ids``' keyword arguments."""
    args = dict(template_args)
    add_special_tokens = args.pop("add_special_tokens")
    refs: list[ImageRef] = []
    text = ctx.apply_chat_template(messages, images=refs, **args)
    try:                         # count and model support: checked by apply_chat_template
        images = load_images(refs, ctx.media_loader or MediaLoader(ctx.multimodal))
    except ValueError as e:
        raise OpenAIServingError(str(e), 400,
                                 location_param(getattr(e, "location", "messages"))) from e
    return ChatPrompt(ctx.tokenize(text, add_special_tokens), images)
