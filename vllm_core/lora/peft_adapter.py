"""Reading a PEFT LoRA adapter folder and checking it against the base model.

Format (PEFT's ``save_pretrained``): ``adapter_config.json`` (``r``, ``lora_alpha``,
``use_rslora``, ``target_modules``, ...) and ``adapter_model.safetensors`` holding
``base_model.model.<module>.lora_A.weight`` ``[r, in]`` and ``...lora_B.weight`` ``[out, r]``
per adapted module. A pickled ``adapter_model.bin`` is refused (no pickle is ever loaded).

Supported: targets q/k/v/o/gate/up/down projections of the decoder layers (any subset, any
layers), ranks up to ``max_lora_rank``, ``lora_alpha`` scaling ``alpha / r`` or rsLoRA
``alpha / sqrt(r)``. Refused with a message: embeddings / LM-head adapters (extra vocabulary),
``modules_to_save``, DoRA, trained biases, per-module rank or alpha patterns.

Result: ``LoRAAdapter.modules`` maps our fused module path (``model.layers.3.self_attn.
qkv_proj``) to its shards (``q``/``k``/``v``, ``gate``/``up``, or ``in`` for o/down), each the
full (unsharded) ``A`` and ``B``, with the scaling folded into ``B``. Sharding to a TP rank is
the layer's business (``lora.layers``).
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any

import torch

from vllm_core.config import ModelArchConfig

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PICKLE_FILE = "adapter_model.bin"

# checkpoint projection -> (our module under the decoder layer, shard name)
TARGETS: dict[str, tuple[str, str]] = {
    "q_proj": ("self_attn.qkv_proj", "q"), "k_proj": ("self_attn.qkv_proj", "k"),
    "v_proj": ("self_attn.qkv_proj", "v"), "o_proj": ("self_attn.o_proj", "in"),
    "gate_proj": ("mlp.gate_up_proj", "gate"), "up_proj": ("mlp.gate_up_proj", "up"),
    "down_proj": ("mlp.down_proj", "in"),
}
_REFUSED_TARGETS = ("embed_tokens", "lm_head", "wte", "embed", "head")
_KEY = re.compile(r"^(?:base_model\.model\.)?model\.layers\.(\d+)\.(self_attn|mlp)\."
                  r"(\w+)\.lora_([AB])(?:\.[\w-]+)?\.weight$")


@dataclass(slots=True)
class LoRAWeights:
    """One adapted projection: ``a`` [r, in], ``b`` [out, r] already multiplied by the
    adapter's scaling (full checkpoint shapes)."""

    a: torch.Tensor
    b: torch.Tensor


@dataclass(slots=True)
class LoRAAdapter:
    """A loaded adapter in host memory (see the module docstring for ``modules``)."""

    lora_id: int
    path: str
    rank: int
    scaling: float
    modules: dict[str, dict[str, LoRAWeights]] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return sum(w.a.nbytes + w.b.nbytes for m in self.modules.values() for w in m.values())


def projection_shapes(arch: ModelArchConfig) -> dict[str, tuple[int, int]]:
    """(in, out) features of each target projection of the base model (unsharded)."""
    h, i, hd = arch.hidden_size, arch.intermediate_size, arch.head_dim
    q, kv = arch.num_attention_heads * hd, arch.num_key_value_heads * hd
    return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
            "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}


def read_adapter_config(path: str) -> dict[str, Any]:
    """The adapter's ``adapter_config.json`` (ValueError when the folder is not a PEFT
    adapter)."""
    if not os.path.isdir(path):
        raise ValueError(f"LoRA adapter path {path!r} is not a folder")
    cfg_path = os.path.join(path, CONFIG_FILE)
    if not os.path.isfile(cfg_path):
        raise ValueError(f"LoRA adapter {path!r} has no {CONFIG_FILE} (not a PEFT adapter)")
    try:
        with open(cfg_path, encoding="utf-8") as f:
            cfg = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"LoRA adapter {path!r}: cannot read {CONFIG_FILE}: {e}") from e
    if not isinstance(cfg, dict):
        raise ValueError(f"LoRA adapter {path!r}: {CONFIG_FILE} is not a JSON object")
    return cfg


def check_adapter_config(cfg: dict[str, Any], path: str, max_rank: int) -> tuple[int, float]:
    """(rank, scaling) of a supported LoRA config; ValueError naming what is unsupported."""
    def bad(why: str) -> ValueError:
        return ValueError(f"LoRA adapter {path!r}: {why}")

    peft_type = str(cfg.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise bad(f"peft_type {peft_type!r} is not supported (only LORA)")
    r = cfg.get("r")
    if not isinstance(r, int) or r < 1:
        raise bad(f"'r' must be a positive integer, got {r!r}")
    if r > max_rank:
        raise bad(f"rank {r} exceeds --max-lora-rank {max_rank}")
    alpha = cfg.get("lora_alpha", r)
    if not isinstance(alpha, (int, float)) or alpha <= 0:
        raise bad(f"'lora_alpha' must be a positive number, got {alpha!r}")
    if cfg.get("use_dora"):
        raise bad("DoRA adapters (use_dora) are not supported")
    if cfg.get("bias", "none") not in ("none", None):
        raise bad(f"adapters that train biases (bias={cfg.get('bias')!r}) are not supported")
    if cfg.get("modules_to_save"):
        raise bad(f"modules_to_save {cfg['modules_to_save']!r} is not supported (full copies "
                  f"of base modules, e.g. an LM head with extra vocabulary)")
    for key in ("rank_pattern", "alpha_pattern"):
        if cfg.get(key):
            raise bad(f"per-module {key} is not supported")
    targets = cfg.get("target_modules") or []
    if isinstance(targets, str):
        targets = [targets]
    for t in targets:
        leaf = str(t).rsplit(".", 1)[-1]
        if any(x in leaf for x in _REFUSED_TARGETS):
            raise bad(f"target module {t!r}: embedding and LM-head adapters are not supported "
                      f"(only {', '.join(TARGETS)})")
        regex = any(c in str(t) for c in "|()*[")
        if leaf not in TARGETS and not regex and t != "all-linear":
            raise bad(f"target module {t!r} is not supported (only {', '.join(TARGETS)})")
    scaling = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
    return r, float(scaling)


def load_peft_adapter(lora_id: int, path: str, arch: ModelArchConfig, max_rank: int,
                      dtype: torch.dtype = torch.float32) -> LoRAAdapter:
    """Read and check the adapter at ``path`` against ``arch``; tensors on the host in
    ``dtype``. ValueError with the reason for anything that does not fit."""
    cfg = read_adapter_config(path)
    rank, scaling = check_adapter_config(cfg, path, max_rank)
    weights = os.path.join(path, WEIGHTS_FILE)
    if not os.path.isfile(weights):
        if os.path.isfile(os.path.join(path, PICKLE_FILE)):
            raise ValueError(f"LoRA adapter {path!r} has only {PICKLE_FILE}, a pickle file, "
                             f"which is never loaded; convert it to {WEIGHTS_FILE} "
                             f"(peft: save_pretrained(..., safe_serialization=True))")
        raise ValueError(f"LoRA adapter {path!r} has no {WEIGHTS_FILE}")
    from safetensors import safe_open

    shapes = projection_shapes(arch)
    found: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    with safe_open(weights, framework="pt") as f:
        for key in f.keys():
            m = _KEY.match(key)
            if m is None:
                what = ("embedding / LM-head adapters are not supported"
                        if any(x in key for x in ("embed", "lm_head")) else
                        f"only {', '.join(TARGETS)} of the decoder layers can be adapted")
                raise ValueError(f"LoRA adapter {path!r}: tensor {key!r}: {what}")
            layer, proj, ab = int(m.group(1)), m.group(3), m.group(4)
            if proj not in TARGETS:
                raise ValueError(f"LoRA adapter {path!r}: tensor {key!r} adapts {proj!r}; only "
                                 f"{', '.join(TARGETS)} are supported")
            if layer >= arch.num_hidden_layers:
                raise ValueError(f"LoRA adapter {path!r}: tensor {key!r} is for layer {layer}, "
                                 f"but the base model has {arch.num_hidden_layers} layers")
            found.setdefault((layer, proj), {})[ab] = f.get_tensor(key)
    if not found:
        raise ValueError(f"LoRA adapter {path!r}: {WEIGHTS_FILE} holds no LoRA tensors")
    adapter = LoRAAdapter(lora_id=lora_id, path=path, rank=rank, scaling=scaling)
    for (layer, proj), pair in sorted(found.items()):
        name = f"model.layers.{layer}.{proj}"
        if set(pair) != {"A", "B"}:
            raise ValueError(f"LoRA adapter {path!r}: {name} has lora_{''.join(pair)} but not "
                             f"both lora_A and lora_B")
        a, b = pair["A"], pair["B"]
        n_in, n_out = shapes[proj]
        if tuple(a.shape) != (rank, n_in) or tuple(b.shape) != (n_out, rank):
            raise ValueError(
                f"LoRA adapter {path!r} does not fit the base model: {name} has lora_A "
                f"{tuple(a.shape)} and lora_B {tuple(b.shape)}, expected ({rank}, {n_in}) and "
                f"({n_out}, {rank}) for this model ({arch.architecture}, hidden_size "
                f"{arch.hidden_size})")
        module, shard = TARGETS[proj]
        adapter.modules.setdefault(f"model.layers.{layer}.{module}", {})[shard] = LoRAWeights(
            a=a.to(torch.float32).to(dtype).contiguous(),
            b=(b.to(torch.float32) * scaling).to(dtype).contiguous())
    return adapter
