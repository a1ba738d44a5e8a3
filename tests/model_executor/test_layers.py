"""Layer ops against HuggingFace's own implementations."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.llama.modeling_llama import LlamaRMSNorm, apply_rotary_pos_emb

from vllm_core.model_executor.layers.ops import TorchLayerOps
from vllm_core.model_executor.layers.rotary_embedding import RotaryEmbedding, rope_inv_freq

OPS = TorchLayerOps()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_and_fused_add_match_hf(dtype):
    gen = torch.Generator().manual_seed(0)
    x = (3 * torch.randn(5, 48, generator=gen)).to(dtype)
    res = torch.randn(5, 48, generator=gen).to(dtype)
    hf = LlamaRMSNorm(48, eps=1e-5).to(dtype)
    with torch.no_grad():
        hf.weight.copy_(1 + 0.1 * torch.randn(48, generator=gen))
        assert torch.equal(OPS.rms_norm(x, hf.weight, 1e-5), hf(x))
        out, new_res = OPS.fused_add_rms_norm(x, res, hf.weight, 1e-5)
        assert torch.equal(new_res, x + res)
        assert torch.equal(out, hf(x + res))


def test_silu_and_mul():
    x = torch.randn(3, 10)
    assert torch.allclose(OPS.silu_and_mul(x), torch.nn.functional.silu(x[:, :5]) * x[:, 5:])


def test_llama3_inv_freq_matches_hf():
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    cfg = LlamaConfig(hidden_size=128 * 4, num_attention_heads=4, rope_theta=500000.0,
                      rope_scaling=scaling, max_position_embeddings=131072)
    hf_inv, scale = ROPE_INIT_FUNCTIONS["llama3"](cfg, torch.device("cpu"))
    assert scale == 1.0
    ours = rope_inv_freq(128, 500000.0, scaling)
    torch.testing.assert_close(ours, hf_inv.float(), atol=0, rtol=1e-6)
    base = rope_inv_freq(128, 500000.0, None)
    assert torch.equal(ours[:8], base[:8]) and torch.allclose(ours[-8:], base[-8:] / 8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rotary_matches_hf_apply(dtype):
    head, theta = 40, 10000.0
    rope = RotaryEmbedding(head, head, 64, theta, None, OPS)
    pos = torch.tensor([0, 5, 17, 63, 2])
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(5, 6, head, generator=gen).to(dtype)
    k = torch.randn(5, 2, head, generator=gen).to(dtype)
    inv = rope_inv_freq(head, theta, None)
    freqs = pos[:, None].float() * inv[None]
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos().to(dtype), emb.sin().to(dtype)
    # HF layout: [batch, heads, seq, dim] with cos [batch, seq, dim]
    q_ref, k_ref = apply_rotary_pos_emb(q.transpose(0, 1)[None], k.transpose(0, 1)[None],
                                        cos[None], sin[None])
    q_out, k_out = rope(pos, q, k)
    torch.testing.assert_close(q_out, q_ref[0].transpose(0, 1), atol=0, rtol=0)
    torch.testing.assert_close(k_out, k_ref[0].transpose(0, 1), atol=0, rtol=0)
