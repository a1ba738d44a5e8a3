"""Rotary position embedding (neox style) with the rope scalings of the Llama family.

Supported ``rope_scaling["rope_type"]``: absent/``default``, ``linear`` (positions divided by
``factor``), ``llama3`` (Llama 3.1 frequency-dependent scaling) and ``freq_factors`` (explicit
per-frequency divisors, as GGUF files store Llama 3 scaling in a ``rope_freqs`` tensor) and
``longrope`` (Phi-3 / Phi-4-mini "su" scaling: per-frequency ``short_factor`` / ``long_factor``
divisors and an attention factor multiplying cos and sin, see ``longrope_cos_sin``).
Anything else raises ``ValueError`` at construction.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from vllm_core.model_executor.layers.ops import LayerOps

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "freq_factors", "longrope")


def rope_inv_freq(rotary_dim: int, base: float,
                  rope_scaling: dict[str, Any] | None) -> torch.Tensor:
    """The float32 inverse frequencies [rotary_dim // 2] after scaling (on the CPU)."""
    exponents = torch.arange(0, rotary_dim, 2, dtype=torch.int64, device="cpu").float()
    inv_freq = 1.0 / (base ** (exponents / rotary_dim))
    rope_type = (rope_scaling or {}).get("rope_type", "default")
    if rope_type == "default":
        return inv_freq
    cfg = rope_scaling or {}
    if rope_type == "linear":
        return inv_freq / float(cfg["factor"])
    if rope_type == "llama3":
        return _llama3_inv_freq(inv_freq, cfg)
    if rope_type == "freq_factors":
        factors = torch.tensor(cfg["freq_factors"], dtype=torch.float32, device="cpu")
        if factors.shape != inv_freq.shape:
            raise ValueError(f"rope freq_factors has {factors.numel()} entries, expected "
                             f"{inv_freq.numel()}")
        return inv_freq / factors
    if rope_type == "longrope":
        return inv_freq / _longrope_factors(cfg, "short_factor", inv_freq.numel())
    raise ValueError(f"rope_scaling rope_type {rope_type!r} is not supported; supported: "
                     f"{', '.join(SUPPORTED_ROPE_TYPES)}")


def _longrope_factors(cfg: dict[str, Any], key: str, n: int) -> torch.Tensor:
    factors = torch.tensor(cfg[key], dtype=torch.float32, device="cpu")
    if factors.shape != (n,):
        raise ValueError(f"longrope {key} has {factors.numel()} entries, expected {n} "
                         "(rotary_dim / 2)")
    return factors


def longrope_cos_sin(rotary_dim: int, base: float, cfg: dict[str, Any],
                     max_position: int) -> torch.Tensor:
    """The LongRoPE cos/sin cache [max_position, rotary_dim] (float32, CPU).

    Rows ``p < original_max_position_embeddings`` use ``short_factor``, the rows beyond use
    ``long_factor`` (inverse frequencies ``1 / (factor_i * base^(2i / rotary_dim))``); every row
    is multiplied by ``attention_factor`` (default ``sqrt(1 + ln(s) / ln(original))`` with
    ``s = max_position_embeddings / original``, 1 when ``s <= 1``).

    HF transformers picks one factor set for a whole forward call (long once the longest
    position of the call reaches ``original``). Choosing per position instead keeps a row's
    rotation independent of the batch, of chunking and of the request's later length; the two
    agree exactly on every sequence up to ``original`` tokens (for Phi-3-128k and Phi-4-mini:
    4096), and differ only in the early positions of longer sequences.
    """
    original = int(cfg["original_max_position_embeddings"])
    factor = cfg.get("factor")
    if factor is None:
        factor = float(cfg.get("max_position_embeddings", max_position)) / original
    attention = cfg.get("attention_factor")
    if attention is None:
        attention = (1.0 if factor <= 1.0
                     else math.sqrt(1 + math.log(factor) / math.log(original)))
    exponents = torch.arange(0, rotary_dim, 2, dtype=torch.int64, device="cpu").float()
    base_freq = base ** (exponents / rotary_dim)
    n = base_freq.numel()
    positions = torch.arange(max_position, dtype=torch.float32, device="cpu")
    short = torch.outer(positions, 1.0 / (_longrope_factors(cfg, "short_factor", n) * base_freq))
    long = torch.outer(positions, 1.0 / (_longrope_factors(cfg, "long_factor", n) * base_freq))
    freqs = torch.where((positions < original)[:, None], short, long)
    return torch.cat((freqs.cos(), freqs.sin()), dim=-1) * float(attention)


def _llama3_inv_freq(inv_freq: torch.Tensor, cfg: dict[str, Any]) -> torch.Tensor:
    """Llama 3.1: long wavelengths (beyond original_context / low_freq_factor) are divided by
    ``factor``; short ones (below original_context / high_freq_factor) are kept; the band in
    between interpolates linearly in ``original_context / wavelength``."""
    factor = float(cfg["factor"])
    low = float(cfg["low_freq_factor"])
    high = float(cfg["high_freq_factor"])
    old_ctx = float(cfg["original_max_position_embeddings"])
    wavelen = 2 * math.pi / inv_freq
    smooth = ((old_ctx / wavelen - low) / (high - low)).clamp(0.0, 1.0)
    interpolated = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    out = torch.where(wavelen > old_ctx / low, inv_freq / factor, interpolated)
    return torch.where(wavelen < old_ctx / high, inv_freq, out)


class RotaryEmbedding(nn.Module):
    """Holds ``cos_sin_cache`` [max_position, rotary_dim] float32 (a non-persistent buffer)
    and applies it through ``ops.rotary``. One instance is shared by all layers of a model."""

    def __init__(self, head_size: int, rotary_dim: int, max_position: int, base: float,
                 rope_scaling: dict[str, Any] | None, ops: LayerOps) -> None:
        super().__init__()
        if rotary_dim > head_size or rotary_dim % 2:
            raise ValueError(f"rotary_dim {rotary_dim} must be even and <= head_size {head_size}")
        self.head_size = head_size
        self.rotary_dim = rotary_dim
        self.max_position = max_position
        self.base = base
        self.rope_scaling = rope_scaling
        self.ops = ops
        # computed on the current default device (the loader builds under the target device)
        positions = torch.arange(max_position, dtype=torch.float32)
        if (rope_scaling or {}).get("rope_type") == "longrope":
            cache = longrope_cos_sin(rotary_dim, base, rope_scaling, max_position)
            cache = cache.to(positions.device)
        else:
            freqs = torch.outer(positions, rope_inv_freq(rotary_dim, base, rope_scaling)
                                .to(positions.device))
            cache = torch.cat((freqs.cos(), freqs.sin()), dim=-1)
        self.register_buffer("cos_sin_cache", cache, persistent=False)

    def forward(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.ops.rotary(positions, q, k, self.cos_sin_cache, self.head_size)
