"""Choosing a quantization method: from the checkpoint, forced, refused in words; plugins add
methods through the hook; online FP8; dummy weights; the engine end to end."""

from __future__ import annotations

import os
from typing import ClassVar

import pytest
import torch
from model_test_utils import hf_logits, new_kv_caches, run_step

from vllm_core.attention.backends.reference import ReferenceAttentionBackend
from vllm_core.config import ModelConfig
from vllm_core.model_executor.layers.weight_method import UnquantizedLinearMethod
from vllm_core.model_executor.loader import get_model, load_arch_config
from vllm_core.model_executor.quantization.base import QuantizationConfig
from vllm_core.model_executor.quantization.quantized_weights import dequantize_fp8
from vllm_core.model_executor.quantization.registry import (
    register_quantization_method,
    unregister_quantization_method,
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
    write_gptq,
)
from vllm_core.model_executor.testing import hf_greedy_tokens, write_wordlevel_tokenizer

GPTQ = {"quantization_config": {"quant_method": "gptq", "bits": 4, "group_size": 128,
                                "desc_act": False, "sym": True}}


class CudaOnlyConfig(QuantizationConfig):
    """A vendor's method: runs on one platform, in bfloat16 only."""

    name: ClassVar[str] = "t_cuda_only"
    platforms: ClassVar[tuple[str, ...]] = ("cuda",)
    activation_dtypes: ClassVar[tuple[str, ...]] = ("bfloat16",)
    online: ClassVar[bool] = True

    @classmethod
    def from_checkpoint(cls, qc):
        return cls()

    @classmethod
    def for_online(cls):
        return cls()

    def linear_method(self, prefix):
        return UnquantizedLinearMethod()


def test_checkpoint_method_is_selected_and_may_be_repeated():
    assert select_quantization(GPTQ, None).summary().startswith("gptq bits=4 group_size=128")
    assert select_quantization(GPTQ, "gptq").name == "gptq"
    ct = {"quantization_config": {"quant_method": "compressed_tensors", "format":
                                  "int-quantized", "config_groups": {"g": {
                                      "targets": ["Linear"],
                                      "weights": {"num_bits": 8, "type": "int",
                                                  "strategy": "channel"},
                                      "input_activations": {"num_bits": 8, "type": "int",
                                                            "strategy": "token",
                                                            "dynamic": True}}}}}
    assert select_quantization(ct, "compressed-tensors").name == "compressed-tensors"
    assert select_quantization({}, None) is None


@pytest.mark.parametrize("hf_config,requested,is_gguf,message", [
    (GPTQ, "awq", False, "the checkpoint is quantized with 'gptq'"),
    ({}, "gptq", False, "needs a checkpoint quantized by its tool"),
    ({}, "gptq", False, "quantize a float checkpoint at load: fp8, int8"),
    ({}, "nope", False, "--quantization 'nope' is not supported; supported methods: awq, "
                        "compressed-tensors, fp8, gguf, gptq, int8"),
    ({"quantization_config": {"quant_method": "bitsandbytes"}}, None, False,
     "the checkpoint's quantization method 'bitsandbytes' is not supported"),
    ({"quantization_config": {"quant_method": "gptq", "bits": 3}}, None, False,
     "GPTQ with bits=3 is not supported (4 and 8 are)"),
    ({"quantization_config": {"quant_method": "awq", "version": "gemv"}}, None, False,
     "AWQ version 'gemv' is not supported"),
    ({"quantization_config": {"quant_method": "compressed-tensors", "config_groups": {
        "g": {"targets": ["Linear"], "weights": {"num_bits": 4, "type": "int",
                                                 "strategy": "group", "group_size": 32},
              "input_activations": {"num_bits": 8, "type": "int", "strategy": "token",
                                    "dynamic": True}}}}}, None, False,
     "W4A8 int/int is not supported"),
    ({}, "awq", True, "this is a GGUF file (its own quantization)"),
    ({}, "gguf", False, "--quantization gguf needs a .gguf model file"),
])
def test_refusals_say_why(hf_config, requested, is_gguf, message):
    with pytest.raises(ValueError) as err:
        select_quantization(hf_config, requested, is_gguf=is_gguf)
    assert message in str(err.value)


def test_gguf_keeps_its_own_path():
    assert select_quantization({}, "gguf", is_gguf=True) is None
    assert select_quantization({}, None, is_gguf=True) is None


def test_a_plugin_method_is_selected_and_its_platform_limits_are_explained():
    register_quantization_method("t_cuda_only", f"{__name__}.CudaOnlyConfig")
    try:
        assert isinstance(select_quantization({}, "t_cuda_only", platform="cuda",
                                              dtype="bfloat16"), CudaOnlyConfig)
        with pytest.raises(ValueError) as err:
            select_quantization({}, "t_cuda_only", platform="cpu", dtype="float32")
        text = str(err.value)
        assert "quantization 't_cuda_only' cannot run here" in text
        assert "platform 'cpu' has no kernel for it (supported: cuda)" in text
        assert "dtype float32 is not supported (use one of bfloat16)" in text
        lines = describe_methods("cpu", "float32")
        assert any(line.startswith("t_cuda_only: not on cpu") for line in lines)
        assert any(line.startswith("gptq: available") for line in lines)
    finally:
        unregister_quantization_method("t_cuda_only")


def test_platforms_cli_lists_the_methods():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "vllm_core.entrypoints.cli.main", "platforms"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "Quantization methods" in out.stdout
    assert "compressed-tensors: available" in out.stdout


@pytest.fixture(scope="module")
def float_folder(tmp_path_factory):
    hf = tiny_llama()
    folder = str(tmp_path_factory.mktemp("float"))
    hf.save_pretrained(folder)
    return hf, folder


def test_online_fp8_quantizes_every_linear_per_channel(float_folder):
    hf, folder = float_folder
    arch = load_arch_config(folder)
    ours = get_model(ModelConfig(model=folder, dtype="float32", arch=arch, quantization="fp8"),
                     ReferenceAttentionBackend, torch.device("cpu"))
    reference = {}
    for name in linear_names(hf):
        w = hf.get_submodule(name).weight.detach().float()
        scale = w.abs().amax(1, keepdim=True) / 448.0
        reference[name] = (w / scale).to(torch.float8_e4m3fn).float() * scale
    layer = ours.get_submodule("model.layers.0.mlp.gate_up_proj")
    assert layer.qweights.weight.dtype == torch.float8_e4m3fn and not hasattr(layer, "weight")
    torch.testing.assert_close(dequantize_fp8(layer.qweights), torch.cat(
        [reference["model.layers.0.mlp.gate_proj"], reference["model.layers.0.mlp.up_proj"]]),
        atol=0, rtol=0)
    oracle = fake_quantize_inputs(hf_with_weights(hf, reference), "fp8")
    prompt = [5, 17, 33, 2, 80, 41]
    got = run_step(ours, new_kv_caches(arch, num_blocks=8), [prompt], [0])[0]
    torch.testing.assert_close(got, hf_logits(oracle, prompt), atol=2e-4, rtol=2e-4)


def test_dummy_weights_fill_quantized_parameters_validly(tmp_path):
    hf = tiny_llama()
    reference = write_gptq(str(tmp_path), hf, bits=4, group_size=32, desc_act=True)
    assert reference
    arch = load_arch_config(str(tmp_path))
    ours = get_model(ModelConfig(model=str(tmp_path), dtype="float32", arch=arch,
                                 load_format="dummy"),
                     ReferenceAttentionBackend, torch.device("cpu"))
    qw = ours.get_submodule("model.layers.1.self_attn.o_proj").qweights
    assert qw.qweight.dtype == torch.int32 and qw.g_idx is None     # trivial order: dropped
    logits = run_step(ours, new_kv_caches(arch, num_blocks=8), [[1, 2, 3]], [0])[0]
    assert torch.isfinite(logits).all()


@pytest.mark.slow
def test_engine_generates_the_reference_models_greedy_tokens(tmp_path):
    """LLM(...) on a GPTQ act-order checkpoint: the greedy tokens of HF transformers running
    the reference de-quantized weights."""
    from vllm_core import LLM, SamplingParams

    hf = tiny_llama(seed=4)
    folder = str(tmp_path)
    reference = write_gptq(folder, hf, bits=4, group_size=32, desc_act=True, sym=False)
    write_wordlevel_tokenizer(folder, hf.config.vocab_size)
    oracle = hf_with_weights(hf, reference)
    prompt = [3, 14, 15, 92, 65, 35]
    want = hf_greedy_tokens(oracle, prompt, 12)
    llm = LLM(model=folder, dtype="float32", max_model_len=64, kv_cache_space_gib=0.01,
              quantization="gptq")
    out = llm.generate({"prompt_token_ids": prompt},
                       SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True),
                       use_tqdm=False)
    assert list(out[0].outputs[0].token_ids) == want
    assert os.path.isfile(os.path.join(folder, "config.json"))
