"""Write a random-weight HF mixture-of-experts model as a GGUF file the way llama.cpp's
``convert_hf_to_gguf.py`` lays it out (tests only).

- ``llama`` (Mixtral): ``expert_count`` / ``expert_used_count``, ``feed_forward_length`` = the
  experts' intermediate size, q/k rows permuted for llama.cpp's interleaved rope;
- ``qwen2moe`` / ``qwen3moe``: plus ``expert_feed_forward_length`` and (qwen2moe)
  ``expert_shared_feed_forward_length``; the shared expert as ``ffn_*_shexp`` and its gate as
  ``ffn_gate_inp_shexp`` (1-D ``[H]``, as llama.cpp stores it; ``[1, H]`` with
  ``shared_gate_2d``);
- experts stacked ``[E, I, H]`` / ``[E, H, I]`` (``layout="stacked"``), fused gate/up
  ``ffn_gate_up_exps`` ``[E, 2I, H]`` (``"fused"``), or one tensor per expert
  ``blk.N.ffn_gate.E.weight`` (``"per_expert"``, older Mixtral files).
With ``quant`` (a GGML type), the 2-D / 3-D weight tensors named in ``quantize`` are stored in
that type (Q4_0 / Q4_1 / Q8_0 by ``gguf.quants.quantize``; K types as random blocks) and the HF model's parameters are overwritten with the de-quantized values, so the
HF model and the file hold the same weights. ``tokenizer=True`` adds a byte-level BPE
vocabulary (256 byte tokens + ``<|end|>`` = eos) that transformers can turn into a tokenizer.
"""

from __future__ import annotations

import gguf
import numpy as np
import torch
from gguf_test_metadata import add_decoder_hparams

_BLOCK = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q",
          "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
          "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm",
          "self_attn.k_norm": "attn_k_norm", "post_attention_layernorm": "ffn_norm",
          "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
          "mlp.gate": "ffn_gate_inp", "mlp.shared_expert_gate": "ffn_gate_inp_shexp",
          "mlp.shared_expert.gate_proj": "ffn_gate_shexp",
          "mlp.shared_expert.up_proj": "ffn_up_shexp",
          "mlp.shared_expert.down_proj": "ffn_down_shexp"}
_TOP = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight":
        "output_norm.weight", "lm_head.weight": "output.weight"}


def byte_vocab() -> list[str]:
    """GPT-2's byte -> unicode table: the 256 byte tokens of a byte-level BPE."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    table = dict(zip(bs, (chr(c) for c in cs), strict=True))
    return [table[b] for b in range(256)]


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    return (w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def write_moe_gguf(hf, path: str, arch: str, *, layout: str = "stacked",
                   quant: gguf.GGMLQuantizationType | None = None,
                   quantize: tuple[str, ...] = ("_exps", "ffn_gate.", "ffn_up.", "ffn_down.",
                                                "attn_q.", "attn_k.", "attn_v.", "attn_output",
                                                "_shexp"),
                   tokenizer: bool = False, shared_gate_2d: bool = False) -> None:
    cfg = hf.config
    w = gguf.GGUFWriter(path, arch)
    w.add_name("tiny-moe")
    add_decoder_hparams(w, cfg)
    num_experts = getattr(cfg, "num_local_experts", None) or cfg.num_experts
    w.add_expert_count(num_experts)
    w.add_expert_used_count(cfg.num_experts_per_tok)
    if arch != "llama":
        w.add_expert_feed_forward_length(cfg.moe_intermediate_size)
    if getattr(cfg, "shared_expert_intermediate_size", None):
        w.add_expert_shared_feed_forward_length(cfg.shared_expert_intermediate_size)
    if tokenizer:
        tokens = byte_vocab() + ["<|end|>"]
        assert len(tokens) == cfg.vocab_size, "tokenizer=True needs vocab_size 257"
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("default")
        w.add_token_list(tokens)
        w.add_token_types([1] * 256 + [3])
        w.add_token_scores([0.0] * len(tokens))
        w.add_token_merges([])
        w.add_eos_token_id(256)
        w.add_chat_template("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    heads = {"attn_q": cfg.num_attention_heads, "attn_k": cfg.num_key_value_heads}

    rng = np.random.default_rng(0)

    def add(gname: str, array: np.ndarray) -> np.ndarray:
        """Write ``array`` (quantized when asked); return the values the file holds."""
        array = array.astype(np.float32)
        if quant is not None and array.ndim >= 2 and any(q in gname for q in quantize):
            qdata = (random_k_blocks(quant, array.shape, rng) if quant in K_SCALE_OFFSETS
                     else gguf.quants.quantize(array, quant))
            w.add_tensor(gname, qdata, raw_dtype=quant)
            return gguf.quants.dequantize(qdata, quant).reshape(array.shape)
        w.add_tensor(gname, array)
        return array

    with torch.no_grad():
        for name, param in hf.named_parameters():
            if name == "lm_head.weight" and cfg.tie_word_embeddings:
                continue
            array = param.detach().numpy()
            if name in _TOP:
                param.copy_(torch.from_numpy(add(_TOP[name], array)))
                continue
            _, _, idx, rest = name.split(".", 3)
            module, leaf = rest.rsplit(".", 1)
            blk = f"blk.{idx}"
            if module == "mlp.experts" and leaf == "gate_up_proj":      # HF 5: [E, 2I, H], gate first
                inter = array.shape[1] // 2
                if layout == "fused":
                    stored = add(f"{blk}.ffn_gate_up_exps.weight", array)
                else:
                    stored = np.concatenate(
                        [_experts(add, blk, "gate", array[:, :inter], layout),
                         _experts(add, blk, "up", array[:, inter:], layout)], axis=1)
                param.copy_(torch.from_numpy(stored))
                continue
            if module == "mlp.experts" and leaf == "down_proj":          # HF 5: [E, H, I]
                param.copy_(torch.from_numpy(_experts(add, blk, "down", array, layout)))
                continue
            short = _BLOCK[module]
            if short == "ffn_gate_inp_shexp" and not shared_gate_2d:   # llama.cpp: 1-D [H]
                array = array.reshape(-1)
            if arch == "llama" and short in heads and leaf == "weight":
                stored = _unpermute(add(f"{blk}.{short}.{leaf}", _permute(array, heads[short])),
                                    heads[short])
            else:
                stored = add(f"{blk}.{short}.{leaf}", array)
            param.copy_(torch.from_numpy(stored.reshape(array.shape)))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


# K types (the ``gguf`` package cannot quantize to them): byte offsets of the float16 scales
K_SCALE_OFFSETS = {gguf.GGMLQuantizationType.Q4_K: (0, 2), gguf.GGMLQuantizationType.Q5_K: (0, 2),
                   gguf.GGMLQuantizationType.Q6_K: (208,)}


def random_k_blocks(kind: gguf.GGMLQuantizationType, shape: tuple[int, ...],
                    rng: np.random.Generator) -> np.ndarray:
    """Random blocks of K type ``kind`` for a float tensor of ``shape`` (the last dimension a
    multiple of 256): random integer fields, small positive float16 super-block scales (the
    values, not the input, define the weights)."""
    block, block_bytes = gguf.GGML_QUANT_SIZES[kind]
    rows = int(np.prod(shape[:-1]))
    nb = rows * shape[-1] // block
    b = rng.integers(0, 256, (nb, block_bytes), dtype=np.uint8)
    for off in K_SCALE_OFFSETS[kind]:
        b[:, off:off + 2] = (np.abs(rng.normal(0, 1e-5, (nb, 1))) + 1e-6).astype(
            np.float16).view(np.uint8)
    return b.reshape(*shape[:-1], shape[-1] // block * block_bytes)


def _experts(add, blk: str, proj: str, stacked: np.ndarray, layout: str) -> np.ndarray:
    if layout == "per_expert":
        return np.stack([add(f"{blk}.ffn_{proj}.{e}.weight", stacked[e])
                         for e in range(stacked.shape[0])])
    return add(f"{blk}.ffn_{proj}_exps.weight", stacked)
