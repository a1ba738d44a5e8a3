"""Random-weight HuggingFace models for parity tests (used by the core's and plugins' suites).

Lives in the package so that every platform plugin's tests can build the same kind of oracle
without importing another test folder. Imports transformers lazily.
"""

from __future__ import annotations

from typing import Any

import torch


def random_hf_causal_lm(model_type: str, config: dict[str, Any], seed: int = 0,
                        weight_scale: float = 0.1) -> torch.nn.Module:
    """A float32 HF causal LM built from ``config`` whose every parameter is random (norms
    near 1, biases too), so a loading mistake cannot hide behind zeros and ones."""
    from transformers import AutoConfig, AutoModelForCausalLM

    hf_config = AutoConfig.for_model(model_type, **config)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(1.0 + 0.1 * torch.randn(param.shape, generator=gen))
            else:
                param.copy_(weight_scale * torch.randn(param.shape, generator=gen))
    return model


@torch.no_grad()
def hf_greedy_tokens(model: Any, prompt: list[int], max_tokens: int) -> list[int]:
    """The ``max_tokens`` tokens HF transformers' ``generate`` continues ``prompt`` with,
    greedily and without stopping early (the parity reference of the engine tests)."""
    out = model.generate(torch.tensor([prompt]), max_new_tokens=max_tokens,
                         min_new_tokens=max_tokens, do_sample=False)
    return out[0, len(prompt):].tolist()


def write_wordlevel_tokenizer(folder: str, vocab_size: int) -> None:
    """A fast tokenizer with one word per id ("t{i}"), whitespace-split, no special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="t0")
    fast.save_pretrained(folder)


def write_random_eagle3_head(folder: str, target: dict[str, Any], draft_vocab: torch.Tensor,
                             seed: int = 0, weight_scale: float = 0.15,
                             tensors: dict[str, torch.Tensor] | None = None,
                             **config: Any) -> str:
    """An EAGLE-3 head for a Llama target in the published checkpoint layout
    (``spec_decode/eagle3.py``): ``config.json`` (``LlamaForCausalLMEagle3``, one layer of
    the target's shape from ``target``: hidden_size, num_attention_heads,
    num_key_value_heads, intermediate_size, vocab_size; plus ``config``) and
    ``model.safetensors`` with random weights (norms near 1), or ``tensors`` when given, and
    ``d2t`` / ``t2d`` for the draft vocabulary ``draft_vocab`` (sorted target ids)."""
    import json
    import os

    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    hidden, heads = int(target["hidden_size"]), int(target["num_attention_heads"])
    kv, inter = int(target.get("num_key_value_heads") or heads), int(target["intermediate_size"])
    hd = hidden // heads
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return weight_scale * torch.randn(shape, generator=gen)

    def norm() -> torch.Tensor:
        return 1.0 + 0.1 * torch.randn(hidden, generator=gen)

    if tensors is None:
        tensors = {"fc.weight": rand(hidden, 3 * hidden),
                   **{f"midlayer.{n}.weight": norm() for n in (
                       "input_layernorm", "hidden_norm", "post_attention_layernorm")},
                   "midlayer.self_attn.q_proj.weight": rand(heads * hd, 2 * hidden),
                   "midlayer.self_attn.k_proj.weight": rand(kv * hd, 2 * hidden),
                   "midlayer.self_attn.v_proj.weight": rand(kv * hd, 2 * hidden),
                   "midlayer.self_attn.o_proj.weight": rand(hidden, heads * hd),
                   "midlayer.mlp.gate_proj.weight": rand(inter, hidden),
                   "midlayer.mlp.up_proj.weight": rand(inter, hidden),
                   "midlayer.mlp.down_proj.weight": rand(hidden, inter),
                   "norm.weight": norm(), "lm_head.weight": rand(len(draft_vocab), hidden)}
    t2d = torch.zeros(int(target["vocab_size"]), dtype=torch.bool)
    t2d[draft_vocab] = True
    tensors = {**tensors, "d2t": draft_vocab - torch.arange(len(draft_vocab)), "t2d": t2d}
    save_file({k: v.contiguous() for k, v in tensors.items()},
              os.path.join(folder, "model.safetensors"))
    keys = ("hidden_size", "num_attention_heads", "num_key_value_heads", "intermediate_size",
            "vocab_size", "max_position_embeddings", "rms_norm_eps", "rope_theta",
            "rope_scaling")
    cfg = {"architectures": ["LlamaForCausalLMEagle3"], "model_type": "llama",
           "num_hidden_layers": 1, "draft_vocab_size": len(draft_vocab),
           **{k: target[k] for k in keys if target.get(k) is not None}, **config}
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f)
    return folder
