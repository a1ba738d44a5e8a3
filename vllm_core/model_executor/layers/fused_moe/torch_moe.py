"""Portable (torch) expert computation of a sparse MLP block, in three vectorised forms.

Contract of every form (and of ``LayerOps.fused_moe``): for ``x`` [T, H], stacked expert
weights ``w13`` [E, 2I, H] (rows ``[gate | up]``) and ``w2`` [E, H, I], ``topk_weights``
[T, k] float32 and ``topk_ids`` [T, k] int64 (local expert ids; -1: the expert lives on
another rank and contributes nothing here), return ``sum_j w[t, j] * down_e(silu(gate_e(x_t))
* up_e(x_t))`` with ``e = topk_ids[t, j]``, in ``x.dtype``. The activation is computed in the
model dtype (HF order); the weighted sum over the k experts in float32.

- ``gather``: gathers the k experts' weights of every row and runs two batched products
  (``bmm``). Reads T * k expert matrices: the fastest at decode sizes, where that is about the
  same as reading each used expert once.
- ``sorted``: sorts the rows by expert (``align_rows``, block 1) and runs one product per
  expert that has rows: one Python iteration per *used* expert, each a full-size GEMM.
- ``padded``: the sorted rows scattered into an [E, M, H] tensor (M the largest expert
  count) and two ``bmm`` over all experts: no Python loop, but pays for the imbalance.

``choose_torch_moe_form`` picks by measurement (``benchmarks/moe_cpu_paths.py`` on the
2-vCPU AMD EPYC, AVX2; figures in docs/moe.md): ``sorted`` for the smallest batches (at most
``SORTED_MAX_ROWS`` rows: it reads only the used experts), ``padded`` above, unless the
routing is so uneven that the padded product would be more than ``PADDED_MAX_WASTE`` times
the real one (then ``sorted``). ``gather`` lost at every measured size on that CPU (its weight
gather costs more than the GEMMs) and is kept for the measurement only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F

TorchMoEForm = Literal["gather", "sorted", "padded"]
#: ``(local expert, rows [n, in]) -> [n, out]``: one expert's product
ExpertLinear = Callable[[int, torch.Tensor], torch.Tensor]

# rows (tokens * top_k) up to which ``sorted`` is used; above it ``padded``
SORTED_MAX_ROWS = 16
# ``padded`` only while experts * largest expert count <= this many times the rows
PADDED_MAX_WASTE = 4


def choose_torch_moe_form(topk_ids: torch.Tensor, num_experts: int) -> TorchMoEForm:
    """The measured-fastest form for this routing on the CPU (module docstring)."""
    rows = topk_ids.numel()
    if rows <= SORTED_MAX_ROWS:
        return "sorted"
    flat = topk_ids.reshape(-1)
    largest = int(torch.bincount(flat[flat >= 0], minlength=num_experts).max())
    return "padded" if num_experts * largest <= PADDED_MAX_WASTE * rows else "sorted"


def torch_fused_moe(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor,
                    topk_weights: torch.Tensor, topk_ids: torch.Tensor,
                    form: TorchMoEForm | None = None) -> torch.Tensor:
    """The module contract, by ``form`` (None: ``choose_torch_moe_form``)."""
    if x.shape[0] == 0:
        return x.new_zeros(x.shape)
    form = form or choose_torch_moe_form(topk_ids, w13.shape[0])
    if form == "gather":
        return _gather(x, w13, w2, topk_weights, topk_ids)
    if form == "sorted":
        return _sorted(x, w13, w2, topk_weights, topk_ids)
    if form == "padded":
        return _padded(x, w13, w2, topk_weights, topk_ids)
    raise ValueError(f"unknown torch MoE form {form!r}")


def _silu_mul(h: torch.Tensor) -> torch.Tensor:
    gate, up = h.chunk(2, dim=-1)
    return F.silu(gate) * up


def _weighted_sum(y: torch.Tensor, topk_weights: torch.Tensor, valid: torch.Tensor,
                  shape: tuple[int, int, int], dtype: torch.dtype) -> torch.Tensor:
    """y [T*k, H] -> sum over k of w * y in float32, rows of other ranks' experts zeroed."""
    w = torch.where(valid, topk_weights, torch.zeros_like(topk_weights)).reshape(-1, 1)
    return (y.float() * w).view(shape).sum(dim=1).to(dtype)


def _gather(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, topk_weights: torch.Tensor,
            topk_ids: torch.Tensor) -> torch.Tensor:
    t, k = topk_ids.shape
    valid = topk_ids >= 0
    ids = topk_ids.clamp(min=0).reshape(-1)
    xr = x.repeat_interleave(k, dim=0).unsqueeze(-1)                     # [T*k, H, 1]
    h = torch.bmm(w13.index_select(0, ids), xr).squeeze(-1)             # [T*k, 2I]
    y = torch.bmm(w2.index_select(0, ids), _silu_mul(h).unsqueeze(-1)).squeeze(-1)
    return _weighted_sum(y, topk_weights, valid, (t, k, x.shape[1]), x.dtype)


def _sorted(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, topk_weights: torch.Tensor,
            topk_ids: torch.Tensor) -> torch.Tensor:
    return expert_loop_moe(x, topk_weights, topk_ids, w13.shape[0],
                           lambda e, rows: F.linear(rows, w13[e]),
                           lambda e, rows: F.linear(rows, w2[e]))


def expert_loop_moe(x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor,
                    num_experts: int, gate_up: ExpertLinear, down: ExpertLinear
                    ) -> torch.Tensor:
    """The module contract with one Python iteration per *used* expert: its rows of ``x``
    gathered, ``down(e, silu(gate) * up)`` of ``gate_up(e, rows)`` ([n, 2I], ``[gate | up]``)
    written back to those rows, then the weighted sum. The experts' products are the
    callbacks' (dense weights: ``F.linear``; quantized: the platform's kernel)."""
    t, k = topk_ids.shape
    flat = topk_ids.reshape(-1)
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat[flat >= 0], minlength=num_experts).tolist()
    skipped = int((flat < 0).sum())
    rows = order[skipped:]                       # -1 rows sort first: leave them out
    y = x.new_zeros(t * k, x.shape[1])
    start = 0
    for e, n in enumerate(counts):
        if n == 0:
            continue
        idx = rows[start:start + n]
        start += n
        h = gate_up(e, x.index_select(0, idx // k))
        y.index_copy_(0, idx, down(e, _silu_mul(h)).to(y.dtype))
    return _weighted_sum(y, topk_weights, topk_ids >= 0, (t, k, x.shape[1]), x.dtype)


def _padded(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, topk_weights: torch.Tensor,
            topk_ids: torch.Tensor) -> torch.Tensor:
    t, k = topk_ids.shape
    e_count = w13.shape[0]
    flat = topk_ids.reshape(-1)
    valid = flat >= 0
    bucket = torch.where(valid, flat, torch.full_like(flat, e_count))
    counts = torch.bincount(bucket, minlength=e_count + 1)
    m = int(counts[:e_count].max()) if flat.numel() else 0
    order = torch.argsort(bucket, stable=True)
    first = torch.cumsum(counts, 0) - counts
    slot = torch.arange(flat.numel(), device=x.device) - first[bucket[order]]
    keep = bucket[order] < e_count
    order, slot = order[keep], slot[keep]
    exp = bucket[order]
    xin = x.new_zeros(e_count, max(m, 1), x.shape[1])
    xin[exp, slot] = x.index_select(0, order // k)
    h = torch.bmm(xin, w13.transpose(1, 2))                             # [E, M, 2I]
    out = torch.bmm(_silu_mul(h), w2.transpose(1, 2))                   # [E, M, H]
    y = x.new_zeros(t * k, x.shape[1])
    y[order] = out[exp, slot]
    return _weighted_sum(y, topk_weights, topk_ids >= 0, (t, k, x.shape[1]), x.dtype)


def reference_fused_moe(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor,
                        topk_weights: torch.Tensor, topk_ids: torch.Tensor) -> torch.Tensor:
    """The contract computed one (token, expert) pair at a time: the oracle of the tests."""
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    for t in range(x.shape[0]):
        for j in range(topk_ids.shape[1]):
            e = int(topk_ids[t, j])
            if e < 0:
                continue
            h = _silu_mul(F.linear(x[t:t + 1], w13[e]))
            out[t] += float(topk_weights[t, j]) * F.linear(h, w2[e])[0].float()
    return out.to(x.dtype)
