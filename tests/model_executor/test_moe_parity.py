"""Mixture-of-experts models against HuggingFace transformers on random weights: Mixtral,
Qwen2-MoE (shared expert, dense layers by decoder_sparse_step) and Qwen3-MoE (top-8 with
norm_topk_prob, a dense layer from mlp_only_layers), loaded from HF's own safetensors."""

from __future__ import annotations

import pytest
import torch
from model_test_utils import hf_logits, new_kv_caches, run_step, tiny_hf_model

from vllm_core.attention.backends.reference import ReferenceAttentionBackend
from vllm_core.config import ModelConfig
from vllm_core.model_executor.layers.fused_moe import FusedMoE, moe_config_from_arch
from vllm_core.model_executor.loader import get_model, load_arch_config
from vllm_core.model_executor.models.decoder import GatedMLP

CASES = {
    "mixtral": ("mixtral", dict(num_local_experts=4, num_experts_per_tok=2, sliding_window=6)),
    "qwen2_moe": ("qwen2_moe", dict(num_experts=6, num_experts_per_tok=2,
                                    moe_intermediate_size=40, norm_topk_prob=False,
                                    shared_expert_intermediate_size=56,
                                    decoder_sparse_step=2, num_hidden_layers=3)),
    "qwen3_moe": ("qwen3_moe", dict(num_experts=12, num_experts_per_tok=8,
                                    moe_intermediate_size=24, norm_topk_prob=True, head_dim=16,
                                    num_hidden_layers=3, mlp_only_layers=[1])),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def pair(request, tmp_path_factory):
    model_type, overrides = CASES[request.param]
    hf = tiny_hf_model(model_type, **overrides)
    folder = str(tmp_path_factory.mktemp(request.param))
    hf.save_pretrained(folder)
    arch = load_arch_config(folder)
    ours = get_model(ModelConfig(model=folder, dtype="float32", arch=arch),
                     ReferenceAttentionBackend, torch.device("cpu"))
    return request.param, folder, hf, ours, arch


def test_sparse_and_dense_layers_follow_the_config(pair):
    name, _, hf, ours, arch = pair
    moe = moe_config_from_arch(arch)
    kinds = [type(layer.mlp) for layer in ours.model.layers]
    hf_kinds = ["Experts" in "".join(type(m).__name__ for m in layer.mlp.modules())
                for layer in hf.model.layers]
    assert [k is not GatedMLP for k in kinds] == hf_kinds
    if name == "qwen2_moe":
        assert hf_kinds == [False, True, False] and moe.shared_expert_intermediate_size == 56
        assert arch.attention_bias
    if name == "qwen3_moe":
        assert hf_kinds == [True, False, True] and moe.top_k == 8 and moe.renormalize
        assert arch.qk_norm
    experts = [m for m in ours.modules() if isinstance(m, FusedMoE)]
    assert experts and all(e.w13_weight.shape == (moe.num_experts,
                                                  2 * moe.expert_intermediate_size,
                                                  arch.hidden_size) for e in experts)


def test_prefill_batch_matches_hf(pair):
    _, _, hf, ours, arch = pair
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, arch.vocab_size, (n,), generator=gen).tolist()
               for n in (9, 14, 3)]
    got = run_step(ours, new_kv_caches(arch, num_blocks=16), prompts, [0, 0, 0])
    for prompt, logits in zip(prompts, got, strict=True):
        torch.testing.assert_close(logits, hf_logits(hf, prompt), atol=1e-4, rtol=1e-4)


def test_decode_steps_match_hf_greedy(pair):
    """Greedy decoding through the paged cache, one token per step (the decode-sized expert
    path), gives HF's greedy tokens."""
    _, _, hf, ours, arch = pair
    prompt = torch.randint(0, arch.vocab_size, (6,),
                           generator=torch.Generator().manual_seed(2)).tolist()
    kv = new_kv_caches(arch, num_blocks=12)
    tokens = list(prompt)
    (logits,) = run_step(ours, kv, [prompt], [0])
    for _ in range(8):
        tokens.append(int(logits[-1].argmax()))
        (logits,) = run_step(ours, kv, [[tokens[-1]]], [len(tokens) - 1])
    with torch.no_grad():
        ref = hf.generate(torch.tensor([prompt]), max_new_tokens=9, do_sample=False,
                          min_new_tokens=9)[0].tolist()
    assert tokens + [int(logits[-1].argmax())] == ref


def test_bfloat16_close_to_hf(pair):
    _, folder, hf, _, arch = pair
    ours = get_model(ModelConfig(model=folder, dtype="bfloat16", arch=arch),
                     ReferenceAttentionBackend, torch.device("cpu"))
    experts = next(m for m in ours.modules() if isinstance(m, FusedMoE))
    assert experts.w13_weight.dtype == torch.bfloat16
    prompt = torch.randint(0, arch.vocab_size, (9,),
                           generator=torch.Generator().manual_seed(3)).tolist()
    (got,) = run_step(ours, new_kv_caches(arch, 8, torch.bfloat16), [prompt], [0])
    ref = hf_logits(hf, prompt)
    assert (got.argmax(-1) == ref.argmax(-1)).float().mean() >= 0.75
    assert (got - ref).abs().max() < 0.1 * ref.abs().max() + 0.5


def test_missing_expert_tensor_is_named(tmp_path):
    from safetensors.torch import load_file, save_file

    hf = tiny_hf_model("mixtral", num_local_experts=2, num_experts_per_tok=1)
    hf.save_pretrained(str(tmp_path))
    path = tmp_path / "model.safetensors"
    tensors = load_file(str(path))
    del tensors["model.layers.1.block_sparse_moe.experts.1.w3.weight"]
    save_file(tensors, str(path), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"expert 1 up"):
        get_model(ModelConfig(model=str(tmp_path), dtype="float32"),
                  ReferenceAttentionBackend, torch.device("cpu"))
