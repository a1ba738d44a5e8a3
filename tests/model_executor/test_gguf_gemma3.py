"""Gemma 3 from a GGUF file laid out as llama.cpp writes it (norm weights stored as 1 + w,
sandwich-norm names, fixed 6-layer pattern), with Q8_0 and K-quant (Q4_K, Q6_K) tensors:
logits equal the HF model holding the dequantized weights."""

from __future__ import annotations

import gguf
import numpy as np
import torch
from gguf_test_metadata import add_decoder_hparams
from model_test_utils import hf_logits, new_kv_caches, run_step, tiny_hf_model

from vllm_core.attention.backends.reference import ReferenceAttentionBackend
from vllm_core.config import ModelConfig
from vllm_core.model_executor.loader import get_model, load_arch_config

T = gguf.GGMLQuantizationType
GEMMA3_GGUF = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q",
               "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
               "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm",
               "self_attn.k_norm": "attn_k_norm",
               "post_attention_layernorm": "post_attention_norm",
               "pre_feedforward_layernorm": "ffn_norm",
               "post_feedforward_layernorm": "post_ffw_norm",
               "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
# llama.cpp K-quant block layouts (bytes per 256 values) and where their f16 scales sit
K_QUANTS = {T.Q4_K: (144, {0: 2e-4, 2: 2e-4}), T.Q6_K: (210, {208: 1e-5})}


def gguf_name(hf_name: str) -> str:
    if hf_name.startswith("model.layers."):
        _, _, idx, rest = hf_name.split(".", 3)
        module, leaf = rest.rsplit(".", 1)
        return f"blk.{idx}.{GEMMA3_GGUF[module]}.{leaf}"
    return {"model.embed_tokens.weight": "token_embd.weight",
            "model.norm.weight": "output_norm.weight"}[hf_name]


def random_k_quant(rows: int, cols: int, qtype: T, gen: np.random.Generator) -> np.ndarray:
    """Random K-quant blocks with small, finite f16 super-block scales (``gguf`` can
    dequantize K-quants but not produce them)."""
    nbytes, scales = K_QUANTS[qtype]
    blocks = gen.integers(0, 256, size=(rows, cols // 256, nbytes), dtype=np.uint8)
    for offset, value in scales.items():
        blocks[..., offset:offset + 2] = np.frombuffer(np.float16(value).tobytes(), np.uint8)
    return blocks.reshape(rows, -1)


def write_gemma3_gguf(hf, path: str) -> None:
    """``hf`` as llama.cpp would convert it; ``hf`` is updated to the stored values."""
    cfg = hf.config
    gen = np.random.default_rng(0)
    w = gguf.GGUFWriter(path, "gemma3")
    add_decoder_hparams(w, cfg, rope_theta=cfg.rope_parameters["full_attention"]["rope_theta"])
    w.add_sliding_window(cfg.sliding_window)
    w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
    w.add_rope_scaling_factor(cfg.rope_parameters["full_attention"]["factor"])
    with torch.no_grad():
        for name, param in hf.named_parameters():
            if name == "lm_head.weight":
                continue                                    # tied
            gname = gguf_name(name)
            array = param.numpy().astype(np.float32)
            if gname.endswith("norm.weight"):
                w.add_tensor(gname, array + 1.0)            # llama.cpp's Gemma convention
            elif ".ffn_gate." in gname or ".ffn_down." in gname:
                qtype = T.Q4_K if ".ffn_gate." in gname else T.Q6_K
                qdata = random_k_quant(*array.shape, qtype, gen)
                w.add_tensor(gname, qdata, raw_dtype=qtype)
                param.copy_(torch.from_numpy(gguf.quants.dequantize(qdata, qtype)))
            elif ".attn_q." in gname or ".ffn_up." in gname:
                qdata = gguf.quants.quantize(array, T.Q8_0)
                w.add_tensor(gname, qdata, raw_dtype=T.Q8_0)
                param.copy_(torch.from_numpy(gguf.quants.dequantize(qdata, T.Q8_0)))
            else:
                w.add_tensor(gname, array)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_gemma3_gguf_with_k_quants_matches_hf(tmp_path):
    # 7 layers: llama.cpp's fixed pattern makes layer 5 global, the others sliding (window 4)
    hf = tiny_hf_model("gemma3_text", hidden_size=256, intermediate_size=256,
                       num_hidden_layers=7, num_attention_heads=4, num_key_value_heads=2,
                       head_dim=32, sliding_window=4, query_pre_attn_scalar=32,
                       tie_word_embeddings=True, rope_scaling={"rope_type": "linear",
                                                               "factor": 2.0})
    path = str(tmp_path / "gemma3.gguf")
    write_gemma3_gguf(hf, path)
    arch = load_arch_config(path)
    assert arch.architecture == "Gemma3ForCausalLM" and arch.tie_word_embeddings
    assert list(arch.layer_types) == hf.config.layer_types
    assert [i for i, t in enumerate(arch.layer_types) if t == "full_attention"] == [5]
    assert (arch.sliding_window, arch.local_rope_theta, arch.query_pre_attn_scalar) == (
        4, 10000.0, 32.0)
    model = get_model(ModelConfig(model=path, dtype="float32"), ReferenceAttentionBackend,
                      torch.device("cpu"))
    prompts = [[3, 17, 42, 8, 90, 11, 4, 60, 2, 33], [60, 2, 7]]
    got = run_step(model, new_kv_caches(arch, 12), prompts, [0, 0])
    for prompt, logits in zip(prompts, got, strict=True):
        torch.testing.assert_close(logits, hf_logits(hf, prompt), atol=2e-4, rtol=2e-4)
