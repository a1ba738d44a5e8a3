"""GGUF loading on tiny synthetic files written with the ``gguf`` package (fast): metadata ->
arch config, llama.cpp name mapping, q/k un-permutation, dequantization; logits parity with the
HF model the file was made from."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
from gguf_test_metadata import add_decoder_hparams
from model_test_utils import hf_logits, new_kv_caches, run_step, tiny_hf_model

from vllm_core.attention.backends.reference import ReferenceAttentionBackend
from vllm_core.config import ModelConfig
from vllm_core.model_executor.gguf_loader import unpermute_qk
from vllm_core.model_executor.loader import (
    get_model,
    load_arch_config,
    load_generation_defaults,
    resolve_model,
)

HF_TO_GGUF = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q",
              "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
              "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm",
              "self_attn.k_norm": "attn_k_norm", "post_attention_layernorm": "ffn_norm",
              "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
Q8 = gguf.GGMLQuantizationType.Q8_0


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """What llama.cpp's converter does to llama q/k rows (for its interleaved rope)."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def gguf_name(hf_name: str) -> str:
    if hf_name.startswith("model.layers."):
        _, _, idx, rest = hf_name.split(".", 3)
        module, leaf = rest.rsplit(".", 1)
        return f"blk.{idx}.{HF_TO_GGUF[module]}.{leaf}"
    return {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight":
            "output_norm.weight", "lm_head.weight": "output.weight"}[hf_name]


def write_gguf(hf, path: str, arch: str, quantize: tuple[str, ...] = ()) -> None:
    """Write ``hf`` as a GGUF file; tensors whose GGUF name contains one of ``quantize`` are
    stored as Q8_0 and ``hf`` is updated to the dequantized values (the same weights)."""
    cfg = hf.config
    w = gguf.GGUFWriter(path, arch)
    add_decoder_hparams(w, cfg)
    w.add_eos_token_id(5)
    w.add_chat_template("{{ messages[0]['content'] }}")
    with torch.no_grad():
        for name, param in hf.named_parameters():
            if name == "lm_head.weight" and cfg.tie_word_embeddings:
                continue
            gname = gguf_name(name)
            array = param.detach().numpy().astype(np.float32)
            if arch == "llama" and ".attn_q." in gname:
                array = llama_cpp_permute(array, cfg.num_attention_heads)
            elif arch == "llama" and ".attn_k." in gname:
                array = llama_cpp_permute(array, cfg.num_key_value_heads)
            if array.ndim == 2 and any(q in gname for q in quantize):
                qdata = gguf.quants.quantize(array, Q8)
                w.add_tensor(gname, qdata, raw_dtype=Q8)
                restored = gguf.quants.dequantize(qdata, Q8)
                if arch == "llama" and (".attn_q." in gname or ".attn_k." in gname):
                    heads = (cfg.num_attention_heads if ".attn_q." in gname
                             else cfg.num_key_value_heads)
                    restored = unpermute_qk(torch.from_numpy(restored), heads).numpy()
                param.copy_(torch.from_numpy(restored))
            else:
                w.add_tensor(gname, array.astype(np.float16) if "ffn_down" in gname else array)
                if "ffn_down" in gname:
                    param.copy_(torch.from_numpy(array.astype(np.float16).astype(np.float32)))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_unpermute_inverts_llama_cpp_permutation():
    w = np.arange(6 * 8 * 3, dtype=np.float32).reshape(6 * 8, 3)
    back = unpermute_qk(torch.from_numpy(llama_cpp_permute(w, 6)), 6)
    assert torch.equal(back, torch.from_numpy(w))


@pytest.mark.parametrize("arch_name,model_type,overrides", [
    ("llama", "llama", dict(num_attention_heads=4, num_key_value_heads=2,
                            tie_word_embeddings=True)),
    ("qwen3", "qwen3", dict(head_dim=32, num_attention_heads=6, num_key_value_heads=2)),
    ("qwen2", "qwen2", dict(num_attention_heads=4, num_key_value_heads=2)),
])
def test_gguf_logits_match_hf(tmp_path, arch_name, model_type, overrides):
    hf = tiny_hf_model(model_type, vocab_size=96, **overrides)
    path = str(tmp_path / "tiny.gguf")
    write_gguf(hf, path, arch_name, quantize=("attn_q", "attn_k", "ffn_up", "token_embd"))
    assert resolve_model(str(tmp_path)) == path          # folder with exactly one .gguf
    arch = load_arch_config(path)
    assert arch.model_type == model_type
    assert arch.tie_word_embeddings == bool(overrides.get("tie_word_embeddings", False))
    assert arch.qk_norm == (model_type == "qwen3")
    assert arch.attention_bias == (model_type == "qwen2")
    assert load_generation_defaults(path) == {"eos_token_id": [5]}
    model = get_model(ModelConfig(model=path, dtype="float32"), ReferenceAttentionBackend,
                      torch.device("cpu"))
    prompts = [[3, 17, 42, 8, 90, 11, 4], [60, 2]]
    got = run_step(model, new_kv_caches(arch, 8), prompts, [0, 0])
    for prompt, logits in zip(prompts, got, strict=True):
        torch.testing.assert_close(logits, hf_logits(hf, prompt), atol=1e-4, rtol=1e-4)


def test_unsupported_gguf_architecture(tmp_path):
    path = str(tmp_path / "x.gguf")
    w = gguf.GGUFWriter(path, "mamba")
    w.add_block_count(1)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ValueError, match="GGUF architecture 'mamba'.*supported: llama"):
        load_arch_config(path)
