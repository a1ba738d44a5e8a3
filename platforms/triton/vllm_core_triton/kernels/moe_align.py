"""``align_rows`` (core ``layers/fused_moe/align.py``) as one Triton launch.

The core's torch form sorts the flat rows with ``argsort`` and some twenty small ops; on an
H200 at the Qwen3-30B-A3B decode shape (2048 rows, 128 experts) they cost ~60 us per MoE
layer, a tenth of the layer. Here one program does a counting sort:

1. fill ``sorted_ids`` with the sentinel ``num_rows``;
2. count the rows per bucket (``tl.histogram``; bucket ``E`` holds rows of experts on other
   ranks, id -1);
3. pad each expert's count to ``BLOCK_M``, prefix-sum to segment starts, store
   ``num_padded``, and seed one cursor per bucket with its segment start;
4. place each row at ``atomic_add(cursor[bucket], 1)`` (its slot in the segment);
5. ``block_expert[b]`` = the expert whose segment holds block ``b`` (-1 past ``num_padded``).

Same contract as the torch form (``AlignedRows``, worst-case sizes, no host sync: CUDA-graph
safe) except the order of rows *inside* a segment, which follows the atomics. No consumer
depends on it: each row's products are computed on its own and written to its own
``partial`` row, so the results are identical.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from vllm_core.model_executor.layers.fused_moe.align import AlignedRows, max_padded_rows


@triton.jit(do_not_specialize=["num_rows", "max_padded", "num_blocks"])
def _moe_align_kernel(ids_ptr, cursor_ptr, sorted_ids_ptr, block_expert_ptr, num_padded_ptr,
                      num_rows, max_padded, num_blocks,
                      E: tl.constexpr, BINS: tl.constexpr, BLOCK_M: tl.constexpr,
                      CHUNK: tl.constexpr, BLOCK_CHUNK: tl.constexpr):
    offs = tl.arange(0, CHUNK)
    for start in range(0, max_padded, CHUNK):
        tl.store(sorted_ids_ptr + start + offs, tl.full([CHUNK], 0, tl.int64) + num_rows,
                 mask=start + offs < max_padded)
    tl.debug_barrier()                                          # the fill lands before step 4
    counts = tl.zeros([BINS], tl.int32)
    for start in range(0, num_rows, CHUNK):
        m = start + offs < num_rows
        e = tl.load(ids_ptr + start + offs, mask=m, other=0)
        b = tl.where(m, tl.where(e < 0, E, e), E + 1)          # E + 1: lanes past the end
        counts += tl.histogram(b.to(tl.int32), BINS)
    bins = tl.arange(0, BINS)
    padded = tl.where(bins < E, (counts + BLOCK_M - 1) // BLOCK_M * BLOCK_M, counts)
    padded = tl.where(bins <= E, padded, 0)
    seg_end = tl.cumsum(padded, 0)
    seg_start = seg_end - padded
    num_padded = tl.sum(tl.where(bins < E, padded, 0), 0)
    tl.store(num_padded_ptr, num_padded.to(tl.int64))
    tl.store(cursor_ptr + bins, seg_start)
    tl.debug_barrier()
    for start in range(0, num_rows, CHUNK):
        m = start + offs < num_rows
        e = tl.load(ids_ptr + start + offs, mask=m, other=0)
        b = tl.where(e < 0, E, e)
        dest = tl.atomic_add(cursor_ptr + b, 1, mask=m)
        tl.store(sorted_ids_ptr + dest, (start + offs).to(tl.int64), mask=m)
    last = tl.where(bins < E, seg_end, 1 << 30)                 # segment ends of real experts
    boffs = tl.arange(0, BLOCK_CHUNK)
    for start in range(0, num_blocks, BLOCK_CHUNK):
        blk = start + boffs
        first_row = blk * BLOCK_M
        expert = tl.sum((last[None, :] <= first_row[:, None]).to(tl.int32), 1)
        expert = tl.where(first_row < num_padded, expert, -1)
        tl.store(block_expert_ptr + blk, expert.to(tl.int64), mask=blk < num_blocks)


def moe_align_rows(topk_ids: torch.Tensor, num_experts: int, block_m: int) -> AlignedRows:
    """``align_rows`` in one launch (module docstring); ``topk_ids`` [T, k] integer ids."""
    flat = topk_ids.reshape(-1)
    if flat.dtype not in (torch.int32, torch.int64):
        flat = flat.to(torch.int64)
    flat = flat.contiguous()
    num_rows = flat.numel()
    device = flat.device
    max_padded = max_padded_rows(num_rows, num_experts + 1, block_m)
    num_blocks = max_padded // block_m
    bins = triton.next_power_of_2(num_experts + 2)
    sorted_ids = torch.empty(max_padded, dtype=torch.int64, device=device)
    block_expert = torch.empty(num_blocks, dtype=torch.int64, device=device)
    num_padded = torch.empty(1, dtype=torch.int64, device=device)
    cursor = torch.empty(bins, dtype=torch.int32, device=device)
    _moe_align_kernel[(1,)](flat, cursor, sorted_ids, block_expert, num_padded, num_rows,
                            max_padded, num_blocks, E=num_experts, BINS=bins, BLOCK_M=block_m,
                            CHUNK=1024, BLOCK_CHUNK=64, num_warps=8)
    return AlignedRows(sorted_ids, block_expert, num_padded, block_m)
