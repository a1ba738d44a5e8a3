"""The attention layer: a thin wrapper over the selected backend's ``AttentionImpl``."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vllm_core.attention.backend import AttentionBackend


class Attention(nn.Module):
    """Paged attention of one decoder layer.

    The implementation is built once, as ``attn_backend.get_impl_cls()(num_heads, head_size,
    scale, num_kv_heads, sliding_window)``. ``forward`` takes this layer's KV cache and the
    step's shared metadata explicitly (nothing is read from globals) and returns
    ``[T, num_heads * head_size]``.
    """

    def __init__(self, num_heads: int, head_size: int, scale: float, num_kv_heads: int,
                 attn_backend: type[AttentionBackend], sliding_window: int | None = None) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_size = head_size
        self.impl = attn_backend.get_impl_cls()(num_heads, head_size, scale, num_kv_heads,
                                                sliding_window)
        # FP8 KV-cache scales (attention/kv_scales.py): 1.0 unless the checkpoint has some
        self.register_buffer("k_scale", torch.ones((), dtype=torch.float32), persistent=False)
        self.register_buffer("v_scale", torch.ones((), dtype=torch.float32), persistent=False)

    def load_kv_scale(self, which: str, tensor: torch.Tensor) -> None:
        """Copy a checkpoint's ``k_scale`` (``which`` "k") or ``v_scale`` ("v"): one
        positive value."""
        if tensor.numel() != 1:
            raise ValueError(f"has {tensor.numel()} values; only per-tensor KV-cache scales "
                             "(one value per layer) are supported")
        value = tensor.reshape(()).float()
        if not bool(value > 0) or not bool(torch.isfinite(value)):
            raise ValueError(f"is a KV-cache scale of {float(value)}; it must be positive")
        getattr(self, f"{which}_scale").copy_(value)

    def process_after_loading(self) -> None:
        """Give the implementation the layer's KV-cache scales (after loading)."""
        self.impl.set_kv_scales(self.k_scale, self.v_scale)

    @property
    def fuses_rotary(self) -> bool:
        """Whether the backend applies the rotary embedding itself (``forward_with_rotary``)."""
        return self.impl.fuses_rotary

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_cache: torch.Tensor,
                attn_metadata: Any) -> torch.Tensor:
        return self.impl.forward(*self._heads(q, k, v), kv_cache, attn_metadata)

    def forward_with_rotary(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                            kv_cache: torch.Tensor, attn_metadata: Any, positions: torch.Tensor,
                            cos_sin_cache: torch.Tensor) -> torch.Tensor:
        """``forward`` of unrotated q/k; the backend rotates them (see ``fuses_rotary``)."""
        return self.impl.forward_with_rotary(*self._heads(q, k, v), kv_cache, attn_metadata,
                                             positions, cos_sin_cache)

    def _heads(self, q: torch.Tensor, k: torch.Tensor,
               v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        num_tokens = q.shape[0]
        return (q.view(num_tokens, self.num_heads, self.head_size),
                k.view(num_tokens, self.num_kv_heads, self.head_size),
                v.view(num_tokens, self.num_kv_heads, self.head_size))
