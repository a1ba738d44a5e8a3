"""Attention backends of the TPU plugin, both with static shapes (one XLA graph per bucket).

KV cache per layer: ``(num_blocks, block_size, 2 * num_kv_heads, head_size)`` with keys and
values interleaved on the head axis (head ``2h`` is key head ``h``, ``2h + 1`` its value):
the layout of torch_xla's ragged paged attention kernel, shared by both backends so either can
read a cache the other wrote. A token's slot is ``block_id * block_size + offset``.

Metadata convention (what ``TpuModelRunner`` hands to ``build``): the tensors of
``CommonAttentionMetadata`` are **host** tensors padded to the step's buckets -
``slot_mapping`` has ``T_b`` entries (padding tokens write slot 0, inside the null block 0),
``query_start_loc`` ``R_b + 1`` (padding repeats the real token total), ``seq_lens`` /
``context_lens`` ``R_b`` (padding 0), ``block_table`` ``[R_b, pages_per_request]`` (padding 0,
``pages_per_request`` fixed by ``max_model_len``). ``num_reqs`` / ``num_tokens`` are the real
counts. The builders move only bucket-shaped tensors to the device, so the traced graph
depends on ``(T_b, R_b)`` alone.

* ``xla_paged`` (any XLA device; the one used off-TPU): per token, gather the pages of its
  request (``[T_b, pages * block_size]`` keys), mask keys after the token's position (and
  outside a sliding window), softmax in float32. Memory O(T_b x max_model_len): meant for XLA's
  CPU device, tests and small models.
* ``pallas`` (a real TPU only): torch_xla's ragged paged attention kernel
  (``torch_xla.experimental.custom_kernel.ragged_paged_attention``) over the same cache.
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
from vllm_core_tpu import runtime


def kv_cache_shape(num_blocks: int, block_size: int, num_kv_heads: int,
                   head_size: int) -> tuple[int, ...]:
    return (num_blocks, block_size, 2 * num_kv_heads, head_size)


def write_kv(kv_cache: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """Store ``key``/``value`` [T, Hkv, D] of every token at its slot (K/V interleaved)."""
    t, hkv, d = key.shape
    new = torch.stack((key, value), dim=2).reshape(t, 2 * hkv, d).to(kv_cache.dtype)
    kv_cache.view(-1, 2 * hkv, d).index_copy_(0, slot_mapping, new)


@dataclass(slots=True)
class XlaAttentionMetadata:
    """Device tensors of one step (shapes depend on the buckets only).

    slot_mapping    [T_b] long
    token_positions [T_b] long   absolute position of each token (padding: 0)
    token_request   [T_b] long   request row of each token (padding: R_b, a row of its own)
    token_blocks    [T_b, P] long  the block table row of each token's request (padding: 0)
    """

    slot_mapping: torch.Tensor
    token_positions: torch.Tensor
    token_request: torch.Tensor
    token_blocks: torch.Tensor
    num_tokens: int
    num_reqs: int


def _token_layout(common: CommonAttentionMetadata) -> tuple[torch.Tensor, torch.Tensor]:
    """(request row, absolute position) of every padded token, on the host."""
    padded_tokens = common.slot_mapping.shape[0]
    padded_reqs = common.seq_lens_cpu.shape[0]
    qsl = common.query_start_loc_cpu.long()
    n, r = common.num_tokens, common.num_reqs
    q_lens = qsl[1:r + 1] - qsl[:r]
    request = torch.full((padded_tokens,), padded_reqs, dtype=torch.long)
    request[:n] = torch.repeat_interleave(torch.arange(r), q_lens, output_size=n)
    positions = torch.zeros(padded_tokens, dtype=torch.long)
    context = (common.seq_lens_cpu.long()[:r] - q_lens)
    positions[:n] = torch.arange(n) - qsl[request[:n]] + context[request[:n]]
    return request, positions


class XlaAttentionMetadataBuilder(AttentionMetadataBuilder):
    def build(self, common: CommonAttentionMetadata) -> XlaAttentionMetadata:
        request, positions = _token_layout(common)
        table = common.block_table.long()
        padded = torch.cat((table, torch.zeros(1, table.shape[1], dtype=torch.long)))
        dev = self.device
        return XlaAttentionMetadata(
            slot_mapping=common.slot_mapping.long().to(dev),
            token_positions=positions.to(dev), token_request=request.to(dev),
            token_blocks=padded[request].to(dev), num_tokens=common.num_tokens,
            num_reqs=common.num_reqs)


class XlaPagedAttentionImpl(AttentionImpl):
    """Gather + masked matmul softmax with static shapes (see the module docstring)."""

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                kv_cache: torch.Tensor, attn_metadata: XlaAttentionMetadata) -> torch.Tensor:
        md = attn_metadata
        if kv_cache.numel() == 0:      # profiling: each request attends to its new tokens
            return self._attend(query, key, value, md.token_positions, md.token_positions,
                                md.token_request[:, None] == md.token_request[None, :])
        write_kv(kv_cache, key, value, md.slot_mapping)
        t = query.shape[0]
        _, bs, hkv2, d = kv_cache.shape
        pages = kv_cache[md.token_blocks].view(t, -1, hkv2, d)            # [T, L, 2Hkv, D]
        key_pos = torch.arange(pages.shape[1], device=query.device)
        return self._attend(query, pages[:, :, 0::2], pages[:, :, 1::2], md.token_positions,
                            key_pos, None)

    def _attend(self, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                q_pos: torch.Tensor, k_pos: torch.Tensor, same_request: torch.Tensor | None
                ) -> torch.Tensor:
        """keys/values are [T, L, Hkv, D] per token, or [L, Hkv, D] shared (profiling)."""
        t, h, d = query.shape
        hkv = self.num_kv_heads
        q = query.view(t, hkv, h // hkv, d).float()
        if same_request is None:
            scores = torch.einsum("thgd,tlhd->thgl", q, keys.float())
            visible = k_pos[None, :] <= q_pos[:, None]                    # [T, L]
        else:
            scores = torch.einsum("thgd,lhd->thgl", q, keys.float())
            visible = same_request & (k_pos[None, :] <= q_pos[:, None])
        if self.sliding_window is not None:
            visible = visible & (k_pos[None, :] > q_pos[:, None] - self.sliding_window)
        scores = scores * self.scale
        scores = scores.masked_fill(~visible[:, None, None, :], torch.finfo(torch.float32).min)
        probs = scores.softmax(dim=-1)
        if same_request is None:
            out = torch.einsum("thgl,tlhd->thgd", probs, values.float())
        else:
            out = torch.einsum("thgl,lhd->thgd", probs, values.float())
        return out.to(query.dtype).reshape(t, h * d)


class _TpuBackendBase(AttentionBackend):
    supported_dtypes: ClassVar[tuple[str, ...]] = ("bfloat16", "float32")
    supported_kv_cache_dtypes: ClassVar[tuple[str, ...]] = ("auto",)
    supports_sliding_window: ClassVar[bool] = True
    preferred_block_size: ClassVar[int] = 16

    @staticmethod
    def get_kv_cache_shape(num_blocks: int, block_size: int, num_kv_heads: int,
                           head_size: int) -> tuple[int, ...]:
        return kv_cache_shape(num_blocks, block_size, num_kv_heads, head_size)


class XlaPagedAttentionBackend(_TpuBackendBase):
    """Pure-XLA paged attention: any XLA device (TPU, CPU, GPU), every head size."""

    name: ClassVar[str] = "xla_paged"

    @staticmethod
    def get_builder_cls() -> type[AttentionMetadataBuilder]:
        return XlaAttentionMetadataBuilder

    @staticmethod
    def get_impl_cls() -> type[AttentionImpl]:
        return XlaPagedAttentionImpl


# ---------------------------------------------------------------------------------- Pallas
@dataclass(slots=True)
class PallasAttentionMetadata:
    """The ragged kernel's inputs (int32, bucket shapes) plus the XLA metadata used for the
    KV write and the profiling forward."""

    xla: XlaAttentionMetadata
    kv_lens: torch.Tensor          # [R_b]
    page_indices: torch.Tensor     # [R_b, P]
    cu_q_lens: torch.Tensor        # [R_b + 1]
    num_seqs: torch.Tensor         # [1]
    use_kernel: bool = True


def pallas_inputs(common: CommonAttentionMetadata) -> dict[str, torch.Tensor]:
    """Host int32 tensors the ragged paged attention kernel takes (see the module docstring)."""
    return {
        "kv_lens": common.seq_lens_cpu.to(torch.int32),
        "page_indices": common.block_table.to(torch.int32),
        "cu_q_lens": common.query_start_loc_cpu.to(torch.int32),
        "num_seqs": torch.tensor([common.num_reqs], dtype=torch.int32),
    }


class PallasAttentionMetadataBuilder(AttentionMetadataBuilder):
    use_kernel: ClassVar[bool] = True

    def build(self, common: CommonAttentionMetadata) -> PallasAttentionMetadata:
        xla = XlaAttentionMetadataBuilder(self.block_size, self.device).build(common)
        dev = self.device
        inputs = {k: v.to(dev) for k, v in pallas_inputs(common).items()}
        return PallasAttentionMetadata(xla=xla, use_kernel=self.use_kernel, **inputs)


class PallasAttentionImpl(XlaPagedAttentionImpl):
    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                kv_cache: torch.Tensor, attn_metadata: PallasAttentionMetadata) -> torch.Tensor:
        md = attn_metadata
        if kv_cache.numel() == 0:
            return super().forward(query, key, value, kv_cache, md.xla)
        from torch_xla.experimental.custom_kernel import ragged_paged_attention

        write_kv(kv_cache, key, value, md.xla.slot_mapping)
        out = ragged_paged_attention(query, kv_cache, md.kv_lens, md.page_indices, md.cu_q_lens,
                                     md.num_seqs, sm_scale=self.scale,
                                     sliding_window=self.sliding_window,
                                     use_kernel=md.use_kernel)
        t = query.shape[0]
        if out.shape[0] < t:           # the non-kernel path returns the real tokens only
            out = torch.cat((out, out.new_zeros(t - out.shape[0], *out.shape[1:])))
        return out.reshape(t, self.num_heads * self.head_size)


class PallasAttentionBackend(_TpuBackendBase):
    """torch_xla's ragged paged attention (Pallas) kernel; chosen on a real TPU only."""

    name: ClassVar[str] = "pallas"
    supported_block_sizes: ClassVar[tuple[int, ...] | None] = (16, 32, 64, 128, 256)

    @classmethod
    def unsupported_reasons(cls, *, head_size: int, dtype: str, kv_cache_dtype: str,
                            block_size: int | None, sliding_window: int | None) -> list[str]:
        reasons = super().unsupported_reasons(
            head_size=head_size, dtype=dtype, kv_cache_dtype=kv_cache_dtype,
            block_size=block_size, sliding_window=sliding_window)
        device = runtime.pjrt_device_type()
        if device != "TPU":
            reasons.insert(0, f"the ragged paged attention kernel needs a TPU (the PJRT device "
                              f"is {device or 'unknown'})")
        elif not runtime.pallas_available():
            reasons.insert(0, "JAX is not installed (pip install 'torch_xla[pallas]')")
        return reasons

    @staticmethod
    def get_builder_cls() -> type[AttentionMetadataBuilder]:
        return PallasAttentionMetadataBuilder

    @staticmethod
    def get_impl_cls() -> type[AttentionImpl]:
        return PallasAttentionImpl
