"""Bitwise batch invariance of the CPU kernels (what makes seeded sampling reproducible)."""

from __future__ import annotations

import pytest
import torch

from vllm_core.attention.backend import CommonAttentionMetadata
from vllm_core_cpu.attention import CpuPagedAttentionBackend
from vllm_core_cpu.worker import CpuLayerOps


@pytest.mark.parametrize("in_f,out_f", [(576, 960), (1536, 576), (576, 49152), (4096, 1024)])
def test_linear_row_independent_of_batch(in_f, out_f):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(out_f, in_f, generator=g).bfloat16()
    x = torch.randn(9, in_f, generator=g).bfloat16()
    ops = CpuLayerOps()
    batched = ops.linear(x, w)
    for r in range(x.shape[0]):
        assert torch.equal(ops.linear(x[r:r + 1], w)[0], batched[r])


def test_decode_row_independent_of_batch_and_padding():
    """A decode attends identically alone and next to a longer request (more key padding)."""
    g = torch.Generator().manual_seed(0)
    h, hkv, d, bs = 9, 3, 64, 16
    cache = torch.randn(2, 12, bs, hkv, d, generator=g).bfloat16()
    q = torch.randn(2, h, d, generator=g).bfloat16()
    k = torch.randn(2, hkv, d, generator=g).bfloat16()
    v = torch.randn(2, hkv, d, generator=g).bfloat16()
    tables = torch.tensor([[3, 7, 2, 0, 0], [1, 4, 5, 6, 8]])
    seq = torch.tensor([41, 77])

    def common(n: int) -> CommonAttentionMetadata:
        qsl = torch.arange(n + 1)
        slots = tables[torch.arange(n), (seq[:n] - 1) // bs] * bs + (seq[:n] - 1) % bs
        return CommonAttentionMetadata(
            query_start_loc=qsl, seq_lens=seq[:n], context_lens=seq[:n] - 1,
            block_table=tables[:n], slot_mapping=slots, query_start_loc_cpu=qsl,
            seq_lens_cpu=seq[:n], num_reqs=n, num_tokens=n, num_decodes=n, max_query_len=1,
            max_seq_len=int(seq[:n].max()), block_size=bs)

    builder = CpuPagedAttentionBackend.get_builder_cls()(bs, torch.device("cpu"))
    impl = CpuPagedAttentionBackend.get_impl_cls()(h, d, d ** -0.5, hkv)
    alone = impl.forward(q[:1], k[:1], v[:1], cache.clone(), builder.build(common(1)))
    both = impl.forward(q, k, v, cache.clone(), builder.build(common(2)))
    assert torch.equal(alone[0], both[0])
