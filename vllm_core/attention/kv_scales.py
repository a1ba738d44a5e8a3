"""Per-layer scales of an FP8 KV cache (``k_scale`` / ``v_scale``).

Contract: with a float8 cache, a key ``k`` is stored as ``fp8(k / k_scale)`` (rounded to
nearest, saturated at the format's largest finite value: 448 for e4m3, 57344 for e5m2) and
read back as ``stored * k_scale``; values the same with ``v_scale``. A cache in any other
dtype ignores the scales. Each scale is one float32 per layer (per-tensor), 1.0 unless the
checkpoint carries a calibrated one, and it lives on the model's device so kernels read it
without a host sync (CUDA-graph safe).

Checkpoint names (one scalar tensor each, per decoder layer):

- ``model.layers.N.self_attn.k_scale`` / ``v_scale``: vLLM-style FP8 exports and
  llm-compressor's ``kv_cache_scheme`` (compressed-tensors) since 2024;
- ``model.layers.N.self_attn.k_proj.output_scale`` / ``v_proj.output_scale``: AutoFP8 and
  older llm-compressor exports (the scale of the projection's output, i.e. of K / V).
"""

from __future__ import annotations

from typing import Any

import torch

_SUFFIXES = {
    ".self_attn.k_scale": "k", ".self_attn.v_scale": "v",
    ".self_attn.attn.k_scale": "k", ".self_attn.attn.v_scale": "v",
    ".self_attn.k_proj.output_scale": "k", ".self_attn.v_proj.output_scale": "v",
}


def kv_scale_target(name: str) -> tuple[str, str] | None:
    """``(attention module path, "k" | "v")`` when checkpoint tensor ``name`` is a KV-cache
    scale, else None. The module path is the layer's ``self_attn.attn``."""
    for suffix, which in _SUFFIXES.items():
        if name.endswith(suffix):
            return name[:-len(suffix)] + ".self_attn.attn", which
    return None


def fp8_max(dtype: torch.dtype) -> float:
    """The largest finite value of a float8 dtype (where stores saturate)."""
    return float(torch.finfo(dtype).max)


def is_fp8(dtype: torch.dtype) -> bool:
    return dtype in (torch.float8_e4m3fn, torch.float8_e5m2)


def quantize_kv(x: torch.Tensor, scale: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """``x`` as a cache of ``dtype`` stores it (the contract above; a plain cast for a
    non-float8 ``dtype``)."""
    if not is_fp8(dtype):
        return x.to(dtype)
    y = x.float() if scale is None else x.float() / scale
    limit = fp8_max(dtype)
    return y.clamp(-limit, limit).to(dtype)


def dequantize_kv(stored: torch.Tensor, scale: torch.Tensor | None,
                  dtype: torch.dtype) -> torch.Tensor:
    """Cache entries widened to ``dtype`` (times the scale for a float8 cache)."""
    if not is_fp8(stored.dtype) or scale is None:
        return stored.to(dtype)
    return (stored.float() * scale).to(dtype)


def check_kv_cache_scheme(scheme: dict[str, Any] | None) -> None:
    """Refuse, in words, a compressed-tensors ``kv_cache_scheme`` other than per-tensor
    static FP8 (the only kind whose scales we apply); None / empty is fine."""
    if not scheme:
        return
    num_bits, kind = scheme.get("num_bits"), scheme.get("type", "float")
    strategy, dynamic = scheme.get("strategy", "tensor"), scheme.get("dynamic", False)
    if num_bits != 8 or kind != "float" or strategy != "tensor" or dynamic:
        raise ValueError(
            f"compressed-tensors kv_cache_scheme {{num_bits: {num_bits}, type: {kind}, "
            f"strategy: {strategy}, dynamic: {dynamic}}} is not supported (8-bit float, "
            "per-tensor, static scales are: run with --kv-cache-dtype fp8)")
