"""Multimodal inputs: the contract between the front end, the engine and the model.

Front end -> engine (what ``LLM.generate`` / ``LLMEngine.add_request`` accept)::

    {"prompt": str, "multi_modal_data": {"image": PIL.Image.Image | list[PIL.Image.Image]}}
    {"prompt_token_ids": list[int], "multi_modal_data": {"image": ...}}

* The prompt already holds the model's image placeholder text once per image, in image order,
  exactly as the HF chat template renders it; for Qwen2.5-VL that is
  ``<|vision_start|><|image_pad|><|vision_end|>`` (one ``<|image_pad|>`` token per image; with
  ``prompt_token_ids``, one ``image_token_id`` per image). The engine expands each single
  placeholder token to the image's token count; the front end never does.
* The number of images must equal the number of placeholders; otherwise ``ValueError``
  ("prompt has N image placeholders but M images were given").
* A model that does not accept images raises ``ValueError`` naming the architecture
  ("model architecture 'LlamaForCausalLM' does not accept images"); an unknown modality key
  (anything but ``"image"``) raises ``ValueError`` naming it. Both happen in input processing,
  before the request reaches the scheduler (the server answers 400 and keeps serving).
* Images are ``PIL.Image.Image`` (any mode; converted to RGB by the processor). Decoding URLs,
  size limits and ``--limit-mm-per-prompt`` are the front end's job
  (``vllm_core/multimodal/media.py``, ``vllm_core/entrypoints/``).

Engine side (this package): ``processing.py`` runs transformers' image processor of the model
(``Qwen2_5_VLProcessor``'s), expands the placeholders and computes the M-RoPE positions;
``hashing.py`` gives each image a content hash that keys the encoder cache and the prefix-cache
blocks its placeholders cover; the result rides on the request as ``MultiModalFeatures``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

MODALITY_IMAGE = "image"


@dataclass(slots=True)
class ImageItem:
    """One processed image of a request.

    ``offset`` / ``length``: its placeholder run is ``prompt_token_ids[offset:offset + length]``
    (after expansion), and the encoder output of the image has exactly ``length`` rows, row
    ``j`` replacing the embedding of token ``offset + j``. ``hash``: hex content hash of the
    image (``hashing.image_hash``). ``pixel_values`` float32 ``[num_patches, C * T * P * P]``
    and ``grid_thw`` ``(t, h, w)`` in patches: the image processor's output, the vision
    encoder's input (numpy, so messages stay torch-free).
    """

    hash: str
    offset: int
    length: int
    pixel_values: np.ndarray
    grid_thw: tuple[int, int, int]

    @property
    def end(self) -> int:
        return self.offset + self.length


@dataclass(slots=True)
class MultiModalFeatures:
    """Everything multimodal about one request, computed once in input processing.

    ``items`` are in prompt order, their placeholder runs disjoint and ascending.
    ``mrope_positions`` int64 ``[3, P]`` (models with M-RoPE; None otherwise): the (t, h, w)
    rotary positions of the ``P`` prompt tokens; token ``p >= P`` (generated) has all three
    positions ``p + mrope_delta``.
    """

    items: list[ImageItem] = field(default_factory=list)
    mrope_positions: np.ndarray | None = None
    mrope_delta: int = 0

    def overlapping(self, start: int, end: int) -> list[int]:
        """Indices of the items whose placeholder run meets token range ``[start, end)``."""
        return [i for i, it in enumerate(self.items) if it.offset < end and it.end > start]

    def block_extra_keys(self, start: int, end: int) -> tuple[str, ...]:
        """The image hashes whose placeholders meet ``[start, end)`` (a KV block's extra
        prefix-cache key: equal tokens with different images must not share blocks)."""
        return tuple(self.items[i].hash for i in self.overlapping(start, end))


def multi_modal_data_of(prompt: Any) -> dict[str, Any] | None:
    """The ``multi_modal_data`` of an engine input (None when absent or empty)."""
    if isinstance(prompt, dict):
        data = prompt.get("multi_modal_data")
        if data:
            return data
    return None
