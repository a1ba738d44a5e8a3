"""A whole model with an FP8 KV cache: the Triton backend (rotary fused into the fp8 cache
write, paged attention widening it) gives the reference backend's greedy tokens and logits.
Under ``TRITON_INTERPRET=1`` without a GPU (conftest.py)."""

from __future__ import annotations

import pytest
import torch
from vllm_core_triton.attention import TritonAttentionBackend

from vllm_core.attention.backends.reference import ReferenceAttentionBackend
from vllm_core.config import ModelConfig
from vllm_core.model_executor.batch_utils import make_batch_layout
from vllm_core.model_executor.loader import get_model, load_arch_config
from vllm_core.model_executor.quantization.testing import tiny_llama

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
BLOCK = 16


@torch.no_grad()
def _greedy(folder: str, backend, kv_dtype: torch.dtype, prompt: list[int], steps: int):
    arch = load_arch_config(folder)
    model = get_model(ModelConfig(model=folder, dtype="float32", arch=arch), backend, DEVICE)
    shape = backend.get_kv_cache_shape(4, BLOCK, arch.num_key_value_heads, arch.head_dim)
    kv = [torch.zeros(shape, dtype=kv_dtype, device=DEVICE)
          for _ in range(arch.num_hidden_layers)]
    builder = backend.get_builder_cls()(BLOCK, DEVICE)
    tokens, logits, ctx, new = [], [], 0, prompt
    for _ in range(steps):
        layout = make_batch_layout([ctx], [len(new)], BLOCK, device=DEVICE)
        out = model.compute_logits(model(torch.tensor(new, device=DEVICE), layout.positions,
                                         kv, builder.build(layout.metadata)))[-1]
        logits.append(out.cpu())
        tokens.append(int(out.argmax()))
        ctx, new = ctx + len(new), [tokens[-1]]
    return tokens, torch.stack(logits)


@pytest.mark.parametrize("kv_dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_triton_fp8_cache_model_equals_reference_backend(tmp_path, kv_dtype):
    tiny_llama(seed=6, hidden_size=128).save_pretrained(str(tmp_path))
    prompt = [8, 9, 7, 9]      # the float cache's tokens are 11, 22, 63; e4m3 turns at the 2nd
    ref_tokens, ref_logits = _greedy(str(tmp_path), ReferenceAttentionBackend, kv_dtype,
                                     prompt, 3)
    tokens, logits = _greedy(str(tmp_path), TritonAttentionBackend, kv_dtype, prompt, 3)
    assert tokens == ref_tokens
    torch.testing.assert_close(logits, ref_logits, atol=1e-3, rtol=1e-3)


def test_triton_applies_calibrated_kv_scales_like_the_reference(tmp_path):
    """K/V 3000x larger than the model needs (``amplify_kv``) with the checkpoint's k/v
    scales: the Triton backend's fp8 cache gives the reference backend's tokens and logits."""
    from vllm_core.model_executor.quantization.testing import add_kv_cache_scales, amplify_kv

    hf = tiny_llama(seed=3, hidden_size=128)
    amplify_kv(hf, 3000.0)
    hf.save_pretrained(str(tmp_path))
    add_kv_cache_scales(str(tmp_path), [(40.0, 30.0), (50.0, 20.0)], output_scale_layers=(0,))
    prompt = [5, 17, 33, 2, 80, 41]
    ref_tokens, ref_logits = _greedy(str(tmp_path), ReferenceAttentionBackend,
                                     torch.float8_e4m3fn, prompt, 3)
    tokens, logits = _greedy(str(tmp_path), TritonAttentionBackend, torch.float8_e4m3fn,
                             prompt, 3)
    assert tokens == ref_tokens
    torch.testing.assert_close(logits, ref_logits, atol=1e-3, rtol=1e-3)
