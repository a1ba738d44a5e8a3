"""HuggingFace ``config.json`` -> ``ModelArchConfig``.

Reads both config generations: transformers 4.x (``rope_theta`` and ``rope_scaling`` at the top
level, scaling kind under ``rope_type`` or ``type``) and 5.x (``rope_parameters`` holding the
theta and the scaling). A ``rope_type`` of ``default`` becomes ``rope_scaling=None``.

Family-specific fields (issue 19): Phi-3 (``longrope`` / ``su`` scaling, whose
``original_max_position_embeddings`` may sit at the top level; ``partial_rotary_factor``; its
``sliding_window``) and Gemma 3 text (``layer_types`` or the older ``sliding_window_pattern``,
global and local rope bases in either config generation, ``query_pre_attn_scalar``, final logit
soft-capping, GELU-tanh, tied embeddings by default). Attention logit soft-capping (Gemma 2)
and bidirectional attention are refused with a clear error.
"""

from __future__ import annotations

import json
import os
from typing import Any

from vllm_core.config import ModelArchConfig
from vllm_core.model_executor.layers.rotary_embedding import SUPPORTED_ROPE_TYPES

_ARCH_BY_MODEL_TYPE = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                       "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
                       "phi3": "Phi3ForCausalLM", "gemma3_text": "Gemma3ForCausalLM",
                       "mixtral": "MixtralForCausalLM", "qwen2_moe": "Qwen2MoeForCausalLM",
                       "qwen3_moe": "Qwen3MoeForCausalLM",
                       "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration"}
_GEMMA3 = ("gemma3_text", "gemma3")
_VL_MODEL_TYPES = ("qwen2_5_vl",)
_GEMMA_ACTS = ("gelu_pytorch_tanh", "gelu_tanh")
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
    if cfg.get("model_type") in _VL_MODEL_TYPES:
        cfg = vl_text_view(cfg)
    missing = [k for k in _REQUIRED if cfg.get(k) is None]
    if missing:
        raise ValueError(f"model config lacks required field(s): {', '.join(missing)}")
    model_type = str(cfg.get("model_type", ""))
    archs = cfg.get("architectures") or []
    architecture = archs[0] if archs else _ARCH_BY_MODEL_TYPE.get(model_type)
    if not architecture:
        raise ValueError("model config has neither 'architectures' nor a known 'model_type' "
                         f"(got model_type={model_type!r})")
    gemma = model_type in _GEMMA3
    act = _activation(cfg, gemma)
    if cfg.get("mlp_bias"):
        raise ValueError("mlp_bias=true is not supported")
    num_heads = int(cfg["num_attention_heads"])
    hidden = int(cfg["hidden_size"])
    if gemma:
        _check_gemma(cfg)
        theta, scaling, local_theta = _gemma_rope(cfg)
    else:
        (theta, scaling), local_theta = _rope(cfg), None
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
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", gemma)),
        attention_bias=(model_type in ("qwen2", *_VL_MODEL_TYPES) or bool(cfg.get("attention_bias", False))
                        or (model_type == "qwen2_moe" and bool(cfg.get("qkv_bias", True)))),
        qk_norm=model_type in ("qwen3", "qwen3_moe") or gemma,
        sliding_window=_sliding_window(cfg, model_type),
        hidden_act="gelu_pytorch_tanh" if act in _GEMMA_ACTS else "silu",
        partial_rotary_factor=float((cfg.get("rope_parameters") or {}).get(
            "partial_rotary_factor") or cfg.get("partial_rotary_factor") or 1.0),
        layer_types=_gemma_layer_types(cfg) if gemma else None,
        local_rope_theta=local_theta,
        query_pre_attn_scalar=(float(cfg.get("query_pre_attn_scalar") or 256) if gemma
                               else None),
        final_logit_softcapping=(float(cfg["final_logit_softcapping"])
                                 if cfg.get("final_logit_softcapping") else None),
        bos_token_id=cfg.get("bos_token_id"),
        eos_token_id=cfg.get("eos_token_id"),
        hf_config=dict(cfg),
    )


def vl_text_view(cfg: dict[str, Any]) -> dict[str, Any]:
    """A Qwen2.5-VL config with its language model's fields at the top level (transformers 5
    nests them in ``text_config``); an ``mrope`` rope type (transformers 4) reads as the
    default rope (``mrope_section`` stays, the model reads it), and the raw keys
    (``vision_config``, ``image_token_id``...) stay."""
    flat = {**cfg, **(cfg.get("text_config") or {}), "model_type": cfg["model_type"]}
    for key in ("rope_scaling", "rope_parameters"):
        rope = dict(flat.get(key) or {})
        if "mrope" in (rope.get("type"), rope.get("rope_type")):
            rope.pop("type", None)
            rope["rope_type"] = "default"
            flat[key] = rope
    return flat


def _activation(cfg: dict[str, Any], gemma: bool) -> str:
    if gemma:
        act = cfg.get("hidden_activation") or cfg.get("hidden_act") or "gelu_pytorch_tanh"
        if act not in _GEMMA_ACTS:
            raise ValueError(f"Gemma hidden_activation {act!r} is not supported (only "
                             "gelu_pytorch_tanh)")
        return act
    act = cfg.get("hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise ValueError(f"hidden_act {act!r} is not supported (only silu)")
    return act


def _check_gemma(cfg: dict[str, Any]) -> None:
    if cfg.get("attn_logit_softcapping"):
        raise ValueError("attn_logit_softcapping is not supported (no attention backend "
                         "soft-caps attention scores yet; Gemma 2 needs it)")
    if cfg.get("use_bidirectional_attention"):
        raise ValueError("use_bidirectional_attention=true (embedding Gemma) is not supported")


def _gemma_layer_types(cfg: dict[str, Any]) -> tuple[str, ...]:
    """``layer_types`` as given, else every ``sliding_window_pattern``-th layer global."""
    n = int(cfg["num_hidden_layers"])
    types = cfg.get("layer_types")
    if types is None:
        pattern = int(cfg.get("sliding_window_pattern") or 6)
        types = ["sliding_attention" if (i + 1) % pattern else "full_attention"
                 for i in range(n)]
    if len(types) != n or set(types) - {"sliding_attention", "full_attention"}:
        raise ValueError(f"layer_types must list {n} entries of 'sliding_attention' / "
                         f"'full_attention', got {types!r}")
    return tuple(types)


def _gemma_rope(cfg: dict[str, Any]) -> tuple[float, dict[str, Any] | None, float]:
    """(global theta, global scaling, local theta) of a Gemma 3 config: transformers 5 nests
    ``rope_parameters`` by layer type; 4.x has ``rope_theta`` / ``rope_scaling`` (global) and
    ``rope_local_base_freq``."""
    params = cfg.get("rope_parameters") or {}
    if "full_attention" in params or "sliding_attention" in params:
        full = dict(params.get("full_attention") or {})
        local = dict(params.get("sliding_attention") or {})
        if local.get("rope_type", "default") != "default":
            raise ValueError("scaled rope on Gemma 3's sliding layers is not supported")
        theta, scaling = _rope({"rope_parameters": {"rope_theta": 1_000_000.0, **full}})
        return theta, scaling, float(local.get("rope_theta", 10_000.0))
    theta, scaling = _rope({**cfg, "rope_theta": cfg.get("rope_theta", 1_000_000.0)})
    return theta, scaling, float(cfg.get("rope_local_base_freq", 10_000.0))


def _rope(cfg: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    params = dict(cfg.get("rope_parameters") or {})
    theta = float(params.pop("rope_theta", cfg.get("rope_theta", 10000.0)))
    params.pop("partial_rotary_factor", None)
    scaling = dict(cfg.get("rope_scaling") or params)
    rope_type = scaling.pop("type", None) or scaling.get("rope_type") or "default"
    if rope_type == "su":                 # the older name of Phi-3's longrope
        rope_type = "longrope"
    if rope_type == "longrope":
        original = (scaling.get("original_max_position_embeddings")
                    or cfg.get("original_max_position_embeddings"))
        if not original:
            raise ValueError("longrope scaling needs original_max_position_embeddings")
        scaling["original_max_position_embeddings"] = int(original)
        scaling["max_position_embeddings"] = int(cfg.get("max_position_embeddings", 4096))
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
    if model_type in ("qwen2", "qwen3", "qwen2_moe", "qwen3_moe", *_VL_MODEL_TYPES):
        if cfg.get("use_sliding_window"):
            raise ValueError(f"{model_type} with use_sliding_window=true is not supported")
        return None
    if model_type in ("mistral", "mixtral", "phi3", *_GEMMA3) and window is not None:
        return int(window)
    return None
