"""The portable reference attention backend: plain torch, any device, the oracle of the others.

Algorithm of one layer's forward (everything vectorised, no Python loop over tokens):
  1. write the new tokens' K and V into the paged cache at ``slot_mapping``;
  2. gather each request's whole context (cached + new) through its block table into a padded
     ``[num_reqs, max_seq_len]`` key/value batch (padding reads block 0, then is masked);
  3. scatter the queries into a padded ``[num_reqs, max_query_len]`` batch;
  4. one ``scaled_dot_product_attention`` call with a boolean mask: key ``j`` is visible to the
     query at absolute position ``p`` iff ``j < seq_len`` and ``j <= p`` (and, with a sliding
     window ``w``, ``j > p - w``); KV heads are repeated for GQA;
  5. gather the valid rows back onto the flat token axis.
Decode requests and prefill chunks (with or without cached context) are the same case: a query
at offset ``i`` of a chunk has absolute position ``context_len + i``.

Empty ``kv_cache`` (memory profiling): no write; each request attends causally to its own new
tokens only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from vllm_core.attention.backend import (
    AttentionBackend,
    AttentionImpl,
    AttentionMetadataBuilder,
    CommonAttentionMetadata,
)
from vllm_core.attention.kv_scales import dequantize_kv, quantize_kv


@dataclass(slots=True)
class ReferenceAttentionMetadata:
    """Per-step index tensors shared by all layers (built once by the builder).

    query_index  [R, Q] long: flat token index of each padded query (padding -> 0)
    query_valid  [R, Q] bool
    query_pos    [R, Q] long: absolute position of each query in its sequence
    key_slots    [R, S] long: cache slot of each context position (padding -> slot 0)
    mask         [R, 1, Q, S] bool: visibility without a sliding window (padded query rows
                 see key 0 only, so no row is fully masked)
    output_index [num_tokens] long: row of each flat token in the [R * Q] padded output
    """

    common: CommonAttentionMetadata
    query_index: torch.Tensor
    query_valid: torch.Tensor
    query_pos: torch.Tensor
    key_slots: torch.Tensor
    mask: torch.Tensor
    output_index: torch.Tensor


class ReferenceAttentionMetadataBuilder(AttentionMetadataBuilder):
    def build(self, common: CommonAttentionMetadata) -> ReferenceAttentionMetadata:
        device = common.query_start_loc.device
        num_reqs, max_q, max_s = common.num_reqs, common.max_query_len, common.max_seq_len
        qsl = common.query_start_loc.long()
        q_lens = qsl[1:] - qsl[:-1]
        q_off = torch.arange(max_q, device=device)
        query_valid = q_off[None, :] < q_lens[:, None]
        query_index = torch.where(query_valid, qsl[:-1, None] + q_off[None, :], 0)
        query_pos = common.context_lens.long()[:, None] + q_off[None, :]

        k_pos = torch.arange(max_s, device=device)
        key_valid = k_pos[None, :] < common.seq_lens.long()[:, None]
        block_table = common.block_table.long()
        cols = (k_pos // common.block_size).clamp(max=block_table.shape[1] - 1)
        blocks = block_table[:, cols]                                      # [R, S]
        key_slots = torch.where(key_valid, blocks * common.block_size + k_pos % common.block_size,
                                0)

        mask = key_valid[:, None, :] & (k_pos[None, None, :] <= query_pos[:, :, None])
        mask = _unmask_padding_rows(mask, query_valid)

        req_of_token = torch.repeat_interleave(torch.arange(num_reqs, device=device), q_lens,
                                               output_size=common.num_tokens)
        token = torch.arange(common.num_tokens, device=device)
        output_index = req_of_token * max_q + (token - qsl[req_of_token])
        return ReferenceAttentionMetadata(common, query_index, query_valid, query_pos, key_slots,
                                          mask.unsqueeze(1), output_index)


def _unmask_padding_rows(mask: torch.Tensor, query_valid: torch.Tensor) -> torch.Tensor:
    """Let padded query rows see key 0 so softmax never meets a fully masked row."""
    first = torch.zeros_like(mask)
    first[..., 0] = True
    return torch.where(query_valid[..., None], mask, first)


class ReferenceAttentionImpl(AttentionImpl):
    supports_kv_scales = True

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                kv_cache: torch.Tensor, attn_metadata: Any) -> torch.Tensor:
        md: ReferenceAttentionMetadata = attn_metadata
        n = md.common.num_tokens
        num_reqs, max_q = md.query_index.shape
        num_rows = query.shape[0]
        query, key, value = query[:n], key[:n], value[:n]

        q = query[md.query_index]                                          # [R, Q, H, D]
        if kv_cache.numel() == 0:
            k, v = key[md.query_index], value[md.query_index]              # [R, Q, Hk, D]
            q_off = torch.arange(max_q, device=query.device)
            key_pos = q_off
            query_pos = q_off.expand(num_reqs, max_q)
            causal = q_off[None, None, :] <= q_off[None, :, None]
            mask = _unmask_padding_rows(causal & md.query_valid[:, None, :],
                                        md.query_valid).unsqueeze(1)
        else:
            key_cache = kv_cache[0].view(-1, self.num_kv_heads, self.head_size)
            value_cache = kv_cache[1].view(-1, self.num_kv_heads, self.head_size)
            slots = md.common.slot_mapping[:n].long()
            # a float8 cache: scaled and saturated on write, widened and scaled on read
            key_cache[slots] = quantize_kv(key, self.k_scale, key_cache.dtype)
            value_cache[slots] = quantize_kv(value, self.v_scale, value_cache.dtype)
            k = dequantize_kv(key_cache[md.key_slots], self.k_scale, query.dtype)  # [R,S,Hk,D]
            v = dequantize_kv(value_cache[md.key_slots], self.v_scale, query.dtype)
            key_pos = torch.arange(md.key_slots.shape[1], device=query.device)
            query_pos = md.query_pos
            mask = md.mask

        if self.sliding_window is not None:
            in_window = key_pos[None, None, :] > (query_pos[:, :, None] - self.sliding_window)
            mask = _unmask_padding_rows(mask.squeeze(1) & in_window,
                                        md.query_valid).unsqueeze(1)

        group = self.num_heads // self.num_kv_heads
        q = q.transpose(1, 2)                                              # [R, H, Q, D]
        k = k.transpose(1, 2).repeat_interleave(group, dim=1)              # [R, H, S, D]
        v = v.transpose(1, 2).repeat_interleave(group, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)
        out = out.transpose(1, 2).reshape(num_reqs * max_q, self.num_heads * self.head_size)
        result = out[md.output_index]
        if num_rows == n:
            return result
        padded = result.new_zeros(num_rows, result.shape[1])   # rows past num_tokens: padding
        padded[:n] = result
        return padded


class ReferenceAttentionBackend(AttentionBackend):
    """Portable paged attention in plain torch; every dtype, head size, block size and
    sliding window. Slow but simple: the oracle other backends are tested against."""

    name = "reference"
    supported_dtypes = ("float32", "bfloat16", "float16")
    supported_kv_cache_dtypes = ("auto", "float32", "bfloat16", "float16", "fp8", "fp8_e4m3",
                                 "fp8_e5m2")
    supports_sliding_window = True
    preferred_block_size = 16

    @staticmethod
    def get_builder_cls() -> type[AttentionMetadataBuilder]:
        return ReferenceAttentionMetadataBuilder

    @staticmethod
    def get_impl_cls() -> type[AttentionImpl]:
        return ReferenceAttentionImpl
