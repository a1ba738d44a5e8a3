"""A tiny random-weight Qwen2.5-VL folder for parity tests (core, plugins and the GPU job):
HF weights, a word-level tokenizer whose vocabulary holds the vision special tokens at the
config's ids, and the image processor's ``preprocessor_config.json``. Imports transformers and
PIL lazily."""

from __future__ import annotations

from typing import Any

import torch

IMAGE_TOKEN, VIDEO_TOKEN, START_TOKEN, END_TOKEN = 500, 501, 502, 503
PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"
TINY_TEXT = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                 rms_norm_eps=1e-6,
                 rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                  "mrope_section": [2, 3, 3]})
TINY_VISION = dict(depth=4, hidden_size=32, intermediate_size=64, num_heads=2,
                   out_hidden_size=64, patch_size=14, spatial_merge_size=2,
                   temporal_patch_size=2, window_size=56, fullatt_block_indexes=[1, 3])


def random_qwen2_5_vl(text: dict[str, Any] | None = None, vision: dict[str, Any] | None = None,
                      seed: int = 0, weight_scale: float = 0.1,
                      dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """A HF ``Qwen2_5_VLForConditionalGeneration`` with every parameter random (norms near 1)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    cfg = Qwen2_5_VLConfig(text_config={**TINY_TEXT, **(text or {}), "bos_token_id": None,
                                        "eos_token_id": None, "pad_token_id": None},
                           vision_config={**TINY_VISION, **(vision or {})},
                           image_token_id=IMAGE_TOKEN, video_token_id=VIDEO_TOKEN,
                           vision_start_token_id=START_TOKEN, vision_end_token_id=END_TOKEN)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(cfg).to(dtype).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            if "norm" in name or "ln_q" in name:
                param.copy_(1.0 + 0.1 * noise)
            else:
                param.copy_(weight_scale * noise)
    return model


def write_vl_tokenizer(folder: str, vocab_size: int = 512,
                       ids: tuple[int, int, int, int] = (IMAGE_TOKEN, VIDEO_TOKEN, START_TOKEN,
                                                         END_TOKEN)) -> None:
    """Word-level tokenizer ("t{i}" per id) whose vision special tokens have the config's ids
    ``ids`` = (image, video, vision start, vision end)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    names = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")
    special = dict(zip(ids, names, strict=True))
    vocab = {special.get(i, f"t{i}"): i for i in range(vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    tok.add_special_tokens([AddedToken(s, special=True) for s in special.values()])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="t0")
    fast.save_pretrained(folder)


def save_tiny_qwen2_5_vl(folder: str, model: torch.nn.Module,
                         max_pixels: int = 28 * 28 * 64) -> None:
    """Save ``model`` with the tokenizer and a small-image processor config into ``folder``."""
    from transformers import Qwen2VLImageProcessor

    model.save_pretrained(folder)
    write_vl_tokenizer(folder, model.config.text_config.vocab_size)
    Qwen2VLImageProcessor(min_pixels=28 * 28 * 4, max_pixels=max_pixels).save_pretrained(folder)


def hf_mm_kwargs(hf_model: torch.nn.Module, input_ids: torch.Tensor,
                 image_token_id: int = IMAGE_TOKEN) -> dict[str, Any]:
    """``mm_token_type_ids`` for HF ``generate`` / ``forward`` when this transformers release's
    Qwen2.5-VL takes it (newer releases need it to build M-RoPE positions; older ones find
    the image tokens in ``input_ids`` themselves and reject the argument)."""
    import inspect

    if "mm_token_type_ids" in inspect.signature(hf_model.forward).parameters:
        return {"mm_token_type_ids": (input_ids == image_token_id).int()}
    return {}


def random_image(width: int, height: int, seed: int = 0) -> Any:
    """A PIL RGB image of uniform random pixels."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
