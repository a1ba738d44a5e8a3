"""Build a ``CommonAttentionMetadata`` for a hand-written batch (tests, benchmarks, tools).

The model runner builds the real metadata from scheduler output; this helper lays out a batch
described only by per-request context and new-token counts (with the runner's own arithmetic,
``vllm_core.worker.step_plan.plan_for_lengths``), giving each request fresh blocks (block 0
stays the null block), so models and attention backends can be driven directly.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from vllm_core.attention.backend import CommonAttentionMetadata
from vllm_core.worker.step_plan import plan_for_lengths


@dataclass(slots=True)
class BatchLayout:
    """The metadata plus what a caller needs to feed the model.

    positions [num_tokens]: absolute position of every new token; block_ids: each request's
    blocks; num_blocks: blocks a KV cache needs to hold them all (including the null block).
    """

    metadata: CommonAttentionMetadata
    positions: torch.Tensor
    block_ids: list[list[int]]
    num_blocks: int


def make_batch_layout(context_lens: list[int], query_lens: list[int], block_size: int,
                      device: torch.device | str = "cpu",
                      block_ids: list[list[int]] | None = None) -> BatchLayout:
    """Requests ``r`` with ``context_lens[r]`` tokens already cached and ``query_lens[r]`` new
    ones, in the given order (the caller puts decodes first, as the attention contract asks).

    ``block_ids`` fixes each request's blocks (enough for its sequence); by default request
    blocks are numbered consecutively from 1.
    """
    if len(context_lens) != len(query_lens) or not query_lens:
        raise ValueError("context_lens and query_lens must be non-empty and of equal length")
    if any(q < 1 for q in query_lens) or any(c < 0 for c in context_lens):
        raise ValueError("query_lens must be >= 1 and context_lens >= 0")
    seq_lens = [c + q for c, q in zip(context_lens, query_lens, strict=True)]
    needed = [-(-s // block_size) for s in seq_lens]
    if block_ids is None:
        block_ids, next_id = [], 1
        for n in needed:
            block_ids.append(list(range(next_id, next_id + n)))
            next_id += n
    if any(len(b) < n for b, n in zip(block_ids, needed, strict=True)):
        raise ValueError("block_ids gives a request fewer blocks than its sequence needs")
    table = np.zeros((len(seq_lens), max(len(b) for b in block_ids)), dtype=np.int64)
    for r, blocks in enumerate(block_ids):
        table[r, : len(blocks)] = blocks
    plan = plan_for_lengths(context_lens, query_lens, table, block_size)
    host = plan.host_metadata(table, block_size)
    dev = torch.device(device)
    md = dataclasses.replace(host, **{f: getattr(host, f).to(dev) for f in (
        "query_start_loc", "seq_lens", "context_lens", "block_table", "slot_mapping")})
    return BatchLayout(md, torch.from_numpy(plan.positions).to(dev), block_ids,
                       1 + max(max(b) for b in block_ids))
