"""Online INT8 (``--quantization int8``): per-channel weights made at load (float checkpoints
and de-quantized GGUF files), logits against HF transformers on the same int8 weights with
the activations fake-quantized per token, and the refusals."""

from __future__ import annotations

import pytest
import torch
from model_test_utils import hf_logits, new_kv_caches, run_step

from vllm_core.attention.backends.reference import ReferenceAttentionBackend
from vllm_core.config import ModelConfig
from vllm_core.model_executor.loader import get_model, load_arch_config
from vllm_core.model_executor.quantization.int8 import (
    Int8Config,
    quantize_weight_per_channel,
)
from vllm_core.model_executor.quantization.selection import (
    describe_methods,
    select_quantization,
)
from vllm_core.model_executor.quantization.testing import (
    fake_quantize_inputs,
    hf_with_weights,
    linear_names,
    tiny_llama,
)


def test_per_channel_quantization_is_symmetric_and_round_to_nearest():
    w = torch.tensor([[1.0, -0.5, 0.25, 0.0], [-2.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    q, s = quantize_weight_per_channel(w)
    assert q.dtype == torch.int8 and s.dtype == torch.float32 and s.shape == (3,)
    assert q.tolist() == [[127, -64, 32, 0], [-127, 64, 0, 0], [0, 0, 0, 0]]  # 63.5 -> 64
    assert torch.equal(quantize_weight_per_channel(-w)[0], -q)      # never -128
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 96, generator=g)
    q, s = quantize_weight_per_channel(w)
    assert (q.float() * s[:, None] - w).abs().max() <= s.max() / 2 + 1e-7


def test_selection_online_on_float_and_gguf_and_refusals():
    assert isinstance(select_quantization({}, "int8", platform="cpu", dtype="float32"),
                      Int8Config)
    assert isinstance(select_quantization({}, "INT8", is_gguf=True), Int8Config)
    assert isinstance(select_quantization({}, "int8", is_gguf=True, gguf_dequantize=True),
                      Int8Config)
    with pytest.raises(ValueError, match="'int8' is online quantization only"):
        select_quantization({"quantization_config": {"quant_method": "int8"}}, None)
    with pytest.raises(ValueError, match="the checkpoint is quantized with 'gptq'"):
        select_quantization({"quantization_config": {"quant_method": "gptq", "bits": 4}},
                            "int8")
    with pytest.raises(ValueError, match=r"a method that quantizes at load \(fp8, int8\)"):
        select_quantization({}, "awq", is_gguf=True)
    assert any(line.startswith("int8: available") and "online" in line
               for line in describe_methods("cpu", "float32"))


def test_online_int8_logits_match_hf_on_the_same_int8_weights(tmp_path):
    hf = tiny_llama()
    folder = str(tmp_path)
    hf.save_pretrained(folder)
    arch = load_arch_config(folder)
    ours = get_model(ModelConfig(model=folder, dtype="float32", arch=arch, quantization="int8"),
                     ReferenceAttentionBackend, torch.device("cpu"))
    reference = {}
    for name in linear_names(hf):
        q, s = quantize_weight_per_channel(hf.get_submodule(name).weight.detach())
        reference[name] = q.float() * s[:, None]
    layer = ours.get_submodule("model.layers.0.self_attn.qkv_proj")
    assert layer.qweights.weight.dtype == torch.int8 and not hasattr(layer, "weight")
    assert layer.qweights.input_scale is None
    assert "int8 online" in layer.method.describe(layer)
    oracle = fake_quantize_inputs(hf_with_weights(hf, reference), "int8")
    prompt = [5, 17, 33, 2, 80, 41]
    got = run_step(ours, new_kv_caches(arch, num_blocks=8), [prompt], [0])[0]
    torch.testing.assert_close(got, hf_logits(oracle, prompt), atol=2e-4, rtol=2e-4)


def test_dummy_weights_are_quantized_at_load(tmp_path):
    """``load_format="dummy"`` (how the GPU benchmarks run the 8B shape) fills the float
    weight, then quantizes it like a loaded one."""
    hf = tiny_llama()
    hf.config.save_pretrained(tmp_path)
    arch = load_arch_config(str(tmp_path))
    model = get_model(ModelConfig(model=str(tmp_path), dtype="float32", arch=arch,
                                  quantization="int8", load_format="dummy"),
                      ReferenceAttentionBackend, torch.device("cpu"))
    qw = model.get_submodule("model.layers.1.mlp.down_proj").qweights
    assert qw.weight.dtype == torch.int8 and int(qw.weight.abs().max()) == 127
    assert bool((qw.weight_scale > 0).all())
    logits = run_step(model, new_kv_caches(arch, num_blocks=8), [[3, 4, 5]], [0])[0]
    assert bool(torch.isfinite(logits).all())
