"""Tiny random models and random-initialised PEFT adapters (non-zero B) for the LoRA tests."""

from __future__ import annotations

import os

import torch

from vllm_core.model_executor.testing import random_hf_causal_lm, write_wordlevel_tokenizer

VOCAB = 512
ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def tiny_model_folder(root: str, model_type: str = "llama", **overrides) -> str:
    config = {**dict(vocab_size=VOCAB, hidden_size=128, intermediate_size=344,
                     num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                     max_position_embeddings=512, tie_word_embeddings=False,
                     bos_token_id=None, eos_token_id=None, pad_token_id=None), **overrides}
    path = os.path.join(root, model_type)
    random_hf_causal_lm(model_type, config, seed=0, weight_scale=0.08).save_pretrained(path)
    write_wordlevel_tokenizer(path, VOCAB)
    return path


def make_peft_adapter(hf_model, folder: str, seed: int, r: int = 8, alpha: float = 16,
                      targets: list[str] = ALL, use_rslora: bool = False,
                      scale: float = 0.05) -> str:
    """Save a PEFT LoRA adapter of ``hf_model`` with random A and non-zero random B."""
    import copy

    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=targets, lora_dropout=0.0,
                        use_rslora=use_rslora, init_lora_weights=False)
    peft_model = get_peft_model(copy.deepcopy(hf_model), config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.copy_(scale * torch.randn(p.shape, generator=gen))
    peft_model.save_pretrained(folder)
    return folder


class PeftOracle:
    """Greedy tokens of ``hf_model`` with each PEFT adapter folder (one ``PeftModel`` holding
    them all; ``None`` runs the base model with the adapters disabled), memoised."""

    def __init__(self, hf_model, adapters: list[str]) -> None:
        import copy

        from peft import PeftModel

        self.names = {path: f"a{i}" for i, path in enumerate(adapters)}
        model = PeftModel.from_pretrained(copy.deepcopy(hf_model), adapters[0],
                                          adapter_name="a0")
        for path, name in list(self.names.items())[1:]:
            model.load_adapter(path, adapter_name=name)
        self.model = model.eval()
        self._memo: dict[tuple, list[int]] = {}

    @torch.no_grad()
    def greedy(self, adapter: str | None, prompt: list[int], max_tokens: int) -> list[int]:
        key = (adapter, tuple(prompt), max_tokens)
        if key not in self._memo:
            if adapter is None:
                with self.model.disable_adapter():
                    self._memo[key] = _greedy(self.model, prompt, max_tokens)
            else:
                self.model.set_adapter(self.names[adapter])
                self._memo[key] = _greedy(self.model, prompt, max_tokens)
        return self._memo[key]


def _greedy(model, prompt: list[int], max_tokens: int) -> list[int]:
    ids = torch.tensor([prompt])
    for _ in range(max_tokens):
        nxt = model(input_ids=ids).logits[0, -1].argmax()
        ids = torch.cat([ids, nxt.view(1, 1)], dim=1)
    return ids[0, len(prompt):].tolist()
