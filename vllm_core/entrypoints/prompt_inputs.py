"""Checking ``LLM.generate``'s dict prompts before anything is queued.

A dict prompt is ``{"prompt": str}`` or ``{"prompt_token_ids": list[int]}`` (both: the ids
are used, the text kept for the output), optionally with ``"multi_modal_data": {"image":
PIL.Image | list[PIL.Image]}`` (``vllm_core.multimodal.inputs``' contract: the prompt already
holds one image placeholder per image, as the model's chat template renders it).

``check_prompt`` raises ``TypeError`` for a value of the wrong type and ``ValueError`` for
unknown keys, an empty image list, more images than ``--limit-mm-per-prompt`` or images for a
model that takes text only; the message names the prompt (``prompts[2]``) and the key.
"""

from __future__ import annotations

from typing import Any

from vllm_core.config import MULTIMODAL_MODALITIES, MultiModalConfig

PROMPT_KEYS = ("prompt", "prompt_token_ids", "multi_modal_data")


def check_prompt(prompt: Any, where: str, config: MultiModalConfig, accepts_images: bool,
                 model_name: str, architecture: str | None = None) -> None:
    """Validate one prompt given to ``LLM.generate`` (strings and id lists pass through: the
    input processor checks them)."""
    if not isinstance(prompt, dict):
        return
    unknown = sorted(str(k) for k in prompt if k not in PROMPT_KEYS)
    if unknown:
        raise ValueError(f"{where} has unknown keys {unknown}; a prompt dict takes "
                         f"{', '.join(PROMPT_KEYS)}")
    if "prompt" not in prompt and "prompt_token_ids" not in prompt:
        raise ValueError(f"{where} needs 'prompt' (text) or 'prompt_token_ids'")
    if "prompt" in prompt and not isinstance(prompt["prompt"], str):
        raise TypeError(f"{where}['prompt'] must be a str, got "
                        f"{type(prompt['prompt']).__name__}")
    if "multi_modal_data" in prompt:
        _check_mm_data(prompt["multi_modal_data"], f"{where}['multi_modal_data']", config,
                       accepts_images, model_name, architecture)


def _check_mm_data(data: Any, where: str, config: MultiModalConfig, accepts_images: bool,
                   model_name: str, architecture: str | None) -> None:
    if not isinstance(data, dict):
        raise TypeError(f"{where} must be a dict such as {{'image': [PIL.Image, ...]}}, got "
                        f"{type(data).__name__}")
    unknown = sorted(str(k) for k in data if k not in MULTIMODAL_MODALITIES)
    if unknown:
        raise ValueError(f"{where} has unsupported modalities {unknown}; supported: "
                         f"{', '.join(MULTIMODAL_MODALITIES)}")
    if "image" not in data:
        return
    from PIL import Image

    images = data["image"]
    items = list(images) if isinstance(images, (list, tuple)) else [images]
    if not items:
        raise ValueError(f"{where}['image'] is an empty list (leave out multi_modal_data "
                         f"for a text-only prompt)")
    for i, item in enumerate(items):
        if not isinstance(item, Image.Image):
            at = f"{where}['image']" + (f"[{i}]" if isinstance(images, (list, tuple)) else "")
            raise TypeError(f"{at} must be a PIL.Image.Image, got {type(item).__name__}")
    limit = config.limit("image")
    if len(items) > limit:
        raise ValueError(f"{where}['image'] has {len(items)} images, more than the limit of "
                         f"{limit} per prompt (limit_mm_per_prompt)")
    if not accepts_images:
        from vllm_core.entrypoints.chat_utils import text_only_message

        raise ValueError(f"{where}: {text_only_message(model_name, architecture)}")
