"""The "flashinfer" backend: a thin adapter over the ``flashinfer`` package.

Refused with "package flashinfer is not installed" where the package is absent. Where present,
new K/V are written by our Triton ``reshape_and_cache`` and the whole mixed batch is one
``BatchPrefillWithPagedKVCacheWrapper`` run (decodes are prefills of one token) over the cache
halves ``kv_cache[0]`` / ``kv_cache[1]``, each ``[num_blocks, block_size, num_kv_heads,
head_size]`` (flashinfer's "NHD" layout). The wrapper is planned once per step, at the first
layer, from the block table in flashinfer's CSR form. Wrappers live as long as the metadata
builder (one per head configuration and dtype) and are re-planned each step: constructing one
allocates its device and pinned host workspaces, too slow to do every step. Not exercised by this repository's tests
(the package is not installed here).
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

_WORKSPACE_BYTES = 128 * 1024 * 1024


@dataclass(slots=True)
class FlashInferMetadata:
    qo_indptr: torch.Tensor          # int32 host [num_reqs + 1]
    kv_indptr: torch.Tensor          # int32 host [num_reqs + 1] (pages)
    kv_indices: torch.Tensor         # int32 device [total pages]
    kv_last_page_len: torch.Tensor   # int32 host [num_reqs]
    slot_mapping: torch.Tensor
    num_tokens: int
    block_size: int
    workspace: torch.Tensor
    wrappers: dict[tuple, Any]                        # the builder's, kept across steps
    planned: set[tuple] = field(default_factory=set)  # keys planned for this step


class FlashInferMetadataBuilder(AttentionMetadataBuilder):
    def __init__(self, block_size: int, device: torch.device) -> None:
        super().__init__(block_size, device)
        self._workspace: torch.Tensor | None = None
        self._wrappers: dict[tuple, Any] = {}

    def build(self, common: CommonAttentionMetadata) -> FlashInferMetadata:
        if self._workspace is None:
            self._workspace = torch.empty(_WORKSPACE_BYTES, dtype=torch.uint8,
                                          device=self.device)
        seq = common.seq_lens_cpu.to(torch.int64)
        pages = (seq + common.block_size - 1) // common.block_size
        kv_indptr = torch.zeros(seq.shape[0] + 1, dtype=torch.int32)
        torch.cumsum(pages, 0, out=kv_indptr[1:])
        cols = torch.arange(common.block_table.shape[1], device=common.block_table.device)
        used = cols[None, :] < pages.to(common.block_table.device)[:, None]
        return FlashInferMetadata(
            qo_indptr=common.query_start_loc_cpu.to(torch.int32), kv_indptr=kv_indptr,
            kv_indices=common.block_table[used].to(torch.int32),
            kv_last_page_len=(seq - (pages - 1) * common.block_size).to(torch.int32),
            slot_mapping=common.slot_mapping, num_tokens=common.num_tokens,
            block_size=common.block_size, workspace=self._workspace, wrappers=self._wrappers)


class FlashInferImpl(AttentionImpl):
    def __init__(self, num_heads: int, head_size: int, scale: float, num_kv_heads: int,
                 sliding_window: int | None = None) -> None:
        super().__init__(num_heads, head_size, scale, num_kv_heads, sliding_window)
        import flashinfer  # present: the backend was selected

        self._fi = flashinfer
        self._window_left = -1 if sliding_window is None else sliding_window - 1

    def _wrapper(self, md: FlashInferMetadata, dtype: torch.dtype, profiling: bool) -> Any:
        key = (self.num_heads, self.num_kv_heads, self.head_size, dtype, profiling,
               self._window_left)
        wrapper = md.wrappers.get(key)
        if wrapper is None:
            cls = (self._fi.BatchPrefillWithRaggedKVCacheWrapper if profiling
                   else self._fi.BatchPrefillWithPagedKVCacheWrapper)
            wrapper = md.wrappers[key] = cls(md.workspace, "NHD")
        if key in md.planned:
            return wrapper
        common = dict(causal=True, sm_scale=self.scale, window_left=self._window_left,
                      q_data_type=dtype)
        if profiling:
            wrapper.plan(md.qo_indptr, md.qo_indptr, self.num_heads, self.num_kv_heads,
                         self.head_size, **common)
        else:
            wrapper.plan(md.qo_indptr, md.kv_indptr, md.kv_indices, md.kv_last_page_len,
                         self.num_heads, self.num_kv_heads, self.head_size, md.block_size,
                         kv_data_type=dtype, **common)
        md.planned.add(key)
        return wrapper

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                kv_cache: torch.Tensor, attn_metadata: FlashInferMetadata) -> torch.Tensor:
        from vllm_core_triton.kernels.reshape_and_cache import reshape_and_cache

        md = attn_metadata
        t = md.num_tokens
        q = query.view(-1, self.num_heads, self.head_size)[:t]
        k = key.view(-1, self.num_kv_heads, self.head_size)[:t]
        v = value.view(-1, self.num_kv_heads, self.head_size)[:t]
        out = torch.zeros_like(query.view(-1, self.num_heads, self.head_size))
        profiling = kv_cache.numel() == 0
        wrapper = self._wrapper(md, query.dtype, profiling)
        if profiling:
            out[:t] = wrapper.run(q, k, v)
        else:
            reshape_and_cache(k, v, kv_cache, md.slot_mapping)
            out[:t] = wrapper.run(q, (kv_cache[0], kv_cache[1]))
        return out.view(query.shape[0], self.num_heads * self.head_size)


class FlashInferBackend(AttentionBackend):
    name: ClassVar[str] = "flashinfer"
    supported_dtypes: ClassVar[tuple[str, ...]] = ("bfloat16", "float16")
    supported_head_sizes: ClassVar[tuple[int, ...] | None] = (64, 128, 256)
    supported_block_sizes: ClassVar[tuple[int, ...] | None] = (16, 32, 64, 128)
    supports_sliding_window: ClassVar[bool] = True
    preferred_block_size: ClassVar[int] = 16
    required_packages: ClassVar[tuple[str, ...]] = ("flashinfer",)

    @staticmethod
    def get_builder_cls() -> type[AttentionMetadataBuilder]:
        return FlashInferMetadataBuilder

    @staticmethod
    def get_impl_cls() -> type[AttentionImpl]:
        return FlashInferImpl
