"""GGUF kept quantized: every supported block type converts to the WNA16 layout with the
values of ``gguf.quants.dequantize`` (fp32), the per-layer plan (bits / group / float
fallback), selection with ``--gguf-dequantize``, and a tiny llama GGUF mixing all six types
whose logits equal HF transformers' on the de-quantized weights."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
from gguf_test_metadata import add_decoder_hparams
from model_test_utils import hf_logits, new_kv_caches, run_step, tiny_hf_model
from test_gguf_loading import gguf_name, llama_cpp_permute

from vllm_core.attention.backends.reference import ReferenceAttentionBackend
from vllm_core.config import ModelConfig
from vllm_core.model_executor.gguf_loader import unpermute_qk
from vllm_core.model_executor.loader import get_model, load_arch_config
from vllm_core.model_executor.quantization.gguf import GGUFConfig, GGUFLinearMethod
from vllm_core.model_executor.quantization.gguf_blocks import FORMATS, decode_rows
from vllm_core.model_executor.quantization.quantized_weights import dequantize_wna16
from vllm_core.model_executor.quantization.selection import select_quantization

T = gguf.GGMLQuantizationType
QUANTIZABLE = ("Q4_0", "Q4_1", "Q8_0")      # gguf.quants.quantize writes these


def gguf_blocks(kind: str, weight: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """GGUF bytes of ``weight`` [N, K]: quantized by the ``gguf`` package where it can, else
    (K types) random blocks with realistic float16 scales (every bit pattern of the integer
    fields, including sub-block scales of 0, occurs)."""
    if kind in QUANTIZABLE:
        return gguf.quants.quantize(weight, getattr(T, kind))
    fmt = FORMATS[kind]
    n, k = weight.shape
    nb = n * k // fmt.block
    b = rng.integers(0, 256, (nb, fmt.block_bytes), dtype=np.uint8)
    offsets = (208,) if kind == "Q6_K" else (0, 2)
    for off in offsets:
        b[:, off:off + 2] = (np.abs(rng.normal(0, 2e-3, (nb, 1))) + 1e-4).astype(
            np.float16).view(np.uint8)
    return b.reshape(n, -1)


@pytest.mark.parametrize("kind", list(FORMATS))
def test_blocks_convert_to_wna16_with_ggufs_values(kind):
    rng = np.random.default_rng(0)
    n, k = 48, 512
    data = gguf_blocks(kind, rng.normal(0, 0.05, (n, k)).astype(np.float32), rng)
    ref = torch.from_numpy(gguf.quants.dequantize(data, getattr(T, kind)).reshape(n, k))
    gq = decode_rows(kind, data, k)
    fmt = FORMATS[kind]
    assert (gq.group, gq.bits) == (fmt.group, fmt.value_bits)
    for bits in {fmt.storage_bits, 8}:
        for group in {fmt.group, 16}:
            w = gq.regroup(group).to_wna16(bits)
            got = dequantize_wna16(w)
            if kind in ("Q4_0", "Q8_0", "Q6_K"):       # symmetric: bit exact
                assert torch.equal(got, ref)
            else:                                      # with a min: float32 rounding of z
                bound = 4 * torch.finfo(torch.float32).eps * (
                    ref.abs() + w.scales.t().repeat_interleave(group, 1).abs() * 2 ** fmt.value_bits)
                assert bool(((got - ref).abs() <= bound).all()), (got - ref).abs().max()
    # a row range decodes to the same rows (what a tensor-parallel rank reads)
    part = decode_rows(kind, data[8:24], k).dequantize()
    assert np.array_equal(part, gq.dequantize()[8:24])


def test_unsupported_type_and_shape_are_refused():
    with pytest.raises(ValueError, match="GGUF type Q2_K is not kept quantized"):
        decode_rows("Q2_K", np.zeros((1, 84), np.uint8), 256)
    with pytest.raises(ValueError, match="not a multiple of the Q4_K block"):
        decode_rows("Q4_K", np.zeros((1, 144), np.uint8), 128)


def test_plan_picks_bits_group_and_float_layers():
    types = {}
    for i, (q, k, v, gate, up, down, o) in enumerate([
            ("Q4_0", "Q4_0", "Q4_1", "Q4_K", "Q6_K", "F16", "Q8_0"),
            ("Q4_K", "Q5_K", "Q4_K", "BF16", "Q8_0", "Q6_K", "Q4_1")]):
        pre = f"model.layers.{i}"
        types.update({f"{pre}.self_attn.q_proj.weight": q, f"{pre}.self_attn.k_proj.weight": k,
                      f"{pre}.self_attn.v_proj.weight": v, f"{pre}.mlp.gate_proj.weight": gate,
                      f"{pre}.mlp.up_proj.weight": up, f"{pre}.mlp.down_proj.weight": down,
                      f"{pre}.self_attn.o_proj.weight": o, f"{pre}.input_layernorm.weight": "F32"})
    types["model.embed_tokens.weight"] = "Q8_0"
    cfg = GGUFConfig("x.gguf", types)
    plan = {p: (lp.bits, lp.group) for p, lp in cfg.plan.items()}
    assert plan == {"model.layers.0.self_attn.qkv_proj": (4, 32),
                    "model.layers.0.mlp.gate_up_proj": (8, 16),      # Q4_K + Q6_K
                    "model.layers.0.self_attn.o_proj": (8, 32),
                    "model.layers.1.self_attn.qkv_proj": (8, 32),    # Q5_K -> 8-bit
                    "model.layers.1.mlp.down_proj": (8, 16),
                    "model.layers.1.self_attn.o_proj": (4, 32)}
    assert cfg.linear_method("model.layers.0.mlp.down_proj") is None        # F16: float
    assert cfg.linear_method("model.layers.1.mlp.gate_up_proj") is None     # BF16 part
    assert isinstance(cfg.linear_method("model.layers.0.self_attn.qkv_proj"),
                      GGUFLinearMethod)
    assert cfg.layer_plan("model.layers.0.self_attn.k_proj.weight").bits == 4
    assert cfg.layer_plan("model.embed_tokens.weight") is None


def write_mixed_gguf(hf, path: str) -> dict[str, str]:
    """A llama GGUF whose linear layers use all six kept types (q/k rows permuted as
    llama.cpp does); ``hf`` is updated to the de-quantized weights. Returns name -> type."""
    cfg = hf.config
    layer_types = [{"attn_q": "Q4_0", "attn_k": "Q4_0", "attn_v": "Q4_1", "attn_output": "Q8_0",
                    "ffn_gate": "Q4_K", "ffn_up": "Q6_K", "ffn_down": "Q5_K"},
                   {"attn_q": "Q4_K", "attn_k": "Q5_K", "attn_v": "Q6_K", "attn_output": "Q4_1",
                    "ffn_gate": "Q8_0", "ffn_up": "Q8_0", "ffn_down": "Q4_0"}]
    rng = np.random.default_rng(1)
    w = gguf.GGUFWriter(path, "llama")
    add_decoder_hparams(w, cfg)
    used = {}
    with torch.no_grad():
        for name, param in hf.named_parameters():
            if name == "lm_head.weight" and cfg.tie_word_embeddings:
                continue
            gname = gguf_name(name)
            array = param.detach().numpy().astype(np.float32)
            kind = None
            if gname.startswith("blk."):
                kind = layer_types[int(gname.split(".")[1])].get(gname.split(".")[2])
            if kind is None:
                w.add_tensor(gname, array)
                continue
            heads = (cfg.num_attention_heads if ".attn_q." in gname else
                     cfg.num_key_value_heads if ".attn_k." in gname else None)
            if heads:
                array = llama_cpp_permute(array, heads)
            data = gguf_blocks(kind, array, rng)
            w.add_tensor(gname, data, raw_dtype=getattr(T, kind))
            restored = torch.from_numpy(gguf.quants.dequantize(data, getattr(T, kind)))
            if heads:
                restored = unpermute_qk(restored, heads)
            param.copy_(restored)
            used[name] = kind
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return used


def test_mixed_gguf_kept_quantized_matches_hf(tmp_path):
    hf = tiny_hf_model("llama", vocab_size=96, hidden_size=256, intermediate_size=512,
                       num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2,
                       tie_word_embeddings=True)
    path = str(tmp_path / "mixed.gguf")
    used = write_mixed_gguf(hf, path)
    assert set(used.values()) == set(FORMATS)
    quant = select_quantization({"gguf_file": path}, None, is_gguf=True)
    assert isinstance(quant, GGUFConfig) and len(quant.plan) == 8
    model = get_model(ModelConfig(model=path, dtype="float32"), ReferenceAttentionBackend,
                      torch.device("cpu"))
    layer = model.model.layers[0]
    qkv, gate_up = layer.self_attn.qkv_proj, layer.mlp.gate_up_proj
    assert (qkv.qweights.bits, qkv.qweights.group_size) == (4, 32)         # Q4_0 + Q4_1
    assert (gate_up.qweights.bits, gate_up.qweights.group_size) == (8, 16)  # Q4_K + Q6_K
    assert not hasattr(qkv, "weight")
    arch = load_arch_config(path)
    prompts = [[3, 17, 42, 8, 90, 11, 4], [60, 2]]
    got = run_step(model, new_kv_caches(arch, 8), prompts, [0, 0])
    for prompt, logits in zip(prompts, got, strict=True):
        torch.testing.assert_close(logits, hf_logits(hf, prompt), atol=2e-4, rtol=1e-4)
    # --gguf-dequantize: today's float path, same logits
    deq = get_model(ModelConfig(model=path, dtype="float32", gguf_dequantize=True),
                    ReferenceAttentionBackend, torch.device("cpu"))
    assert deq.model.layers[0].self_attn.qkv_proj.weight.dtype == torch.float32
    again = run_step(deq, new_kv_caches(arch, 8), prompts, [0, 0])
    for a, b in zip(got, again, strict=True):
        torch.testing.assert_close(a, b, atol=2e-4, rtol=1e-4)


def test_selection_rules_for_gguf():
    assert select_quantization({"gguf_file": "x.gguf"}, None, is_gguf=True,
                               gguf_dequantize=True) is None
    with pytest.raises(ValueError, match="contradict"):
        select_quantization({"gguf_file": "x.gguf"}, "gguf", is_gguf=True,
                            gguf_dequantize=True)
    with pytest.raises(ValueError, match="--gguf-dequantize needs a .gguf model file"):
        select_quantization({}, None, gguf_dequantize=True)


def test_gguf_kept_by_default_only_where_measured_faster():
    """On CUDA the float path is faster than the group-32 kernel (measured on the H200), so a
    GGUF file is de-quantized there unless --quantization gguf asks to keep it."""
    from vllm_core.model_executor.quantization.selection import GGUF_KEPT_BY_DEFAULT

    assert GGUF_KEPT_BY_DEFAULT == ("cpu",)
    assert select_quantization({"gguf_file": "x.gguf"}, None, is_gguf=True,
                               platform="cuda", dtype="bfloat16") is None
