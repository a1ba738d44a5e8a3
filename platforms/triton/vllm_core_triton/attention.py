"""The "triton" attention backend: our portable Triton paged-attention kernels.

KV cache per layer: ``(2, num_blocks, block_size, num_kv_heads, head_size)`` (the contract's
default layout; index 0 keys, 1 values). A token's row of one KV head is ``head_size``
contiguous elements (256 bytes at head 128 in bf16), which the kernel reads fully coalesced,
and the layout is the one ``reshape_and_cache`` and the reference backend share.

One step = one ``reshape_and_cache`` launch plus one attention launch (plus a split reduction
when long contexts are split) per layer, for the whole mixed batch of decodes and prefill
chunks. Launch shapes are planned once per step and (head configuration) and shared by all
layers through the metadata.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from vllm_core.attention.backend import (
    AttentionBackend,
    AttentionImpl,
    AttentionMetadataBuilder,
    CommonAttentionMetadata,
)
from vllm_core_triton import envs


@dataclass(slots=True)
class TritonAttentionMetadata:
    """What every layer's ``TritonAttentionImpl.forward`` needs for one step.

    Tensors are on the model's device (see ``CommonAttentionMetadata`` for their meaning);
    ``max_query_len`` / ``max_seq_len`` are host integers used only to shape launches.
    ``launches`` caches the launch plan per (num_kv_heads, num_queries_per_kv, head_size,
    new-KV mode) so that layers after the first plan nothing.
    """

    query_start_loc: torch.Tensor
    seq_lens: torch.Tensor
    block_table: torch.Tensor
    slot_mapping: torch.Tensor
    num_reqs: int
    num_tokens: int
    num_decodes: int
    max_query_len: int
    max_seq_len: int
    block_size: int
    num_compute_units: int
    launches: dict = field(default_factory=dict)
    for_capture: bool = False


class TritonAttentionMetadataBuilder(AttentionMetadataBuilder):
    """Copies the common metadata's tensors (no device work) and records the device size."""

    def build(self, common: CommonAttentionMetadata) -> TritonAttentionMetadata:
        from vllm_core_triton.kernels.paged_attention import device_parallelism

        return TritonAttentionMetadata(
            query_start_loc=common.query_start_loc, seq_lens=common.seq_lens,
            block_table=common.block_table, slot_mapping=common.slot_mapping,
            num_reqs=common.num_reqs, num_tokens=common.num_tokens,
            num_decodes=common.num_decodes, max_query_len=common.max_query_len,
            max_seq_len=common.max_seq_len, block_size=common.block_size,
            num_compute_units=device_parallelism(torch.device(self.device)))

    def build_for_capture(self, common: CommonAttentionMetadata,
                          max_seq_len: int) -> TritonAttentionMetadata:
        """A graph's metadata: launches planned once for contexts up to ``max_seq_len`` and
        ``common.max_query_len`` tokens per request (see ``TritonAttentionImpl._plan``; the
        kernel's program grid covers any split of ``num_tokens`` over the requests, so the
        padding request of a verification graph may be longer), lengths read on the device."""
        md = self.build(common)
        md.max_query_len, md.max_seq_len, md.for_capture = (max(1, common.max_query_len),
                                                            max_seq_len, True)
        return md


class TritonAttentionImpl(AttentionImpl):
    """Writes the new K/V into the paged cache, then runs the mixed-batch attention kernel.
    Fuses the rotary embedding into the cache write (``forward_with_rotary``: one kernel
    rotates q and writes the rotated k and v into the cache)."""

    fuses_rotary: ClassVar[bool] = True
    supports_kv_scales: ClassVar[bool] = True       # applied to a float8 cache only

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                kv_cache: torch.Tensor, attn_metadata: TritonAttentionMetadata) -> torch.Tensor:
        from vllm_core_triton.kernels.reshape_and_cache import reshape_and_cache

        if kv_cache.numel():
            reshape_and_cache(key, value, kv_cache, attn_metadata.slot_mapping,
                              self.k_scale, self.v_scale)
        return self._attend(query, key, value, kv_cache, attn_metadata)

    def forward_with_rotary(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                            kv_cache: torch.Tensor, attn_metadata: TritonAttentionMetadata,
                            positions: torch.Tensor, cos_sin_cache: torch.Tensor
                            ) -> torch.Tensor:
        from vllm_core_triton.kernels.rotary import rotary_and_cache, rotary_embedding

        if kv_cache.numel():
            rotary_and_cache(positions, query, key, value, cos_sin_cache, kv_cache,
                             attn_metadata.slot_mapping, self.k_scale, self.v_scale)
        else:                               # profiling: attention reads the new k directly
            rotary_embedding(positions, query, key, cos_sin_cache, self.head_size)
        return self._attend(query, key, value, kv_cache, attn_metadata)

    def _attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                kv_cache: torch.Tensor, attn_metadata: TritonAttentionMetadata) -> torch.Tensor:
        from vllm_core_triton.kernels.paged_attention import paged_attention

        md = attn_metadata
        num_rows = query.shape[0]
        q = query.view(num_rows, self.num_heads, self.head_size)
        k = key.view(key.shape[0], self.num_kv_heads, self.head_size)
        v = value.view(value.shape[0], self.num_kv_heads, self.head_size)
        profiling = kv_cache.numel() == 0
        plan_key = (self.num_kv_heads, self.num_heads // self.num_kv_heads, self.head_size,
                    profiling)
        launch = md.launches.get(plan_key)
        if launch is None:
            launch = md.launches[plan_key] = self._plan(md, profiling)
        out = torch.empty_like(q)
        if num_rows > md.num_tokens:  # padded batch (graph capture): rows past the batch
            out[md.num_tokens:].zero_()
        if profiling:
            paged_attention(q, k, v, query_start_loc=md.query_start_loc, seq_lens=md.seq_lens,
                            block_table=md.block_table, scale=self.scale, launch=launch,
                            sliding_window=self.sliding_window, kv_from_new=True, out=out)
        else:
            paged_attention(q, kv_cache[0], kv_cache[1], query_start_loc=md.query_start_loc,
                            seq_lens=md.seq_lens, block_table=md.block_table,
                            scale=self.scale, launch=launch,
                            sliding_window=self.sliding_window, out=out,
                            k_scale=self.k_scale, v_scale=self.v_scale)
        return out.view(num_rows, self.num_heads * self.head_size)


    def _plan(self, md: TritonAttentionMetadata, profiling: bool) -> Any:
        """The launch of this head configuration. For a graph (``md.for_capture``) the split
        count is frozen for every context up to ``max_seq_len``, and at small batches a
        request's KV walked by one program is latency-bound (8 programs for batch 1 of
        Llama-8B: ~26 us per layer at 640 tokens on an H200). So small graphs split each context
        into enough pieces for about two waves of programs, at least two 64-token tiles per
        piece; empty pieces are harmless."""
        from vllm_core_triton.kernels.paged_attention import plan_launch

        gqa = self.num_heads // self.num_kv_heads
        splits = None
        if md.for_capture:
            programs = md.num_reqs * self.num_kv_heads
            splits = 1
            if programs < md.num_compute_units:
                splits = max(1, min(16, -(-2 * md.num_compute_units // programs),
                                    md.max_seq_len // 128))
        tiles = envs.decode_attention_tiles() if md.max_query_len <= 1 else None
        tile_n, num_warps, num_stages = tiles or (None, None, None)
        return plan_launch(
            num_tokens=md.num_tokens, num_reqs=md.num_reqs, max_query_len=md.max_query_len,
            max_seq_len=md.max_query_len if profiling else md.max_seq_len,
            num_kv_heads=self.num_kv_heads, num_queries_per_kv=gqa, head_size=self.head_size,
            num_compute_units=md.num_compute_units, num_splits=splits, tile_n=tile_n,
            num_warps=num_warps, num_stages=num_stages)


class TritonAttentionBackend(AttentionBackend):
    """Portable Triton paged attention (CUDA here; ROCm and XPU can reuse it unchanged).

    Serves float32/bfloat16/float16 with a KV cache in the model dtype, any head size up to 256
    (non-powers of two are padded with masks), page sizes 16-128, sliding windows.
    """

    name: ClassVar[str] = "triton"
    supported_dtypes: ClassVar[tuple[str, ...]] = ("bfloat16", "float16", "float32")
    # fp8: the cache holds float8 with per-layer scales (1.0 unless calibrated), widened to
    # the query dtype on read
    supported_kv_cache_dtypes: ClassVar[tuple[str, ...]] = ("auto", "fp8", "fp8_e4m3",
                                                             "fp8_e5m2")
    supported_head_sizes: ClassVar[tuple[int, ...] | None] = (
        32, 64, 80, 96, 112, 128, 160, 192, 256)
    supported_block_sizes: ClassVar[tuple[int, ...] | None] = (16, 32, 64, 128)
    supports_sliding_window: ClassVar[bool] = True
    preferred_block_size: ClassVar[int] = 16
    required_packages: ClassVar[tuple[str, ...]] = ("triton",)
    block_table_dtype: ClassVar[torch.dtype] = torch.int32
    supports_graph_capture: ClassVar[bool] = True
    supports_verify_graph_capture: ClassVar[bool] = True

    @staticmethod
    def get_builder_cls() -> type[AttentionMetadataBuilder]:
        return TritonAttentionMetadataBuilder

    @staticmethod
    def get_impl_cls() -> type[AttentionImpl]:
        return TritonAttentionImpl
