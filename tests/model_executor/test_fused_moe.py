"""The MoE building blocks in isolation: router top-k, the sorted/padded row layout of the
grouped-GEMM kernels, the three torch forms against the per-(token, expert) reference, and
the expert placement of tensor / expert parallelism."""

from __future__ import annotations

import pytest
import torch

from vllm_core.model_executor.layers.fused_moe import ExpertPlacement, MoEConfig, select_experts
from vllm_core.model_executor.layers.fused_moe.align import align_rows, max_padded_rows
from vllm_core.model_executor.layers.fused_moe.torch_moe import (
    reference_fused_moe,
    torch_fused_moe,
)


def _problem(t: int, e: int, k: int, h: int = 32, i: int = 24, dtype=torch.float32,
             seed: int = 0, drop: float = 0.0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(t, h, generator=gen).to(dtype)
    w13 = (0.2 * torch.randn(e, 2 * i, h, generator=gen)).to(dtype)
    w2 = (0.2 * torch.randn(e, h, i, generator=gen)).to(dtype)
    logits = torch.randn(t, e, generator=gen)
    weights, ids = select_experts(logits, k, renormalize=True)
    if drop:
        ids = torch.where(torch.rand(ids.shape, generator=gen) < drop, -1, ids)
    return x, w13, w2, weights, ids


def test_router_matches_hf_order_of_operations():
    logits = torch.randn(5, 8, generator=torch.Generator().manual_seed(0))
    w, ids = select_experts(logits, 3, renormalize=False)
    probs = torch.softmax(logits, -1)
    ref_w, ref_ids = torch.topk(probs, 3, -1)
    assert torch.equal(ids, ref_ids) and torch.allclose(w, ref_w)
    w_norm, _ = select_experts(logits, 3, renormalize=True)
    torch.testing.assert_close(w_norm.sum(-1), torch.ones(5))
    ws, ids_s = select_experts(logits, 2, renormalize=False, scoring="sigmoid")
    assert torch.equal(ids_s, torch.topk(logits, 2, -1).indices)
    torch.testing.assert_close(ws, torch.sigmoid(torch.topk(logits, 2, -1).values))
    with pytest.raises(ValueError, match="scoring"):
        select_experts(logits, 2, True, scoring="relu")


@pytest.mark.parametrize("block_m", [1, 4, 16])
def test_align_rows_layout(block_m):
    ids = torch.tensor([[3, 0], [0, 2], [3, -1], [1, 3]])
    e = 5
    a = align_rows(ids, e, block_m)
    flat = ids.reshape(-1)
    n = int(a.num_padded)
    assert n % block_m == 0 and a.sorted_ids.numel() == max_padded_rows(8, e + 1, block_m)
    # every valid row appears exactly once before num_padded, in its expert's blocks
    rows = a.sorted_ids[:n]
    real = rows[rows < flat.numel()]
    assert sorted(real.tolist()) == sorted(i for i in range(8) if flat[i] >= 0)
    for b in range(n // block_m):
        block = a.sorted_ids[b * block_m:(b + 1) * block_m]
        block = block[block < flat.numel()]
        assert block.numel() and (flat[block] == a.block_expert[b]).all()
    assert (a.block_expert[n // block_m:] == -1).all()
    # stable: rows of one expert keep their order
    assert real[flat[real] == 3].tolist() == [0, 4, 7]


@pytest.mark.parametrize("form", ["gather", "sorted", "padded"])
@pytest.mark.parametrize("t,e,k,drop", [(1, 8, 2, 0.0), (7, 6, 3, 0.0), (33, 16, 4, 0.3),
                                        (5, 4, 4, 0.5)])
def test_torch_forms_match_reference(form, t, e, k, drop):
    x, w13, w2, w, ids = _problem(t, e, k, drop=drop)
    got = torch_fused_moe(x, w13, w2, w, ids, form=form)
    torch.testing.assert_close(got, reference_fused_moe(x, w13, w2, w, ids),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("form", ["gather", "sorted", "padded"])
def test_torch_forms_bf16_and_empty_batch(form):
    x, w13, w2, w, ids = _problem(9, 8, 2, dtype=torch.bfloat16)
    got = torch_fused_moe(x, w13, w2, w, ids, form=form)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), reference_fused_moe(x, w13, w2, w, ids).float(),
                               atol=3e-2, rtol=3e-2)
    empty = torch_fused_moe(x[:0], w13, w2, w[:0], ids[:0], form=form)
    assert empty.shape == (0, 32)


def test_placement_tp_and_ep():
    tp = [ExpertPlacement.for_rank(8, 24, 2, r, expert_parallel=False) for r in range(2)]
    assert [(p.num_local_experts, p.inter_start, p.inter_local) for p in tp] == \
        [(8, 0, 12), (8, 12, 12)]
    ep = [ExpertPlacement.for_rank(8, 24, 2, r, expert_parallel=True) for r in range(2)]
    assert [(p.first_expert, p.num_local_experts, p.inter_local) for p in ep] == \
        [(0, 4, 24), (4, 4, 24)]
    assert ep[1].local_index(5) == 1 and ep[1].local_index(3) is None
    with pytest.raises(ValueError, match="not divisible by the expert-parallel size"):
        ExpertPlacement.for_rank(6, 24, 4, 0, expert_parallel=True)
    with pytest.raises(ValueError, match="enable-expert-parallel"):
        ExpertPlacement.for_rank(8, 25, 2, 0, expert_parallel=False)


def test_config_rules():
    moe = MoEConfig(num_experts=4, top_k=2, expert_intermediate_size=8, decoder_sparse_step=2,
                    mlp_only_layers=frozenset({3}))
    assert [moe.is_sparse_layer(i) for i in range(6)] == [False, True, False, False, False,
                                                          True]
    with pytest.raises(ValueError, match="num_experts_per_tok"):
        MoEConfig(num_experts=4, top_k=5, expert_intermediate_size=8)


def test_form_choice_follows_the_measured_rules():
    from vllm_core.model_executor.layers.fused_moe.torch_moe import choose_torch_moe_form

    assert choose_torch_moe_form(torch.zeros(2, 8, dtype=torch.int64), 64) == "sorted"
    balanced = torch.arange(64 * 8).reshape(64, 8) % 64
    assert choose_torch_moe_form(balanced, 64) == "padded"
    skewed = torch.zeros(64, 8, dtype=torch.int64)         # every row on expert 0
    assert choose_torch_moe_form(skewed, 64) == "sorted"
