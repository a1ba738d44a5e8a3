"""HuggingFace ``config.json`` -> ``ModelArchConfig``.

Reads both config generations: transformers 4.x (``rope_theta`` and ``rope_scaling`` at the top
level, scaling kind under ``rope_type`` or ``type``) and 5.x (``rope_parameters`` holding the
theta and the scaling). A ``rope_type`` of ``default`` becomes ``rope_scaling=None``.
"""

from __future__ import annotations

import json
import os
from typing import Any

from vllm_core.config import ModelArchConfig
from vllm_core.model_executor.layers.rotary_embedding import SUPPORTED_ROPE_TYPES

_ARCH_BY_MODEL_TYPE = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                       "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
                       "mixtral": "MixtralForCausalLM", "qwen2_moe": "Qwen2MoeForCausalLM",
                       "qwen3_moe": "Qwen3MoeForCausalLM"}
_REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
             "num_attention_heads")


def read_config_json(path: str) -> dict[str, Any]:
    """Parse ``path`` (a config.json); ``FileNotFoundError`` / ``ValueError`` name the file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model config not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"model config {path} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"model config {path} must hold a JSON object")
    return data


def arch_config_from_hf(cfg: dict[str, Any]) -> ModelArchConfig:
    """Build the architecture facts from a config.json dict; ``ValueError`` names a missing or
    unsupported field."""
    missing = [k for k in _REQUIRED if cfg.get(k) is None]
    if missing:
        raise ValueError(f"model config lacks required field(s): {', '.join(missing)}")
    model_type = str(cfg.get("model_type", ""))
    archs = cfg.get("architectures") or []
    architecture = archs[0] if archs else _ARCH_BY_MODEL_TYPE.get(model_type)
    if not architecture:
        raise ValueError("model config has neither 'architectures' nor a known 'model_type' "
                         f"(got model_type={model_type!r})")
    act = cfg.get("hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise ValueError(f"hidden_act {act!r} is not supported (only silu)")
    if cfg.get("mlp_bias"):
        raise ValueError("mlp_bias=true is not supported")
    num_heads = int(cfg["num_attention_heads"])
    hidden = int(cfg["hidden_size"])
    theta, scaling = _rope(cfg)
    return ModelArchConfig(
        architecture=architecture,
        model_type=model_type,
        vocab_size=int(cfg["vocab_size"]),
        hidden_size=hidden,
        intermediate_size=int(cfg["intermediate_size"]),
        num_hidden_layers=int(cfg["num_hidden_layers"]),
        num_attention_heads=num_heads,
        num_key_value_heads=int(cfg.get("num_key_value_heads") or num_heads),
        head_dim=int(cfg.get("head_dim") or hidden // num_heads),
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        rope_theta=theta,
        rope_scaling=scaling,
        max_position_embeddings=int(cfg.get("max_position_embeddings", 4096)),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        attention_bias=(model_type == "qwen2" or bool(cfg.get("attention_bias", False))
                        or (model_type == "qwen2_moe" and bool(cfg.get("qkv_bias", True)))),
        qk_norm=model_type in ("qwen3", "qwen3_moe"),
        sliding_window=_sliding_window(cfg, model_type),
        bos_token_id=cfg.get("bos_token_id"),
        eos_token_id=cfg.get("eos_token_id"),
        hf_config=dict(cfg),
    )


def _rope(cfg: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    params = dict(cfg.get("rope_parameters") or {})
    theta = float(params.pop("rope_theta", cfg.get("rope_theta", 10000.0)))
    scaling = dict(cfg.get("rope_scaling") or params)
    rope_type = scaling.pop("type", None) or scaling.get("rope_type") or "default"
    if rope_type == "default":
        return theta, None
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ValueError(f"rope_scaling rope_type {rope_type!r} is not supported; supported: "
                         f"{', '.join(SUPPORTED_ROPE_TYPES)}")
    scaling["rope_type"] = rope_type
    scaling.pop("rope_theta", None)
    return theta, scaling


def _sliding_window(cfg: dict[str, Any], model_type: str) -> int | None:
    window = cfg.get("sliding_window")
    if model_type in ("qwen2", "qwen3", "qwen2_moe", "qwen3_moe"):
        if cfg.get("use_sliding_window"):
            raise ValueError(f"{model_type} with use_sliding_window=true is not supported")
        return None
    if model_type in ("mistral", "mixtral") and window is not None:
        return int(window)
    return None
