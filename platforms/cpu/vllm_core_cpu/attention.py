"""CPU paged attention: gather-by-block + torch SDPA, vectorised over requests.

KV cache per layer: (2, num_blocks, block_size, num_kv_heads, head_size). New K/V are written
with one ``index_copy_`` over the flat slot axis. The batch splits in two groups, each done in
one SDPA call (no Python loop over tokens or requests):

* decodes (one new token each): the GQA query heads of a KV head are laid out as the "query
  length" axis, ``q [Nd, Hkv, G, D]`` against ``k [Nd, Hkv, L, D]``, with a key-length mask;
* prefill chunks: queries padded to ``[Np, H, maxq, D]``; keys are the new K/V alone when no
  chunk has earlier context (the common first-chunk case, causal), else gathered from the
  cache with a causal-with-offset mask.
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
class CpuAttentionMetadata:
    slot_mapping: torch.Tensor
    num_decodes: int
    num_decode_tokens: int
    # decodes
    decode_blocks: torch.Tensor | None       # [Nd, nb] block ids
    decode_mask: torch.Tensor | None         # [Nd, 1, 1, nb*bs] bool, None if no padding
    # prefills
    num_prefills: int
    prefill_q_index: torch.Tensor | None     # [Tp] index into the padded [Np*maxq] axis
    prefill_max_q: int
    prefill_blocks: torch.Tensor | None      # [Np, nb] (None when keys are the new tokens)
    prefill_mask: torch.Tensor | None        # [Np, 1, maxq, L] bool, None: plain causal
    prefill_single_causal: bool              # one chunk without context: is_causal fast path


def _blocks_for(block_table: torch.Tensor, seq_lens_cpu: torch.Tensor, block_size: int
                ) -> torch.Tensor:
    nb = (int(seq_lens_cpu.max()) + block_size - 1) // block_size
    return block_table[:, :nb].contiguous()


class CpuAttentionMetadataBuilder(AttentionMetadataBuilder):
    def build(self, common: CommonAttentionMetadata) -> CpuAttentionMetadata:
        bs = self.block_size
        nd = common.num_decodes
        qsl = common.query_start_loc_cpu
        seq = common.seq_lens_cpu
        dev = self.device
        decode_blocks = decode_mask = None
        if nd:
            decode_blocks = _blocks_for(common.block_table[:nd], seq[:nd], bs)
            length = decode_blocks.shape[1] * bs
            if bool((seq[:nd] != length).any()):
                decode_mask = (torch.arange(length)[None, :] < seq[:nd, None]).to(dev)
                decode_mask = decode_mask[:, None, None, :]
        np_ = common.num_reqs - nd
        q_index = prefill_blocks = prefill_mask = None
        max_q = 0
        single_causal = False
        if np_:
            q_lens = (qsl[nd + 1:] - qsl[nd:-1])
            ctx = seq[nd:] - q_lens
            max_q = int(q_lens.max())
            has_ctx = bool((ctx > 0).any())
            single_causal = np_ == 1 and not has_ctx
            if not single_causal:
                # token t of prefill request i sits at padded row i*max_q + local index
                starts = qsl[nd:-1] - qsl[nd]
                req_of_tok = torch.repeat_interleave(torch.arange(np_), q_lens)
                local = torch.arange(int(q_lens.sum())) - starts[req_of_tok]
                q_index = (req_of_tok * max_q + local).to(dev)
                q_pos = torch.arange(max_q)
                if has_ctx:
                    prefill_blocks = _blocks_for(common.block_table[nd:], seq[nd:], bs)
                    length = prefill_blocks.shape[1] * bs
                    k_pos = torch.arange(length)
                    mask = k_pos[None, None, :] <= (ctx[:, None, None] + q_pos[None, :, None])
                else:
                    k_pos = q_pos
                    mask = k_pos[None, None, :] <= q_pos[None, :, None]
                valid_q = q_pos[None, :] < q_lens[:, None]            # [Np, maxq]
                valid_k = k_pos[None, :] < seq[nd:, None] if has_ctx else \
                    k_pos[None, :] < q_lens[:, None]
                mask = mask & valid_k[:, None, :]
                # padded query rows attend to key 0 so softmax stays finite
                mask[:, :, 0] |= ~valid_q
                prefill_mask = mask[:, None].to(dev)
        return CpuAttentionMetadata(
            slot_mapping=common.slot_mapping, num_decodes=nd,
            num_decode_tokens=nd, decode_blocks=decode_blocks, decode_mask=decode_mask,
            num_prefills=np_, prefill_q_index=q_index, prefill_max_q=max_q,
            prefill_blocks=prefill_blocks, prefill_mask=prefill_mask,
            prefill_single_causal=single_causal)


class CpuPagedAttentionImpl(AttentionImpl):
    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                kv_cache: torch.Tensor, attn_metadata: CpuAttentionMetadata) -> torch.Tensor:
        md = attn_metadata
        num_tokens = query.shape[0]
        h, hkv, d = self.num_heads, self.num_kv_heads, self.head_size
        g = h // hkv
        out = torch.empty(num_tokens, h, d, dtype=query.dtype, device=query.device)
        profiling = kv_cache.numel() == 0
        if not profiling:
            k_cache, v_cache = kv_cache[0], kv_cache[1]
            k_cache.view(-1, hkv, d).index_copy_(0, md.slot_mapping, key)
            v_cache.view(-1, hkv, d).index_copy_(0, md.slot_mapping, value)

        nd = md.num_decode_tokens
        if nd:
            if profiling:   # context is the token itself
                kd = key[:nd].view(nd, hkv, 1, d)
                vd = value[:nd].view(nd, hkv, 1, d)
                mask = None
            else:
                kd = self._gather(k_cache, md.decode_blocks)
                vd = self._gather(v_cache, md.decode_blocks)
                mask = md.decode_mask
            qd = query[:nd].view(nd, hkv, g, d)
            o = F.scaled_dot_product_attention(qd, kd, vd, attn_mask=mask, scale=self.scale)
            out[:nd] = o.reshape(nd, h, d)

        if md.num_prefills:
            qp, kp, vp = query[nd:], key[nd:], value[nd:]
            if md.prefill_single_causal:
                o = F.scaled_dot_product_attention(
                    qp.transpose(0, 1)[None], kp.transpose(0, 1)[None],
                    vp.transpose(0, 1)[None], is_causal=True, scale=self.scale,
                    enable_gqa=g > 1)
                out[nd:] = o[0].transpose(0, 1)
            else:
                npr, mq = md.num_prefills, md.prefill_max_q
                qpad = self._pad(qp, md.prefill_q_index, npr, mq)
                if md.prefill_blocks is not None:   # chunks with earlier context
                    kk = self._gather(k_cache, md.prefill_blocks)
                    vv = self._gather(v_cache, md.prefill_blocks)
                else:                               # keys are the new tokens alone
                    kk = self._pad(kp, md.prefill_q_index, npr, mq)
                    vv = self._pad(vp, md.prefill_q_index, npr, mq)
                o = F.scaled_dot_product_attention(qpad, kk, vv, attn_mask=md.prefill_mask,
                                                   scale=self.scale, enable_gqa=g > 1)
                out[nd:] = o.transpose(1, 2).reshape(npr * mq, h, d)[md.prefill_q_index]
        return out.view(num_tokens, h * d)

    @staticmethod
    def _pad(x: torch.Tensor, index: torch.Tensor, n: int, max_len: int) -> torch.Tensor:
        """Flat [T, H, D] rows scattered to [n, H, max_len, D] (zeros elsewhere)."""
        padded = x.new_zeros(n * max_len, x.shape[1], x.shape[2])
        padded[index] = x
        return padded.view(n, max_len, x.shape[1], x.shape[2]).transpose(1, 2)

    @staticmethod
    def _gather(cache: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
        """[num_blocks, bs, Hkv, D] gathered by a [N, nb] block table -> [N, Hkv, nb*bs, D]."""
        n, nb = blocks.shape
        _, bs, hkv, d = cache.shape
        rows = cache.index_select(0, blocks.reshape(-1))
        return rows.view(n, nb * bs, hkv, d).transpose(1, 2)


class CpuPagedAttentionBackend(AttentionBackend):
    name: ClassVar[str] = "cpu_paged"
    supported_dtypes: ClassVar[tuple[str, ...]] = ("float32", "bfloat16", "float16")
    preferred_block_size: ClassVar[int] = 16

    @staticmethod
    def get_kv_cache_shape(num_blocks: int, block_size: int, num_kv_heads: int,
                           head_size: int) -> tuple[int, ...]:
        return (2, num_blocks, block_size, num_kv_heads, head_size)

    @staticmethod
    def get_builder_cls() -> type[AttentionMetadataBuilder]:
        return CpuAttentionMetadataBuilder

    @staticmethod
    def get_impl_cls() -> type[AttentionImpl]:
        return CpuPagedAttentionImpl
