"""FP8 experts (``quantization/fp8_moe.py``): the reference computation against a plain
per-(token, expert) loop, online ``--quantization fp8`` of a float MoE checkpoint, and an FP8
MoE checkpoint loaded with its scales, against the same model on the de-quantized weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from model_test_utils import new_kv_caches, run_step, tiny_hf_model

from vllm_core.attention.backends.reference import ReferenceAttentionBackend
from vllm_core.config import ModelConfig
from vllm_core.model_executor.layers.fused_moe import FusedMoE, select_experts
from vllm_core.model_executor.loader import get_model, load_arch_config
from vllm_core.model_executor.quantization.fp8_moe import (
    Fp8MoEMethod,
    Fp8MoEWeight,
    fp8_fused_moe_reference,
    quantize_experts,
)
from vllm_core.model_executor.quantization.testing import write_fp8_moe

MOE = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=24, norm_topk_prob=True,
           head_dim=16)


def _fp8_row(v: torch.Tensor) -> torch.Tensor:
    """One row quantized to e4m3 with scale max|v| / 448 and de-quantized."""
    s = v.abs().max().clamp(min=1e-12) / 448
    return (v / s).to(torch.float8_e4m3fn).float() * s


def _loop(x, w: Fp8MoEWeight, topk_weights, topk_ids):
    out = torch.zeros(x.shape, dtype=torch.float32)
    inter = w.w13.shape[1] // 2
    for t in range(x.shape[0]):
        for j, e in enumerate(topk_ids[t].tolist()):
            if e < 0:
                continue
            w13 = w.w13[e].float() * w.w13_scale[e].unsqueeze(1)
            gu = (_fp8_row(x[t].float()) @ w13.t()).to(x.dtype)
            act = (F.silu(gu[:inter]) * gu[inter:]).to(x.dtype)
            w2 = w.w2[e].float() * w.w2_scale[e].unsqueeze(1)
            y = (_fp8_row(act.float()) @ w2.t()).to(x.dtype).float()
            out[t] += topk_weights[t, j] * y
    return out.to(x.dtype)


def random_fp8_experts(e: int, h: int, i: int, seed: int = 0) -> Fp8MoEWeight:
    gen = torch.Generator().manual_seed(seed)
    w13, s13 = quantize_experts(0.1 * torch.randn(e, 2 * i, h, generator=gen))
    w2, s2 = quantize_experts(0.1 * torch.randn(e, h, i, generator=gen))
    return Fp8MoEWeight(w13, s13, w2, s2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_reference_equals_a_per_token_expert_loop(dtype):
    gen = torch.Generator().manual_seed(1)
    w = random_fp8_experts(6, 40, 24)
    x = torch.randn(7, 40, generator=gen).to(dtype)
    weights, ids = select_experts(torch.randn(7, 6, generator=gen), 3, renormalize=True)
    ids[1, 0] = -1                                   # an expert on another rank
    got = fp8_fused_moe_reference(x, w, weights, ids)
    torch.testing.assert_close(got, _loop(x, w, weights, ids), atol=1e-5, rtol=1e-5)


def test_quantize_experts_per_channel():
    w = torch.randn(3, 8, 16) * torch.logspace(-2, 2, 8).view(1, 8, 1)
    q, s = quantize_experts(w)
    assert q.dtype == torch.float8_e4m3fn and s.shape == (3, 8)
    assert torch.equal(q.float().abs().amax(-1), torch.full((3, 8), 448.0))
    torch.testing.assert_close(q.float() * s.unsqueeze(-1), w, atol=0, rtol=0.07)


def _logits(folder: str, quantization: str | None = None) -> tuple[torch.Tensor, object]:
    arch = load_arch_config(folder)
    model = get_model(ModelConfig(model=folder, dtype="float32", arch=arch,
                                  quantization=quantization),
                      ReferenceAttentionBackend, torch.device("cpu"))
    prompt = [5, 17, 33, 2, 80, 41, 9]
    return run_step(model, new_kv_caches(arch, 8), [prompt], [0])[0], model


def test_online_fp8_quantizes_the_experts(tmp_path):
    hf = tiny_hf_model("qwen3_moe", **MOE)
    hf.save_pretrained(str(tmp_path))
    _, float_model = _logits(str(tmp_path))
    _, model = _logits(str(tmp_path), "fp8")
    floats = [m for m in float_model.modules() if isinstance(m, FusedMoE)]
    experts = [m for m in model.modules() if isinstance(m, FusedMoE)]
    assert experts and all(isinstance(m.method, Fp8MoEMethod) and m.method.online
                           and not hasattr(m, "w13_weight") for m in experts)
    for f, q in zip(floats, experts, strict=True):     # per expert and channel, bit for bit
        for w, qw, qs in ((f.w13_weight, q.qweights.w13, q.qweights.w13_scale),
                          (f.w2_weight, q.qweights.w2, q.qweights.w2_scale)):
            want_q, want_s = quantize_experts(w)
            assert qw.dtype == torch.float8_e4m3fn
            assert torch.equal(qw.view(torch.uint8), want_q.view(torch.uint8))
            assert torch.equal(qs, want_s)


def test_fp8_moe_checkpoint_equals_its_dequantized_weights(tmp_path):
    hf = tiny_hf_model("qwen3_moe", **MOE)
    fp8, deq = str(tmp_path / "fp8"), str(tmp_path / "deq")
    write_fp8_moe(fp8, deq, hf)
    got, model = _logits(fp8)
    experts = next(m for m in model.modules() if isinstance(m, FusedMoE))
    assert isinstance(experts.method, Fp8MoEMethod) and not experts.method.online
    # per-tensor scales of gate and up broadcast over their own channels
    s = experts.qweights.w13_scale
    inter = s.shape[1] // 2
    assert torch.all(s[:, :inter] == s[:, :1]) and torch.all(s[:, inter:] == s[:, inter:inter + 1])
    # the checkpoint's float8 values and scales, as written
    from safetensors.torch import load_file
    t = load_file(f"{fp8}/model.safetensors")
    e0 = "model.layers.0.mlp.experts.1"
    assert torch.equal(experts.qweights.w13[1, inter:].view(torch.uint8),
                       t[f"{e0}.up_proj.weight"].view(torch.uint8))
    assert float(experts.qweights.w2_scale[1, 0]) == float(t[f"{e0}.down_proj.weight_scale"])
    want, _ = _logits(deq)
    # the only difference: activations quantized to e4m3 per token (relative error < 2^-4,
    # though a router flip on this random model moves single logits more)
    assert (got - want).abs().mean() < 0.03 * want.abs().max()


def test_compressed_tensors_fp8_dynamic_experts(tmp_path):
    """llm-compressor's FP8_DYNAMIC on a MoE model: per-channel expert scales load into the
    FP8 experts; logits follow the de-quantized model as for the fp8 format."""
    hf = tiny_hf_model("qwen3_moe", **MOE)
    ct, deq = str(tmp_path / "ct"), str(tmp_path / "deq")
    write_fp8_moe(ct, deq, hf, compressed_tensors=True)
    got, model = _logits(ct)
    experts = next(m for m in model.modules() if isinstance(m, FusedMoE))
    assert isinstance(experts.method, Fp8MoEMethod) and not experts.method.online
    from safetensors.torch import load_file
    t = load_file(f"{ct}/model.safetensors")
    inter = experts.qweights.w13_scale.shape[1] // 2
    want_scale = t["model.layers.0.mlp.experts.2.up_proj.weight_scale"].reshape(-1)
    assert torch.equal(experts.qweights.w13_scale[2, inter:], want_scale)
    want, _ = _logits(deq)
    assert (got - want).abs().mean() < 0.03 * want.abs().max()


def test_static_expert_activation_scales_are_refused(tmp_path):
    hf = tiny_hf_model("qwen3_moe", **MOE)
    fp8, deq = str(tmp_path / "fp8"), str(tmp_path / "deq")
    write_fp8_moe(fp8, deq, hf)
    from safetensors.torch import load_file, save_file
    t = load_file(f"{fp8}/model.safetensors")
    t["model.layers.0.mlp.experts.0.gate_proj.input_scale"] = torch.tensor(0.1)
    save_file(t, f"{fp8}/model.safetensors")
    with pytest.raises(ValueError, match="static activation scales of experts"):
        _logits(fp8)
