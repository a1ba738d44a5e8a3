"""``moe_align_rows`` (the one-launch Triton counting sort) against the core's torch
``align_rows``: the same ``num_padded`` and ``block_expert``, and a valid layout (every local
row exactly once, inside a block of its own expert; rows of other ranks' experts past
``num_padded``; sentinel elsewhere). Under ``TRITON_INTERPRET=1`` without a GPU; on the GPU
also at the Qwen3-30B-A3B decode and prefill sizes."""

from __future__ import annotations

import pytest
import torch
from vllm_core_triton.kernels.moe_align import moe_align_rows

from vllm_core.model_executor.layers.fused_moe.align import align_rows

ON_GPU = torch.cuda.is_available()
DEVICE = torch.device("cuda" if ON_GPU else "cpu")

CASES = [  # tokens, top_k, experts, block_m, fraction of rows on another rank
    (1, 8, 128, 16, 0.0),
    (7, 2, 8, 16, 0.0),
    (64, 8, 128, 32, 0.0),
    (300, 8, 16, 64, 0.0),       # more rows than one 1024-row chunk
    (33, 4, 10, 16, 0.5),        # expert parallelism: half the rows are another rank's
    (5, 3, 6, 16, 1.0),          # no local row at all
]
if ON_GPU:
    CASES += [(256, 8, 128, 16, 0.0), (8192, 8, 128, 64, 0.0), (8192, 8, 64, 128, 0.5)]


def _check_layout(ids: torch.Tensor, got, ref) -> None:
    flat = ids.reshape(-1).cpu()
    num_rows, bm = flat.numel(), got.block_m
    assert got.sorted_ids.shape == ref.sorted_ids.shape
    assert got.block_expert.shape == ref.block_expert.shape
    assert torch.equal(got.num_padded.cpu(), ref.num_padded.cpu())
    assert torch.equal(got.block_expert.cpu(), ref.block_expert.cpu())
    n = int(got.num_padded)
    rows = got.sorted_ids.cpu()
    local, placed = rows[:n], rows[n:]
    blocks = local.view(-1, bm)
    experts = got.block_expert.cpu()[: n // bm]
    real = blocks < num_rows
    assert torch.equal(flat[blocks[real]], experts[:, None].expand_as(blocks)[real])
    assert sorted(blocks[real].tolist()) == (flat >= 0).nonzero().flatten().tolist()
    assert sorted(placed[placed < num_rows].tolist()) == (flat < 0).nonzero().flatten().tolist()


@pytest.mark.parametrize("case", CASES)
def test_moe_align_matches_torch_layout(case):
    t, k, e, bm, drop = case
    gen = torch.Generator().manual_seed(t + k + e)
    ids = torch.stack([torch.randperm(e, generator=gen)[:k] for _ in range(t)])
    if drop:
        ids = torch.where(torch.rand(ids.shape, generator=gen) < drop, -1, ids)
    ids = ids.to(DEVICE)
    _check_layout(ids, moe_align_rows(ids, e, bm), align_rows(ids, e, bm))
