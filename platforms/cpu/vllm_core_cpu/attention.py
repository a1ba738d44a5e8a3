"""CPU paged attention: a C++ kernel reading the paged cache directly, with an SDPA fallback.

KV cache per layer: (2, num_blocks, block_size, num_kv_heads, head_size). New K/V are written
with one ``index_copy_`` over the flat slot axis, then every query attends to its request's keys
[0, position], or with a sliding window ``w`` (per layer: Gemma 3 interleaves windowed and
global layers) to keys ``(position - w, position]``. The kernel (``csrc/paged_attention.cpp``,
built once with torch's JIT extension builder) handles head sizes 32/64/128/256 and up to 8
query heads per KV head, and with it the layer fuses the rotary embedding and the cache write
into the same call (``fuses_rotary``: ``paged_attention_rotary``): one code path for
decodes and prefill chunks, so a row's result never depends on the batch. Elsewhere (or when no
compiler is available) keys are gathered by block and the batch splits in two groups, each one
SDPA call (no Python loop over tokens or requests):

* decodes (one new token each): the query heads sharing a KV head form the "query length"
  axis, ``q [Nd, Hkv, G, D]`` against ``k [Nd, Hkv, L, D]``;
* prefill chunks: queries padded to ``[Np, H, maxq, D]`` against ``[Np, Hkv, L, D]``.

FP8 KV cache (``--kv-cache-dtype fp8`` / ``fp8_e4m3`` / ``fp8_e5m2``): the cache holds one
byte per element with the layer's per-tensor ``k_scale`` / ``v_scale`` as
``vllm_core/attention/kv_scales.py`` states (stored ``fp8(clamp(x / scale))``, read
``stored * scale``). The kernel writes and reads it directly (a row widened exactly, the scales
folded into the query's scale and the softmax normalisation); the SDPA path quantizes on write
and widens what it gathers.

Batch invariance (what makes a seeded request reproducible whatever else runs): key lengths
are always padded to a multiple of ``KEY_ALIGN`` and masked, never cut to the exact length and
never routed through a different kernel for "simple" cases. Measured on x86 with oneDNN, the
result of a query row is then bitwise the same whether it runs as a decode or inside a chunk,
with or without a cached prefix, next to any other requests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F

from vllm_core.attention.backend import (
    AttentionBackend,
    AttentionImpl,
    AttentionMetadataBuilder,
    CommonAttentionMetadata,
)
from vllm_core.attention.kv_cache_dtype import FP8_KV_CACHE_DTYPES
from vllm_core.attention.kv_scales import dequantize_kv, quantize_kv

KEY_ALIGN = 16   # key-length padding granularity (tokens)
KERNEL_HEAD_SIZES = (32, 64, 128, 256)   # what csrc/paged_attention.cpp is instantiated for
KERNEL_MAX_GROUP = 8                # query heads per KV head it supports


@dataclass(slots=True)
class SdpaMetadata:
    """Inputs of the SDPA path (built only when a layer needs it)."""

    num_decodes: int
    decode_blocks: torch.Tensor | None       # [Nd, nb] block ids (padding: null block 0)
    decode_mask: torch.Tensor | None         # [Nd, 1, 1, nb*bs] key < seq_len
    num_prefills: int
    prefill_q_index: torch.Tensor | None     # [Tp] row of each prefill token in [Np*maxq]
    prefill_max_q: int
    prefill_blocks: torch.Tensor | None      # [Np, nb]
    prefill_mask: torch.Tensor | None        # [Np, 1, maxq, nb*bs] causal with offset
    decode_q_pos: torch.Tensor | None = None     # [Nd, 1, 1, 1] position of each decode query
    prefill_q_pos: torch.Tensor | None = None    # [Np, 1, maxq, 1] position of each query row
    _windowed: dict[int, tuple[torch.Tensor | None, torch.Tensor | None]] = field(
        default_factory=dict)

    def masks(self, window: int | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(decode mask, prefill mask) for a layer with sliding ``window`` (None: the causal
        masks): key ``j`` of query position ``p`` stays visible iff ``j > p - window``. Built
        once per window per step (layers with the same window share it)."""
        if window is None:
            return self.decode_mask, self.prefill_mask
        if window not in self._windowed:
            dec = pre = None
            if self.decode_mask is not None:
                keys = torch.arange(self.decode_mask.shape[-1], device=self.decode_mask.device)
                dec = self.decode_mask & (keys > self.decode_q_pos - window)
            if self.prefill_mask is not None:
                keys = torch.arange(self.prefill_mask.shape[-1], device=self.prefill_mask.device)
                pre = self.prefill_mask & (keys > self.prefill_q_pos - window)
                pre[..., 0] |= self.prefill_mask[..., 0] & ~pre.any(-1)   # padded rows
            self._windowed[window] = (dec, pre)
        return self._windowed[window]


@dataclass(slots=True)
class CpuAttentionMetadata:
    """Per-step metadata shared by all layers. ``token_request`` / ``token_position`` feed the
    C++ kernel; ``sdpa()`` builds (once) what the SDPA path needs."""

    slot_mapping: torch.Tensor
    block_table: torch.Tensor
    token_request: torch.Tensor
    token_position: torch.Tensor
    common: CommonAttentionMetadata
    builder: CpuAttentionMetadataBuilder
    _sdpa: SdpaMetadata | None = None

    def sdpa(self) -> SdpaMetadata:
        if self._sdpa is None:
            self._sdpa = self.builder.build_sdpa(self.common)
        return self._sdpa


def _block_window(block_table: torch.Tensor, max_len: int, block_size: int) -> torch.Tensor:
    """The first blocks covering ``max_len`` tokens, padded (with the null block) so the key
    length is a multiple of KEY_ALIGN."""
    per = max(1, KEY_ALIGN // block_size)
    nb = -(-max_len // block_size)
    nb = -(-nb // per) * per
    if nb > block_table.shape[1]:
        block_table = F.pad(block_table, (0, nb - block_table.shape[1]))
    return block_table[:, :nb].contiguous()


class CpuAttentionMetadataBuilder(AttentionMetadataBuilder):
    """Uses the C++ paged-attention kernel (``csrc/paged_attention.cpp``) when it builds and
    supports the shapes; otherwise the SDPA path described in the module docstring."""

    def __init__(self, block_size: int, device: torch.device) -> None:
        super().__init__(block_size, device)
        from vllm_core_cpu.kernels import load_kernels

        self.kernel = load_kernels()

    def build(self, common: CommonAttentionMetadata) -> CpuAttentionMetadata:
        qsl, seq = common.query_start_loc_cpu, common.seq_lens_cpu
        if common.num_decodes == common.num_reqs == common.num_tokens:
            # decode-only (token i is request i's last): the general form's values, cheaply
            req = torch.arange(common.num_reqs)
            pos = seq.to(torch.int64) - 1
        else:
            q_lens = qsl[1:] - qsl[:-1]
            req = torch.repeat_interleave(torch.arange(common.num_reqs), q_lens,
                                          output_size=common.num_tokens)
            pos = torch.arange(common.num_tokens) - (qsl[1:] - seq)[req]
        return CpuAttentionMetadata(slot_mapping=common.slot_mapping,
                                    block_table=common.block_table, token_request=req,
                                    token_position=pos, common=common, builder=self)

    def build_sdpa(self, common: CommonAttentionMetadata) -> SdpaMetadata:
        bs, dev = self.block_size, self.device
        nd = common.num_decodes
        qsl, seq = common.query_start_loc_cpu, common.seq_lens_cpu
        decode_blocks = decode_mask = decode_q_pos = prefill_q_pos = None
        if nd:
            decode_blocks = _block_window(common.block_table[:nd], int(seq[:nd].max()), bs)
            keys = torch.arange(decode_blocks.shape[1] * bs)
            decode_mask = (keys[None, :] < seq[:nd, None])[:, None, None, :].to(dev)
            decode_q_pos = (seq[:nd] - 1).view(nd, 1, 1, 1).to(dev)
        np_ = common.num_reqs - nd
        q_index = prefill_blocks = prefill_mask = None
        max_q = 0
        if np_:
            q_lens = qsl[nd + 1:] - qsl[nd:-1]
            ctx = seq[nd:] - q_lens
            max_q = int(q_lens.max())
            starts = qsl[nd:-1] - qsl[nd]
            req_of_tok = torch.repeat_interleave(torch.arange(np_), q_lens)
            local = torch.arange(int(q_lens.sum())) - starts[req_of_tok]
            q_index = (req_of_tok * max_q + local).to(dev)
            prefill_blocks = _block_window(common.block_table[nd:], int(seq[nd:].max()), bs)
            keys = torch.arange(prefill_blocks.shape[1] * bs)
            q_pos = torch.arange(max_q)
            mask = keys[None, None, :] <= (ctx[:, None, None] + q_pos[None, :, None])
            # padded query rows attend to key 0 only, so their softmax stays finite
            mask[:, :, 0] |= (q_pos[None, :] >= q_lens[:, None])
            prefill_mask = mask[:, None].to(dev)
            prefill_q_pos = (ctx[:, None] + q_pos[None, :]).view(np_, 1, max_q, 1).to(dev)
        return SdpaMetadata(
            num_decodes=nd, decode_blocks=decode_blocks,
            decode_mask=decode_mask, num_prefills=np_, prefill_q_index=q_index,
            prefill_max_q=max_q, prefill_blocks=prefill_blocks, prefill_mask=prefill_mask,
            decode_q_pos=decode_q_pos, prefill_q_pos=prefill_q_pos)


class CpuPagedAttentionImpl(AttentionImpl):
    supports_kv_scales = True

    def __init__(self, num_heads: int, head_size: int, scale: float, num_kv_heads: int,
                 sliding_window: int | None = None) -> None:
        super().__init__(num_heads, head_size, scale, num_kv_heads, sliding_window)
        from vllm_core_cpu.kernels import load_kernels

        self.use_kernel = (load_kernels() and head_size in KERNEL_HEAD_SIZES
                           and num_heads // num_kv_heads <= KERNEL_MAX_GROUP)
        # with the kernel, the rotary embedding, the cache write and the attention are one
        # C++ call per layer (``forward_with_rotary``)
        self.fuses_rotary = self.use_kernel
        self._kv_scales = (1.0, 1.0)

    def set_kv_scales(self, k_scale: torch.Tensor, v_scale: torch.Tensor) -> None:
        """Keep the scales as tensors (the SDPA path) and as floats (the kernel's arguments;
        read once here, so no step reads a tensor on the host)."""
        super().set_kv_scales(k_scale, v_scale)
        self._kv_scales = (float(k_scale), float(v_scale))

    def kv_scale_values(self) -> tuple[float, float]:
        """``(k_scale, v_scale)`` as floats: what the kernel applies to a float8 cache."""
        return self._kv_scales

    def forward_with_rotary(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                            kv_cache: torch.Tensor, attn_metadata: CpuAttentionMetadata,
                            positions: torch.Tensor,
                            cos_sin_cache: torch.Tensor) -> torch.Tensor:
        """Neox rotary of q / k at ``positions`` (fp32, rounded once to the activation dtype),
        K / V written at the slots, then the paged attention: ``paged_attention_rotary``."""
        if kv_cache.numel() == 0 or not self.use_kernel:
            from vllm_core.model_executor.layers.ops import TorchLayerOps

            query, key = TorchLayerOps().rotary(positions, query, key, cos_sin_cache,
                                                self.head_size)
            return self.forward(query, key, value, kv_cache, attn_metadata)
        return torch.ops.vllm_core_cpu.paged_attention_rotary(
            query, key, value, kv_cache[0], kv_cache[1], attn_metadata.slot_mapping,
            attn_metadata.block_table, attn_metadata.token_request,
            attn_metadata.token_position, positions, cos_sin_cache, self.scale,
            self.sliding_window or 0, *self._kv_scales,
        ).view(query.shape[0], self.num_heads * self.head_size)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                kv_cache: torch.Tensor, attn_metadata: CpuAttentionMetadata) -> torch.Tensor:
        num_tokens = query.shape[0]
        h, hkv, d = self.num_heads, self.num_kv_heads, self.head_size
        g = h // hkv
        out = torch.empty(num_tokens, h, d, dtype=query.dtype, device=query.device)
        if kv_cache.numel() == 0:           # memory profiling: attend to the new tokens only
            return self._forward_uncached(query, key, value, attn_metadata.sdpa(), out)
        k_cache, v_cache = kv_cache[0], kv_cache[1]
        self._write(k_cache, attn_metadata.slot_mapping, key, self.k_scale)
        self._write(v_cache, attn_metadata.slot_mapping, value, self.v_scale)
        if self.use_kernel:
            return torch.ops.vllm_core_cpu.paged_attention(
                query.contiguous(), k_cache, v_cache, attn_metadata.block_table,
                attn_metadata.token_request, attn_metadata.token_position,
                self.scale, self.sliding_window or 0, *self._kv_scales).view(num_tokens, h * d)
        md = attn_metadata.sdpa()
        decode_mask, prefill_mask = md.masks(self.sliding_window)

        nd = md.num_decodes
        if nd:
            o = F.scaled_dot_product_attention(
                query[:nd].view(nd, hkv, g, d),
                self._gather(k_cache, md.decode_blocks, self.k_scale, query.dtype),
                self._gather(v_cache, md.decode_blocks, self.v_scale, query.dtype),
                attn_mask=decode_mask, scale=self.scale)
            out[:nd] = o.reshape(nd, h, d)
        if md.num_prefills:
            npr, mq = md.num_prefills, md.prefill_max_q
            o = F.scaled_dot_product_attention(
                self._pad(query[nd:], md.prefill_q_index, npr, mq),
                self._gather(k_cache, md.prefill_blocks, self.k_scale, query.dtype),
                self._gather(v_cache, md.prefill_blocks, self.v_scale, query.dtype),
                attn_mask=prefill_mask, scale=self.scale, enable_gqa=g > 1)
            out[nd:] = o.transpose(1, 2).reshape(npr * mq, h, d)[md.prefill_q_index]
        return out.view(num_tokens, h * d)

    def _forward_uncached(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                          md: SdpaMetadata, out: torch.Tensor) -> torch.Tensor:
        """Profiling forward: decodes attend to themselves, chunks causally to themselves."""
        h, hkv, d = self.num_heads, self.num_kv_heads, self.head_size
        nd = md.num_decodes
        if nd:
            out[:nd] = value[:nd].repeat_interleave(h // hkv, dim=1)   # softmax over one key
        if md.num_prefills:
            npr, mq = md.num_prefills, md.prefill_max_q
            idx = md.prefill_q_index
            causal = torch.ones(mq, mq, dtype=torch.bool, device=query.device).tril()
            o = F.scaled_dot_product_attention(
                self._pad(query[nd:], idx, npr, mq), self._pad(key[nd:], idx, npr, mq),
                self._pad(value[nd:], idx, npr, mq), attn_mask=causal, scale=self.scale,
                enable_gqa=h > hkv)
            out[nd:] = o.transpose(1, 2).reshape(npr * mq, h, d)[idx]
        return out.view(query.shape[0], h * d)

    @staticmethod
    def _write(cache: torch.Tensor, slots: torch.Tensor, x: torch.Tensor,
               scale: torch.Tensor | None) -> None:
        """Rows ``x`` [T, Hkv, D] stored at ``slots`` of ``cache`` as its dtype stores them
        (float8 moved as bytes: torch has no float8 ``index_copy_`` on the CPU)."""
        stored = quantize_kv(x, scale, cache.dtype)
        if stored.element_size() == 1:
            cache, stored = cache.view(torch.uint8), stored.view(torch.uint8)
        cache.view(-1, *x.shape[1:]).index_copy_(0, slots, stored)

    @staticmethod
    def _pad(x: torch.Tensor, index: torch.Tensor, n: int, max_len: int) -> torch.Tensor:
        """Flat [T, H, D] rows scattered to [n, H, max_len, D] (zeros elsewhere)."""
        padded = x.new_zeros(n * max_len, x.shape[1], x.shape[2])
        padded[index] = x
        return padded.view(n, max_len, x.shape[1], x.shape[2]).transpose(1, 2)

    @staticmethod
    def _gather(cache: torch.Tensor, blocks: torch.Tensor, scale: torch.Tensor | None,
                dtype: torch.dtype) -> torch.Tensor:
        """[num_blocks, bs, Hkv, D] gathered by a [N, nb] block table -> [N, Hkv, nb*bs, D]
        in ``dtype`` (a float8 cache widened and scaled)."""
        n, nb = blocks.shape
        _, bs, hkv, d = cache.shape
        rows = dequantize_kv(cache.index_select(0, blocks.reshape(-1)), scale, dtype)
        return rows.view(n, nb * bs, hkv, d).transpose(1, 2)


class CpuPagedAttentionBackend(AttentionBackend):
    name: ClassVar[str] = "cpu_paged"
    supported_dtypes: ClassVar[tuple[str, ...]] = ("float32", "bfloat16", "float16")
    supported_kv_cache_dtypes: ClassVar[tuple[str, ...]] = ("auto", *FP8_KV_CACHE_DTYPES)
    preferred_block_size: ClassVar[int] = 16
    supports_sliding_window: ClassVar[bool] = True   # per layer (the impl's sliding_window)

    @staticmethod
    def get_builder_cls() -> type[AttentionMetadataBuilder]:
        return CpuAttentionMetadataBuilder

    @staticmethod
    def get_impl_cls() -> type[AttentionImpl]:
        return CpuPagedAttentionImpl
