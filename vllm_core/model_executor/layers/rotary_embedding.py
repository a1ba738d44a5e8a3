"""Rotary position embedding (neox style) with the rope scalings of the Llama family.

Supported ``rope_scaling["rope_type"]``: absent/``default``, ``linear`` (positions divided by
``factor``), ``llama3`` (Llama 3.1 frequency-dependent scaling) and ``freq_factors`` (explicit
per-frequency divisors, as GGUF files store Llama 3 scaling in a ``rope_freqs`` tensor).
Anything else raises ``ValueError`` at construction.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from vllm_core.model_executor.layers.ops import LayerOps

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "freq_factors")


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
    raise ValueError(f"rope_scaling rope_type {rope_type!r} is not supported; supported: "
                     f"{', '.join(SUPPORTED_ROPE_TYPES)}")


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
        freqs = torch.outer(positions, rope_inv_freq(rotary_dim, base, rope_scaling)
                            .to(positions.device))
        self.register_buffer("cos_sin_cache", torch.cat((freqs.cos(), freqs.sin()), dim=-1),
                             persistent=False)

    def forward(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.ops.rotary(positions, q, k, self.cos_sin_cache, self.head_size)
