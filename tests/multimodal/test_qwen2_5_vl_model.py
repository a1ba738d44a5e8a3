"""Qwen2.5-VL model parity with HF transformers on tiny random weights (fp32): the vision
encoder's output per image, and the logits of a prompt with one image and with two images of
different sizes; M-RoPE positions equal HF's ``get_rope_index``."""

from __future__ import annotations

import pytest
import torch

from vllm_core.attention.backends.reference import ReferenceAttentionBackend
from vllm_core.model_executor.batch_utils import make_batch_layout
from vllm_core.model_executor.loader import get_model, load_arch_config
from vllm_core.multimodal.processing import MultiModalProcessor, processor_for
from vllm_core.multimodal.testing import (
    IMAGE_TOKEN,
    hf_mm_kwargs,
    random_image,
    random_qwen2_5_vl,
    save_tiny_qwen2_5_vl,
)

BLOCK = 4


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    hf = random_qwen2_5_vl(seed=3)
    path = str(tmp_path_factory.mktemp("qwen2_5_vl"))
    save_tiny_qwen2_5_vl(path, hf)
    from vllm_core.config import ModelConfig

    arch = load_arch_config(path)
    ours = get_model(ModelConfig(model=path, dtype="float32", max_model_len=4096, arch=arch),
                     ReferenceAttentionBackend, torch.device("cpu"))
    return path, hf, ours, arch


def _prompt(num_images: int) -> list[int]:
    ids = [7, 8, 9]
    for i in range(num_images):
        ids += [502, IMAGE_TOKEN, 503] + [20 + i, 21 + i]
    return ids + [30, 31, 32]


@torch.no_grad()
def _ours(model, ids: list[int], feats) -> torch.Tensor:
    arch = model.arch
    kv = [torch.zeros(ReferenceAttentionBackend.get_kv_cache_shape(
        -(-len(ids) // BLOCK) + 1, BLOCK, arch.num_key_value_heads, arch.head_dim))
        for _ in range(arch.num_hidden_layers)]
    layout = make_batch_layout([0], [len(ids)], BLOCK)
    md = ReferenceAttentionBackend.get_builder_cls()(BLOCK, torch.device("cpu")).build(
        layout.metadata)
    input_ids = torch.tensor(ids)
    embeds = model.embed_input_ids(input_ids)
    if feats.items:
        pixels = torch.from_numpy(__import__("numpy").concatenate(
            [it.pixel_values for it in feats.items]))
        outs = model.encode_images(pixels, [it.grid_thw for it in feats.items])
        for it, out in zip(feats.items, outs, strict=True):
            embeds[it.offset:it.end] = out
        positions = torch.from_numpy(feats.mrope_positions)
    else:
        positions = torch.arange(len(ids))
    hidden = model(input_ids, positions, kv, md, inputs_embeds=embeds)
    return model.compute_logits(hidden)


@torch.no_grad()
def _hf(hf, ids: list[int], feats) -> torch.Tensor:
    import numpy as np

    input_ids = torch.tensor([ids])
    kwargs = hf_mm_kwargs(hf, input_ids)
    if feats.items:
        kwargs["pixel_values"] = torch.from_numpy(np.concatenate(
            [it.pixel_values for it in feats.items]))
        kwargs["image_grid_thw"] = torch.tensor([it.grid_thw for it in feats.items])
    return hf(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **kwargs
              ).logits[0].float()


@pytest.mark.parametrize("sizes", [[(84, 56)], [(140, 84), (56, 112)], []],
                         ids=["one-image", "two-images", "text-only"])
def test_logits_match_hf(tiny, sizes):
    path, hf, ours, arch = tiny
    proc = processor_for(arch, path)
    images = [random_image(w, h, seed=i) for i, (w, h) in enumerate(sizes)]
    ids, feats = proc.process(_prompt(len(images)), {"image": images} if images else {})
    assert ids.count(IMAGE_TOKEN) == sum(it.length for it in feats.items)
    ref = _hf(hf, ids, feats)
    got = _ours(ours, ids, feats)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)


def test_mrope_positions_match_hf_rope_index(tiny):
    path, hf, _, arch = tiny
    proc = processor_for(arch, path)
    images = [random_image(140, 84, 1), random_image(56, 112, 2)]
    ids, feats = proc.process(_prompt(2), {"image": images})
    input_ids = torch.tensor([ids])
    pos, delta = hf.model.get_rope_index(
        input_ids, (input_ids == IMAGE_TOKEN).int(),
        image_grid_thw=torch.tensor([it.grid_thw for it in feats.items]))
    assert torch.equal(pos[:, 0], torch.from_numpy(feats.mrope_positions))
    assert int(delta) == feats.mrope_delta


def test_vision_encoder_matches_hf_per_image(tiny):
    import numpy as np

    path, hf, ours, arch = tiny
    proc = processor_for(arch, path)
    images = [random_image(140, 84, 1), random_image(56, 112, 2)]
    _, feats = proc.process(_prompt(2), {"image": images})
    pixels = torch.from_numpy(np.concatenate([it.pixel_values for it in feats.items]))
    grids = [it.grid_thw for it in feats.items]
    with torch.no_grad():
        ref = hf.model.get_image_features(pixels, torch.tensor(grids)).pooler_output
        got = ours.encode_images(pixels, grids)
    for r, g in zip(ref, got, strict=True):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-5)


def test_processor_errors(tiny):
    path, _, _, arch = tiny
    proc = MultiModalProcessor.from_pretrained(arch, path)
    with pytest.raises(ValueError, match="1 image placeholders but 2 images"):
        proc.process(_prompt(1), {"image": [random_image(56, 56), random_image(56, 56)]})
    with pytest.raises(ValueError, match="unsupported modality"):
        proc.process(_prompt(0), {"audio": b"x"})
    with pytest.raises(ValueError, match="must be a PIL.Image"):
        proc.process(_prompt(1), {"image": "not an image"})


def test_transformers4_config_layout():
    """Released Qwen2.5-VL checkpoints (transformers 4.x): text fields at the top level,
    ``rope_scaling: {type: mrope, mrope_section}``, ``in_chans`` in the vision config."""
    from vllm_core.model_executor.hf_config import arch_config_from_hf
    from vllm_core.model_executor.models.qwen2_5_vl import mrope_section_of
    from vllm_core.model_executor.models.qwen2_5_vl_vision import VisionConfig

    cfg = {"architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl",
           "vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944,
           "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
           "rope_theta": 1000000.0, "sliding_window": 32768, "use_sliding_window": False,
           "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
           "image_token_id": 151655,
           "vision_config": {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420,
                             "num_heads": 16, "out_hidden_size": 3584, "in_chans": 3,
                             "patch_size": 14, "spatial_merge_size": 2,
                             "temporal_patch_size": 2, "window_size": 112,
                             "fullatt_block_indexes": [7, 15, 23, 31], "hidden_act": "silu"}}
    arch = arch_config_from_hf(cfg)
    assert (arch.rope_theta, arch.rope_scaling, arch.sliding_window) == (1e6, None, None)
    assert arch.attention_bias and arch.head_dim == 128
    assert mrope_section_of(arch.hf_config) == [16, 24, 24]
    vision = VisionConfig.from_hf(arch.hf_config["vision_config"])
    assert (vision.in_channels, vision.fullatt_block_indexes) == (3, (7, 15, 23, 31))
