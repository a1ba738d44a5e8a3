"""Sorting the (token, expert) pairs of a batch by expert, padded per expert to a block size.

This is the shared preparation of the grouped-GEMM kernels: row ``r`` of the flattened
``topk_ids`` (``r = token * top_k + slot``) is placed in its expert's segment; each segment
starts at a multiple of ``block_m`` and is padded with the sentinel ``T * top_k`` up to one.
Every ``block_m`` rows of ``sorted_ids`` therefore belong to a single expert,
``block_expert[b]``, so one kernel program multiplies one block by one expert's weight.

Graph safety: no output size depends on the data. ``sorted_ids`` has the worst-case length
``max_padded_rows(T * top_k, E, block_m)`` (the tail past ``num_padded[0]`` is sentinel) and
``block_expert`` one entry per block of it (-1 past the end and for blocks of rows whose
expert is not on this rank); everything is computed with device ops, no host sync.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(slots=True)
class AlignedRows:
    """The sorted, padded layout of one batch's (token, expert) pairs (module docstring)."""

    sorted_ids: torch.Tensor      # [max_padded] int64: flat row (token * k + slot) or sentinel
    block_expert: torch.Tensor    # [max_padded // block_m] int64: local expert, -1: skip block
    num_padded: torch.Tensor      # [1] int64: rows in use (a multiple of block_m)
    block_m: int


def max_padded_rows(num_rows: int, num_experts: int, block_m: int) -> int:
    """Worst-case length of the padded layout: every expert segment padded by block_m - 1
    (and at least one block, so an empty batch still has a valid grid)."""
    worst = num_rows + num_experts * (block_m - 1)
    return max(block_m, -(-worst // block_m) * block_m)


def align_rows(topk_ids: torch.Tensor, num_experts: int, block_m: int) -> AlignedRows:
    """Sort the flat rows of ``topk_ids`` [T, k] (local expert ids in [0, E), or -1 for an
    expert held by another rank: such rows are left out) into per-expert segments padded to
    ``block_m`` (module docstring)."""
    flat = topk_ids.reshape(-1)
    num_rows = flat.numel()
    device = flat.device
    # experts -1 go to an extra bucket E, placed last and never computed
    bucket = torch.where(flat < 0, torch.full_like(flat, num_experts), flat)
    counts = torch.zeros(num_experts + 1, dtype=torch.int64, device=device)
    counts.scatter_add_(0, bucket, torch.ones_like(bucket))
    padded = (counts + block_m - 1) // block_m * block_m
    padded[num_experts] = counts[num_experts]             # the skipped bucket is not padded
    seg_end = torch.cumsum(padded, 0)
    seg_start = seg_end - padded
    order = torch.argsort(bucket, stable=True)
    sorted_bucket = bucket[order]
    first_of_bucket = torch.cumsum(counts, 0) - counts
    rank_in_bucket = torch.arange(num_rows, device=device) - first_of_bucket[sorted_bucket]
    dest = seg_start[sorted_bucket] + rank_in_bucket
    max_padded = max_padded_rows(num_rows, num_experts + 1, block_m)
    sorted_ids = torch.full((max_padded,), num_rows, dtype=torch.int64, device=device)
    sorted_ids.scatter_(0, dest, order)
    num_padded = seg_end[num_experts - 1:num_experts].clone() if num_experts else \
        torch.zeros(1, dtype=torch.int64, device=device)
    block_start = torch.arange(0, max_padded, block_m, device=device)
    block_expert = torch.searchsorted(seg_end[:num_experts].contiguous(), block_start,
                                      right=True)
    block_expert = torch.where(block_start < num_padded, block_expert,
                               torch.full_like(block_expert, -1))
    return AlignedRows(sorted_ids, block_expert, num_padded, block_m)
