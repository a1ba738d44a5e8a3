"""The "flash_attn" backend: a thin adapter over the ``flash_attn`` package (FlashAttention-2).

Refused with "package flash_attn is not installed" where the package is absent. Where present,
new K/V are written by our Triton ``reshape_and_cache`` and attention is one
``flash_attn_varlen_func`` call over the paged cache (same layout as the "triton" backend:
``(2, num_blocks, block_size, num_kv_heads, head_size)``). Upstream FlashAttention-2 accepts a
paged cache only with pages that are a multiple of 256 tokens, so this backend declares block
sizes 256 and 512 and is refused for smaller pages. Causal masking in flash_attn is aligned to the
bottom right, which is exactly "a chunk attends to its context plus itself causally".
Not exercised by this repository's tests (the package is not installed here).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from vllm_core.attention.backend import (
    AttentionBackend,
    AttentionImpl,
    AttentionMetadataBuilder,
    CommonAttentionMetadata,
)


@dataclass(slots=True)
class FlashAttentionMetadata:
    cu_seqlens_q: torch.Tensor   # int32 [num_reqs + 1]
    cu_seqlens_k: torch.Tensor   # int32 [num_reqs + 1], cumulative seq_lens
    block_table: torch.Tensor    # int32 [num_reqs, max_blocks]
    slot_mapping: torch.Tensor
    max_query_len: int
    max_seq_len: int
    num_tokens: int


class FlashAttentionMetadataBuilder(AttentionMetadataBuilder):
    def build(self, common: CommonAttentionMetadata) -> FlashAttentionMetadata:
        seq = common.seq_lens.to(torch.int32)
        cu_k = torch.zeros(seq.shape[0] + 1, dtype=torch.int32, device=seq.device)
        torch.cumsum(seq, 0, out=cu_k[1:])
        return FlashAttentionMetadata(
            cu_seqlens_q=common.query_start_loc.to(torch.int32), cu_seqlens_k=cu_k,
            block_table=common.block_table.to(torch.int32), slot_mapping=common.slot_mapping,
            max_query_len=common.max_query_len, max_seq_len=common.max_seq_len,
            num_tokens=common.num_tokens)


class FlashAttentionImpl(AttentionImpl):
    def __init__(self, num_heads: int, head_size: int, scale: float, num_kv_heads: int,
                 sliding_window: int | None = None) -> None:
        super().__init__(num_heads, head_size, scale, num_kv_heads, sliding_window)
        from flash_attn import flash_attn_varlen_func  # present: the backend was selected

        self._varlen = flash_attn_varlen_func
        # flash_attn's window (left, right) is inclusive: key j is seen by query i when
        # i - left <= j; ours admits i - j < window, so left = window - 1.
        self._window = (-1, -1) if sliding_window is None else (sliding_window - 1, 0)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                kv_cache: torch.Tensor, attn_metadata: FlashAttentionMetadata) -> torch.Tensor:
        from vllm_core_triton.kernels.reshape_and_cache import reshape_and_cache

        md = attn_metadata
        t = md.num_tokens
        q = query.view(-1, self.num_heads, self.head_size)[:t]
        k = key.view(-1, self.num_kv_heads, self.head_size)[:t]
        v = value.view(-1, self.num_kv_heads, self.head_size)[:t]
        out = torch.zeros_like(query.view(-1, self.num_heads, self.head_size))
        if kv_cache.numel() == 0:  # memory profiling: each chunk is its own whole context
            out[:t] = self._varlen(q, k, v, md.cu_seqlens_q, md.cu_seqlens_q, md.max_query_len,
                                   md.max_query_len, softmax_scale=self.scale, causal=True,
                                   window_size=self._window)
        else:
            reshape_and_cache(k, v, kv_cache, md.slot_mapping)
            out[:t] = self._varlen(q, kv_cache[0], kv_cache[1], md.cu_seqlens_q,
                                   md.cu_seqlens_k, md.max_query_len, md.max_seq_len,
                                   softmax_scale=self.scale, causal=True,
                                   window_size=self._window, block_table=md.block_table)
        return out.view(query.shape[0], self.num_heads * self.head_size)


class FlashAttentionBackend(AttentionBackend):
    name: ClassVar[str] = "flash_attn"
    supported_dtypes: ClassVar[tuple[str, ...]] = ("bfloat16", "float16")
    supported_head_sizes: ClassVar[tuple[int, ...] | None] = (
        32, 64, 96, 128, 160, 192, 224, 256)
    supported_block_sizes: ClassVar[tuple[int, ...] | None] = (256, 512)
    supports_sliding_window: ClassVar[bool] = True
    preferred_block_size: ClassVar[int] = 256
    required_packages: ClassVar[tuple[str, ...]] = ("flash_attn",)

    @staticmethod
    def get_builder_cls() -> type[AttentionMetadataBuilder]:
        return FlashAttentionMetadataBuilder

    @staticmethod
    def get_impl_cls() -> type[AttentionImpl]:
        return FlashAttentionImpl
