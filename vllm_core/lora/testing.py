"""Random PEFT-format adapters written without peft or a HuggingFace model (benchmarks and
tests of the loader): the same files ``PeftModel.save_pretrained`` writes."""

from __future__ import annotations

import json
import os

import torch

from vllm_core.config import ModelArchConfig
from vllm_core.lora.peft_adapter import CONFIG_FILE, WEIGHTS_FILE, projection_shapes

ALL_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def write_random_adapter(folder: str, arch: ModelArchConfig, rank: int, alpha: float = 16.0,
                         targets: tuple[str, ...] = ALL_TARGETS, seed: int = 0,
                         scale: float = 0.02, use_rslora: bool = False,
                         dtype: torch.dtype = torch.float32) -> str:
    """A rank-``rank`` adapter of every decoder layer's ``targets`` with random A and B
    (non-zero B, entries ``scale * N(0, 1)``); returns ``folder``."""
    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    shapes = projection_shapes(arch)
    tensors: dict[str, torch.Tensor] = {}
    for layer in range(arch.num_hidden_layers):
        for proj in targets:
            n_in, n_out = shapes[proj]
            part = "self_attn" if proj in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
            key = f"base_model.model.model.layers.{layer}.{part}.{proj}"
            tensors[f"{key}.lora_A.weight"] = (scale * torch.randn(rank, n_in, generator=gen)
                                               ).to(dtype)
            tensors[f"{key}.lora_B.weight"] = (scale * torch.randn(n_out, rank, generator=gen)
                                               ).to(dtype)
    save_file(tensors, os.path.join(folder, WEIGHTS_FILE))
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": alpha, "use_rslora": use_rslora,
              "target_modules": list(targets), "bias": "none", "task_type": "CAUSAL_LM",
              "base_model_name_or_path": None}
    with open(os.path.join(folder, CONFIG_FILE), "w", encoding="utf-8") as f:
        json.dump(config, f)
    return folder
