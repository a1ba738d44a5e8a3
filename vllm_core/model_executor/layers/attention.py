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

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_cache: torch.Tensor,
                attn_metadata: Any) -> torch.Tensor:
        num_tokens = q.shape[0]
        q = q.view(num_tokens, self.num_heads, self.head_size)
        k = k.view(num_tokens, self.num_kv_heads, self.head_size)
        v = v.view(num_tokens, self.num_kv_heads, self.head_size)
        return self.impl.forward(q, k, v, kv_cache, attn_metadata)
