"""config.json of the issue-19 families in both transformers generations, refusals with clear
errors, and LongRoPE's long-factor rows against HF's own rotary embedding."""

from __future__ import annotations

import pytest
import torch

from vllm_core.model_executor.hf_config import arch_config_from_hf
from vllm_core.model_executor.layers.ops import TorchLayerOps
from vllm_core.model_executor.layers.rotary_embedding import RotaryEmbedding

BASE = {"vocab_size": 100, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 7,
        "num_attention_heads": 4, "num_key_value_heads": 2}


def test_gemma3_transformers4_config():
    """Gemma 3 as on the Hub (4.x): top-level global rope, rope_local_base_freq, pattern."""
    arch = arch_config_from_hf({
        **BASE, "architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text",
        "head_dim": 32, "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0,
        "rope_scaling": {"rope_type": "linear", "factor": 8.0}, "sliding_window": 512,
        "sliding_window_pattern": 6, "query_pre_attn_scalar": 32,
        "hidden_activation": "gelu_pytorch_tanh", "final_logit_softcapping": None})
    assert arch.layer_types == tuple("full_attention" if i == 5 else "sliding_attention"
                                     for i in range(7))
    assert (arch.rope_theta, arch.local_rope_theta) == (1000000.0, 10000.0)
    assert arch.rope_scaling == {"rope_type": "linear", "factor": 8.0}
    assert arch.tie_word_embeddings and arch.qk_norm and arch.hidden_act == "gelu_pytorch_tanh"
    assert arch.final_logit_softcapping is None and arch.sliding_window == 512


def test_phi3_su_config_with_top_level_original_length():
    n = 8   # head_dim 16 -> 8 frequencies
    arch = arch_config_from_hf({
        **BASE, "architectures": ["Phi3ForCausalLM"], "model_type": "phi3",
        "max_position_embeddings": 131072, "original_max_position_embeddings": 4096,
        "rope_scaling": {"type": "su", "long_factor": [2.0] * n, "short_factor": [1.0] * n},
        "sliding_window": 262144, "partial_rotary_factor": 0.75})
    assert arch.rope_scaling["rope_type"] == "longrope"
    assert arch.rope_scaling["original_max_position_embeddings"] == 4096
    assert arch.partial_rotary_factor == 0.75 and arch.sliding_window == 262144


@pytest.mark.parametrize("extra,message", [
    ({"model_type": "gemma3_text", "attn_logit_softcapping": 50.0}, "attn_logit_softcapping"),
    ({"model_type": "gemma3_text", "use_bidirectional_attention": True}, "bidirectional"),
    ({"model_type": "gemma3_text", "hidden_activation": "relu"}, "hidden_activation"),
    ({"model_type": "phi3", "rope_scaling": {"type": "longrope", "long_factor": [1.0],
                                             "short_factor": [1.0]}},
     "original_max_position_embeddings"),
])
def test_unsupported_family_settings_are_refused(extra, message):
    with pytest.raises(ValueError, match=message):
        arch_config_from_hf({**BASE, **extra})


def test_longrope_rows_match_hf_short_and_long():
    """Rows below original_max_position_embeddings equal HF's short-factor rotary, the rows
    above HF's long-factor one (what HF uses once a sequence is longer), both scaled by the
    attention factor."""
    from transformers import AutoConfig
    from transformers.models.phi3.modeling_phi3 import Phi3RotaryEmbedding

    n, original, max_pos = 8, 16, 64
    scaling = {"type": "longrope", "long_factor": [1.0 + i for i in range(n)],
               "short_factor": [1.0 + i / 8 for i in range(n)]}
    cfg = AutoConfig.for_model("phi3", **BASE, rope_scaling=dict(scaling),
                               original_max_position_embeddings=original,
                               max_position_embeddings=max_pos)
    arch = arch_config_from_hf({**cfg.to_dict(), "architectures": ["Phi3ForCausalLM"]})
    ours = RotaryEmbedding(16, 16, max_pos, arch.rope_theta, arch.rope_scaling,
                           TorchLayerOps()).cos_sin_cache
    hf = Phi3RotaryEmbedding(cfg)
    x = torch.zeros(1, dtype=torch.float32)
    for positions in (torch.arange(original), torch.arange(max_pos)):
        cos, sin = hf(x, positions[None])          # HF: long factors iff len > original
        rows = ours[positions]
        got = rows if len(positions) == original else rows[original:]
        want_cos = cos[0, :, :n] if len(positions) == original else cos[0, original:, :n]
        want_sin = sin[0, :, :n] if len(positions) == original else sin[0, original:, :n]
        torch.testing.assert_close(got, torch.cat((want_cos, want_sin), -1))
