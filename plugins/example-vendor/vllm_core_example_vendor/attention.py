"""``ExamplePagedAttentionBackend``: a simple, readable paged attention in torch.

It implements the contract of ``vllm_core.attention.backend`` (read its docstrings first):

KV cache of one layer: ``[2, num_blocks, block_size, num_kv_heads, head_size]`` (K then V);
the slot of a token is ``block_id * block_size + offset``.

``forward`` for a batch of requests whose new tokens are concatenated on one axis:
  1. write the new K/V into the cache at ``slot_mapping`` (skipped when the cache is empty,
     i.e. during memory profiling);
  2. for each request: gather its whole context (cached + new: ``seq_len`` tokens) through its
     block table; the new tokens are the last ``q_len`` of them, so the query at chunk offset
     ``i`` sits at position ``seq_len - q_len + i`` and may see keys at positions ``<=`` that
     (and, with a sliding window ``w``, ``>`` that minus ``w``);
  3. one ``scaled_dot_product_attention`` per request with that boolean mask, KV heads repeated
     for grouped-query attention.
During profiling (empty cache) each request attends causally to its new tokens alone.

A per-request Python loop is slow for big batches; a vendor replaces step 2-3 with its kernel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from vllm_core.attention.backend import (
    AttentionBackend,
    AttentionImpl,
    AttentionMetadataBuilder,
    CommonAttentionMetadata,
)


@dataclass(slots=True)
class ExampleAttentionMetadata:
    """What every layer needs for one step (built once per step by the builder)."""

    slot_mapping: torch.Tensor          # [num_tokens] long
    block_table: torch.Tensor           # [num_reqs, max_blocks] long
    query_start_loc: list[int]          # host copy, num_reqs + 1 entries
    seq_lens: list[int]                 # host copy
    block_size: int


class ExampleMetadataBuilder(AttentionMetadataBuilder):
    def build(self, common: CommonAttentionMetadata) -> ExampleAttentionMetadata:
        return ExampleAttentionMetadata(
            slot_mapping=common.slot_mapping.long(),
            block_table=common.block_table.long(),
            query_start_loc=[int(x) for x in common.query_start_loc_cpu.tolist()],
            seq_lens=[int(x) for x in common.seq_lens_cpu.tolist()],
            block_size=common.block_size,
        )


class ExamplePagedAttentionImpl(AttentionImpl):
    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                kv_cache: torch.Tensor, attn_metadata: ExampleAttentionMetadata) -> torch.Tensor:
        meta = attn_metadata
        num_tokens = query.shape[0]
        out = torch.empty(num_tokens, self.num_heads * self.head_size, dtype=query.dtype,
                          device=query.device)
        profiling = kv_cache.numel() == 0
        if not profiling:
            key_cache, value_cache = kv_cache[0], kv_cache[1]
            flat_shape = (-1, self.num_kv_heads, self.head_size)
            key_cache.view(flat_shape)[meta.slot_mapping] = key.to(key_cache.dtype)
            value_cache.view(flat_shape)[meta.slot_mapping] = value.to(value_cache.dtype)
        for r in range(len(meta.seq_lens)):
            start, end = meta.query_start_loc[r], meta.query_start_loc[r + 1]
            q_len = end - start
            if q_len == 0:
                continue
            if profiling:
                seq_len, keys, values = q_len, key[start:end], value[start:end]
            else:
                seq_len = meta.seq_lens[r]
                keys = self._gather(key_cache, meta, r, seq_len)
                values = self._gather(value_cache, meta, r, seq_len)
            out[start:end] = self._attend(query[start:end], keys, values, seq_len)
        return out

    def _gather(self, cache: torch.Tensor, meta: ExampleAttentionMetadata, r: int,
                seq_len: int) -> torch.Tensor:
        """The first ``seq_len`` tokens of request ``r``: [seq_len, num_kv_heads, head_size]."""
        num_blocks = -(-seq_len // meta.block_size)
        blocks = meta.block_table[r, :num_blocks]
        return cache[blocks].reshape(-1, self.num_kv_heads, self.head_size)[:seq_len]

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                seq_len: int) -> torch.Tensor:
        q_len = q.shape[0]
        q_pos = torch.arange(seq_len - q_len, seq_len, device=q.device).unsqueeze(1)
        k_pos = torch.arange(seq_len, device=q.device).unsqueeze(0)
        mask = k_pos <= q_pos                                    # [q_len, seq_len]
        if self.sliding_window is not None:
            mask &= k_pos > q_pos - self.sliding_window
        group = self.num_heads // self.num_kv_heads
        k = k.to(q.dtype).transpose(0, 1).repeat_interleave(group, dim=0)  # [H, S, D]
        v = v.to(q.dtype).transpose(0, 1).repeat_interleave(group, dim=0)
        o = F.scaled_dot_product_attention(q.transpose(0, 1), k, v, attn_mask=mask,
                                           scale=self.scale)    # [H, q_len, D]
        return o.transpose(0, 1).reshape(q_len, self.num_heads * self.head_size)


class ExamplePagedAttentionBackend(AttentionBackend):
    name: ClassVar[str] = "example_paged"
    supported_dtypes: ClassVar[tuple[str, ...]] = ("float32", "bfloat16")
    supported_kv_cache_dtypes: ClassVar[tuple[str, ...]] = ("auto",)
    supported_head_sizes: ClassVar[tuple[int, ...] | None] = None
    supported_block_sizes: ClassVar[tuple[int, ...] | None] = None
    supports_sliding_window: ClassVar[bool] = True
    preferred_block_size: ClassVar[int] = 16

    @staticmethod
    def get_builder_cls() -> type[AttentionMetadataBuilder]:
        return ExampleMetadataBuilder

    @staticmethod
    def get_impl_cls() -> type[AttentionImpl]:
        return ExamplePagedAttentionImpl
