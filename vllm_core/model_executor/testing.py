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
