"""Phi-3's fused checkpoint tensors (``qkv_proj``, ``gate_up_proj``) under tensor parallelism:
TP rank 1 of 2 holds exactly its rows of q, k, v, gate and up, and reads them as slices, never
the whole fused tensor."""

from __future__ import annotations

import torch
from test_sharded_loading import context, recording

from vllm_core.attention.backends.reference import ReferenceAttentionBackend
from vllm_core.model_executor.hf_config import arch_config_from_hf
from vllm_core.model_executor.loader import build_model
from vllm_core.model_executor.testing import random_hf_causal_lm


def test_phi3_fused_tensors_are_split_per_rank(tmp_path):
    hf = random_hf_causal_lm("phi3", dict(
        vocab_size=101, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False), seed=4)
    hf.save_pretrained(str(tmp_path))
    sd = hf.state_dict()
    arch = arch_config_from_hf(hf.config.to_dict())
    model = build_model(arch, ReferenceAttentionBackend, torch.device("cpu"), torch.float32,
                        parallel=context(1, 2, 0, 1))
    reads: list = []
    loaded = model.load_weights(recording(str(tmp_path), reads))
    missing = {k for k in model.expected_weight_keys() - loaded if k.split("[")[0] not in loaded}
    assert not missing
    assert all("norm" in n for n, dim in reads if dim is None)   # fused tensors: slices only
    params = dict(model.named_parameters())
    qkv = sd["model.layers.0.self_attn.qkv_proj.weight"]       # rows: q 32 | k 16 | v 16
    ours = params["model.layers.0.self_attn.qkv_proj.weight"]  # rank 1: q 16..32, k/v 8..16
    assert torch.equal(ours, torch.cat((qkv[16:32], qkv[32 + 8:48], qkv[48 + 8:64])))
    gate_up = sd["model.layers.0.mlp.gate_up_proj.weight"]     # rows: gate 48 | up 48
    ours = params["model.layers.0.mlp.gate_up_proj.weight"]
    assert torch.equal(ours, torch.cat((gate_up[24:48], gate_up[72:96])))
