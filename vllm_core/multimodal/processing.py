"""Engine-side multimodal input processing (see ``inputs.py`` for the contract).

``MultiModalProcessor.process(token_ids, multi_modal_data)`` -> ``(expanded token ids,
MultiModalFeatures)``: the model's image processor (transformers' ``AutoImageProcessor`` of the
model folder: ``Qwen2VLImageProcessor`` for Qwen2.5-VL, the one ``Qwen2_5_VLProcessor`` uses)
turns each image into patches and a ``(t, h, w)`` grid; each single image placeholder token is
expanded to ``t*h*w / merge**2`` tokens; each image gets its content hash; the M-RoPE positions
of the expanded prompt are computed once here.

``processor_for(config)`` builds it for a model whose class declares ``supports_images``; for
any other model it returns a processor that refuses images with a ``ValueError`` naming the
architecture.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vllm_core.config import ModelArchConfig
from vllm_core.multimodal.hashing import image_hash
from vllm_core.multimodal.inputs import MODALITY_IMAGE, ImageItem, MultiModalFeatures
from vllm_core.multimodal.mrope_positions import mrope_positions


class MultiModalProcessor:
    """Images of one model. ``image_processor`` is a transformers image processor (called as
    ``image_processor(images=[...], return_tensors="np")`` -> ``pixel_values``,
    ``image_grid_thw``); ``image_token_id`` the placeholder token; ``merge_size`` the spatial
    merge of the vision tower."""

    def __init__(self, arch: ModelArchConfig, image_processor: Any) -> None:
        hf = arch.hf_config
        self.architecture = arch.architecture
        self.image_token_id = int(hf["image_token_id"])
        vision = hf.get("vision_config") or {}
        self.merge_size = int(vision.get("spatial_merge_size", 2))
        self.image_processor = image_processor

    @classmethod
    def from_pretrained(cls, arch: ModelArchConfig, model_path: str) -> MultiModalProcessor:
        from transformers import AutoImageProcessor

        try:
            image_processor = AutoImageProcessor.from_pretrained(model_path)
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot load the image processor of {model_path} "
                             f"(preprocessor_config.json): {e}") from e
        return cls(arch, image_processor)

    def process(self, token_ids: list[int], data: dict[str, Any]
                ) -> tuple[list[int], MultiModalFeatures]:
        unknown = set(data) - {MODALITY_IMAGE}
        if unknown:
            raise ValueError(f"multi_modal_data has unsupported modality {sorted(unknown)!r} "
                             f"(supported: 'image')")
        images = data.get(MODALITY_IMAGE)
        if images is None:
            images = []
        elif not isinstance(images, (list, tuple)):
            images = [images]
        for i, img in enumerate(images):
            if not (hasattr(img, "mode") and hasattr(img, "tobytes") and hasattr(img, "size")):
                raise ValueError(f"multi_modal_data['image'][{i}] must be a PIL.Image, got "
                                 f"{type(img).__name__}")
        slots = [i for i, t in enumerate(token_ids) if t == self.image_token_id]
        if len(slots) != len(images):
            raise ValueError(f"prompt has {len(slots)} image placeholders but {len(images)} "
                             f"images were given (each image needs one placeholder "
                             f"<|vision_start|><|image_pad|><|vision_end|> in the prompt)")
        if not images:
            return list(token_ids), MultiModalFeatures()
        try:
            out = self.image_processor(images=list(images), return_tensors="np")
        except Exception as e:   # the processor rejects a malformed image: the user's input
            raise ValueError(f"cannot process image: {e}") from e
        pixels = np.asarray(out["pixel_values"], dtype=np.float32)
        grids = [tuple(int(v) for v in g) for g in np.asarray(out["image_grid_thw"])]
        unit = self.merge_size ** 2
        ids: list[int] = []
        items: list[ImageItem] = []
        prev, row = 0, 0
        for slot, img, grid in zip(slots, images, grids):
            num_patches = grid[0] * grid[1] * grid[2]
            length = num_patches // unit
            ids.extend(token_ids[prev:slot])
            items.append(ImageItem(hash=image_hash(img), offset=len(ids), length=length,
                                   pixel_values=pixels[row:row + num_patches], grid_thw=grid))
            ids.extend([self.image_token_id] * length)
            prev, row = slot + 1, row + num_patches
        ids.extend(token_ids[prev:])
        positions, delta = mrope_positions(len(ids), items, self.merge_size)
        return ids, MultiModalFeatures(items=items, mrope_positions=positions,
                                       mrope_delta=delta)


def model_accepts_images(arch: ModelArchConfig) -> bool:
    """Whether the registered class of ``arch.architecture`` declares ``supports_images``."""
    from vllm_core.model_executor.models.registry import resolve_model_cls

    try:
        return bool(getattr(resolve_model_cls(arch.architecture), "supports_images", False))
    except (ValueError, ImportError):
        return False


def processor_for(arch: ModelArchConfig, model_path: str) -> MultiModalProcessor:
    """The processor of a model that accepts images; ``ValueError`` naming the architecture
    for one that does not."""
    if not model_accepts_images(arch):
        raise ValueError(f"model architecture {arch.architecture!r} does not accept images "
                         f"(multi_modal_data given)")
    return MultiModalProcessor.from_pretrained(arch, model_path)
