"""Every quantized format loads exactly as its tool wrote it.

For each checkpoint (``quant_checkpoints``): (1) the kernel layout our loader builds
de-quantizes to exactly the reference's float weights, layer by layer (fused q/k/v and
gate/up rows included); (2) our model's logits match HF transformers running the reference
de-quantized weights, with W8A8 activations fake-quantized in the HF model by a forward hook
(``fake_quantize_inputs``), to float32 rounding. compressed-tensors checkpoints are also loaded
by transformers' own compressed-tensors integration (the tool's reader, with its activation
emulation): same logits (INT8 within the 127 vs 127.5 dynamic-scale convention, below).
"""

from __future__ import annotations

import pytest
import torch
from model_test_utils import hf_logits, new_kv_caches, run_step

from vllm_core.attention.backends.reference import ReferenceAttentionBackend
from vllm_core.config import ModelConfig
from vllm_core.model_executor.loader import get_model, load_arch_config
from vllm_core.model_executor.quantization.quantized_weights import (
    Fp8Weight,
    Int8Weight,
    WNA16Weight,
    dequantize_fp8,
    dequantize_wna16,
)
from vllm_core.model_executor.quantization.testing import (
    fake_quantize_inputs,
    hf_with_weights,
    read_tensors,
    tiny_llama,
    write_awq,
    write_compressed_tensors,
    write_fp8,
    write_gptq,
)

# name -> (writer, kwargs, activation quantization emulated in the oracle)
CASES = {
    "ct-w4a16-sym-g32": (write_compressed_tensors, dict(scheme_name="w4a16"), None),
    "ct-w4a16-asym-g32": (write_compressed_tensors, dict(scheme_name="w4a16",
                                                         symmetric=False), None),
    "ct-w4a16-channel": (write_compressed_tensors, dict(scheme_name="w4a16", group_size=-1),
                         None),
    "ct-w8a16-g32": (write_compressed_tensors, dict(scheme_name="w8a16"), None),
    "ct-w8a8-int8": (write_compressed_tensors, dict(scheme_name="w8a8-int8"), "int8"),
    "ct-w8a8-fp8-dynamic": (write_compressed_tensors, dict(scheme_name="w8a8-fp8-dynamic"),
                            "fp8"),
    "ct-w8a8-fp8-static": (write_compressed_tensors, dict(scheme_name="w8a8-fp8-static"),
                           "fp8"),
    "gptq-4bit-g32-sym": (write_gptq, dict(bits=4, group_size=32), None),
    "gptq-4bit-g32-asym-actorder": (write_gptq, dict(bits=4, group_size=32, desc_act=True,
                                                     sym=False), None),
    "gptq-8bit-channel": (write_gptq, dict(bits=8, group_size=-1), None),
    "gptq-4bit-v2": (write_gptq, dict(bits=4, group_size=16, sym=False,
                                      checkpoint_format="gptq_v2"), None),
    "awq-g32": (write_awq, dict(group_size=32), None),
    "fp8-tensor-static": (write_fp8, dict(static=True), "fp8"),
    "fp8-block16": (write_fp8, dict(block=(16, 16)), None),
}
PROMPTS = ((3, 50, 7, 91, 12, 40, 5, 66, 23), (8, 1, 77, 30))


@pytest.fixture(scope="module")
def hf():
    return tiny_llama()


# transformers' compressed-tensors reader (5.x with compressed-tensors 0.20) mis-sizes packed
# asymmetric zero points when it loads them, so the asymmetric case is checked against the
# package's decompressor only (test_dequantized_weights_equal_the_reference)
READER_CASES = sorted(c for c in CASES if c.startswith("ct-") and "asym" not in c)
_LOADED: dict[str, tuple] = {}


def _load(case: str, hf, tmp_path_factory) -> tuple:
    if case not in _LOADED:
        writer, kwargs, act = CASES[case]
        folder = str(tmp_path_factory.mktemp(case))
        reference = writer(folder, hf, **kwargs)
        arch = load_arch_config(folder)
        ours = get_model(ModelConfig(model=folder, dtype="float32", arch=arch),
                         ReferenceAttentionBackend, torch.device("cpu"))
        _LOADED[case] = (case, folder, reference, ours, arch, act)
    return _LOADED[case]


@pytest.fixture(scope="module", params=sorted(CASES))
def loaded(request, hf, tmp_path_factory):
    return _load(request.param, hf, tmp_path_factory)


def _dequantized(layer) -> torch.Tensor:
    qw = layer.qweights
    if isinstance(qw, WNA16Weight):
        return dequantize_wna16(qw)
    if isinstance(qw, Fp8Weight):
        return dequantize_fp8(qw)
    assert isinstance(qw, Int8Weight)
    return qw.weight.float() * qw.weight_scale.view(-1, 1)


def test_dequantized_weights_equal_the_reference(loaded):
    name, _, reference, ours, arch, _ = loaded
    fused = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj",
                                                                           "up_proj")}
    checked = 0
    for i in range(arch.num_hidden_layers):
        for block, leaf in (("self_attn", "qkv_proj"), ("self_attn", "o_proj"),
                            ("mlp", "gate_up_proj"), ("mlp", "down_proj")):
            layer = ours.get_submodule(f"model.layers.{i}.{block}.{leaf}")
            assert not hasattr(layer, "weight") or layer.weight.dtype != torch.float32, name
            parts = fused.get(leaf, (leaf,))
            want = torch.cat([reference[f"model.layers.{i}.{block}.{p}"] for p in parts])
            torch.testing.assert_close(_dequantized(layer), want, atol=0, rtol=0)
            checked += 1
    assert checked == 4 * arch.num_hidden_layers


def _our_logits(ours, arch) -> list[torch.Tensor]:
    return run_step(ours, new_kv_caches(arch, num_blocks=16), [list(p) for p in PROMPTS],
                    [0] * len(PROMPTS))


def test_logits_match_hf_on_the_reference_weights(loaded, hf):
    name, folder, reference, ours, arch, act = loaded
    oracle = hf_with_weights(hf, reference)
    if act is not None:
        static = "static" in name
        fake_quantize_inputs(oracle, act, read_tensors(folder) if static else None)
    for prompt, logits in zip(PROMPTS, _our_logits(ours, arch), strict=True):
        torch.testing.assert_close(logits, hf_logits(oracle, list(prompt)), atol=2e-4,
                                   rtol=2e-4)


@pytest.mark.parametrize("case", READER_CASES)
def test_compressed_tensors_checkpoints_match_transformers_reader(case, hf, tmp_path_factory):
    name, folder, _, ours, arch, _ = _load(case, hf, tmp_path_factory)
    from transformers import AutoModelForCausalLM

    reader = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    # compressed-tensors' dynamic INT8 scale is max|x| / 127.5 (its symmetric range is 255
    # wide); ours, like vLLM's kernels, max|x| / 127 (no clipping of the largest value)
    # (on this random model that moves logits by up to ~0.15 and flips a near-tie argmax)
    int8 = name == "ct-w8a8-int8"
    tol = 0.2 if int8 else 2e-4
    for prompt, logits in zip(PROMPTS, _our_logits(ours, arch), strict=True):
        want = hf_logits(reader, list(prompt))
        torch.testing.assert_close(logits, want, atol=tol, rtol=tol)
        if not int8:
            assert torch.equal(logits.argmax(-1), want.argmax(-1)), name
