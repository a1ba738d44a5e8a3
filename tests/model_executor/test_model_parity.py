"""Logits parity with HuggingFace transformers for every supported architecture, loading our
model from the HF model's own safetensors checkpoint and running the reference backend."""

from __future__ import annotations

import json
import os

import pytest
import torch
from model_test_utils import hf_logits, new_kv_caches, run_step, tiny_hf_model

from vllm_core.attention.backends.reference import ReferenceAttentionBackend
from vllm_core.config import ModelConfig
from vllm_core.model_executor.loader import get_model, load_arch_config

LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 8}

PHI3_ROPE = {"type": "longrope", "long_factor": [1.0, 1.1, 1.4, 2.0, 3.0, 5.0, 8.0, 9.0],
             "short_factor": [1.0, 1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0]}

CASES = {
    # head_dim 40, 6 q heads / 2 kv heads, llama3 rope scaling that bites at these lengths
    "llama3": ("llama", dict(hidden_size=240, num_attention_heads=6, num_key_value_heads=2,
                             rope_theta=500000.0, rope_scaling=LLAMA3_ROPE)),
    "llama-linear-tied": ("llama", dict(rope_scaling={"rope_type": "linear", "factor": 2.0},
                                        tie_word_embeddings=True, num_key_value_heads=4)),
    # head_dim 80 given explicitly (hidden 64), sliding window shorter than the prompts
    "mistral": ("mistral", dict(head_dim=80, num_attention_heads=4, num_key_value_heads=1,
                                sliding_window=5)),
    "qwen2-tied": ("qwen2", dict(hidden_size=96, num_attention_heads=6, num_key_value_heads=2,
                                 tie_word_embeddings=True)),
    # explicit head_dim 40 != 64 / 6; q/k norm
    "qwen3": ("qwen3", dict(head_dim=40, num_attention_heads=6, num_key_value_heads=2)),
    # fused qkv / gate_up in the checkpoint, LongRoPE (short factors: prompts < 32 tokens),
    # a sliding window shorter than the prompts
    "phi3": ("phi3", dict(rope_scaling=PHI3_ROPE, original_max_position_embeddings=32,
                          pad_token_id=0, eos_token_id=1, bos_token_id=2,
                          sliding_window=6)),
    # Phi-4-mini shape: partial rotary (3/4 of each head), tied embeddings
    "phi4-mini": ("phi3", dict(partial_rotary_factor=0.75, tie_word_embeddings=True,
                               pad_token_id=0, eos_token_id=1, bos_token_id=2,
                               rope_scaling={**PHI3_ROPE, "long_factor": [1.5] * 6,
                                             "short_factor": [1.0, 1.2, 1.5, 2.0, 3.0, 4.0]},
                               original_max_position_embeddings=32)),
    # interleaved sliding (window 4) and global layers, per-type rope bases, (1 + w) norms,
    # q/k norms, GELU-tanh, embedding scaling, final logit soft-capping
    "gemma3": ("gemma3_text", dict(num_hidden_layers=3, head_dim=32, num_key_value_heads=1,
                                   sliding_window=4, sliding_window_pattern=2,
                                   query_pre_attn_scalar=24, final_logit_softcapping=3.0,
                                   rope_scaling={"rope_type": "linear", "factor": 4.0},
                                   hidden_activation="gelu_pytorch_tanh")),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def pair(request, tmp_path_factory):
    model_type, overrides = CASES[request.param]
    hf = tiny_hf_model(model_type, **overrides)
    folder = str(tmp_path_factory.mktemp(request.param))
    # the llama3 case is saved in several shards (with model.safetensors.index.json)
    shard = "30KB" if request.param == "llama3" else "50GB"
    hf.save_pretrained(folder, max_shard_size=shard)
    arch = load_arch_config(folder)
    ours = get_model(ModelConfig(model=folder, dtype="float32", arch=arch),
                     ReferenceAttentionBackend, torch.device("cpu"))
    return request.param, folder, hf, ours, arch


def test_arch_config_matches_case(pair):
    name, folder, hf, _, arch = pair
    assert arch.num_attention_heads == hf.config.num_attention_heads
    cfg = hf.config
    assert arch.head_dim == (getattr(cfg, "head_dim", None)
                             or cfg.hidden_size // cfg.num_attention_heads)
    assert arch.tie_word_embeddings == bool(hf.config.tie_word_embeddings)
    if name == "llama3":
        assert len(json.load(open(os.path.join(folder, "model.safetensors.index.json")))
                   ["weight_map"]) > 0
        assert arch.rope_scaling["rope_type"] == "llama3"
    if name.startswith("qwen2"):
        assert arch.attention_bias
    if name == "qwen3":
        assert arch.qk_norm and arch.head_dim == 40
    if name == "mistral":
        assert arch.sliding_window == 5
    if name.startswith("phi"):
        assert arch.rope_scaling["rope_type"] == "longrope"
        assert arch.rope_scaling["original_max_position_embeddings"] == 32
        assert arch.partial_rotary_factor == (0.75 if name == "phi4-mini" else 1.0)
    if name == "gemma3":
        assert arch.layer_types == ("sliding_attention", "full_attention", "sliding_attention")
        assert (arch.sliding_window, arch.local_rope_theta) == (4, 10000.0)
        assert arch.rope_scaling == {"rope_type": "linear", "factor": 4.0}
        assert arch.final_logit_softcapping == 3.0 and arch.query_pre_attn_scalar == 24


def test_prefill_batch_matches_hf(pair):
    """Three prompts of different lengths in one step (flat token axis, paged cache)."""
    _, _, hf, ours, arch = pair
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, arch.vocab_size, (n,), generator=gen).tolist()
               for n in (7, 13, 2)]
    kv = new_kv_caches(arch, num_blocks=16)
    got = run_step(ours, kv, prompts, [0, 0, 0])
    for prompt, logits in zip(prompts, got, strict=True):
        torch.testing.assert_close(logits, hf_logits(hf, prompt), atol=1e-4, rtol=1e-4)


def test_decode_and_chunked_prefill_read_the_paged_cache(pair):
    """Step 1: prefill A fully and B's first chunk. Step 2 (mixed batch): decode one token of
    A, prefill B's second chunk; both attend through scattered blocks of the cache."""
    _, _, hf, ours, arch = pair
    gen = torch.Generator().manual_seed(2)
    a = torch.randint(0, arch.vocab_size, (10,), generator=gen).tolist()
    b = torch.randint(0, arch.vocab_size, (15,), generator=gen).tolist()
    blocks = [[7, 2, 9], [3, 11, 5, 1]]           # non-contiguous, block ids out of order
    kv = new_kv_caches(arch, num_blocks=12)
    run_step(ours, kv, [a[:9], b[:6]], [0, 0], block_ids=blocks)
    dec, chunk = run_step(ours, kv, [a[9:], b[6:]], [9, 6], block_ids=blocks)
    torch.testing.assert_close(dec, hf_logits(hf, a)[9:], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(chunk, hf_logits(hf, b)[6:], atol=1e-4, rtol=1e-4)


def test_bfloat16_close_to_hf(pair):
    """bf16 weights and cache: same argmax as HF's bf16 model on most positions."""
    name, folder, hf, _, arch = pair
    ours = get_model(ModelConfig(model=folder, dtype="bfloat16", arch=arch),
                     ReferenceAttentionBackend, torch.device("cpu"))
    assert ours.model.embed_tokens.weight.dtype == torch.bfloat16
    prompt = torch.randint(0, arch.vocab_size, (9,),
                           generator=torch.Generator().manual_seed(3)).tolist()
    (got,) = run_step(ours, new_kv_caches(arch, 8, torch.bfloat16), [prompt], [0])
    ref = hf_logits(hf, prompt)
    assert (got.argmax(-1) == ref.argmax(-1)).float().mean() >= 0.75
    assert (got - ref).abs().max() < 0.1 * ref.abs().max() + 0.5
