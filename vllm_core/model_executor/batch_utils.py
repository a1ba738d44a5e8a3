"""Build a ``CommonAttentionMetadata`` for a hand-written batch (tests, benchmarks, tools).

The model runner builds the real metadata from scheduler output; this helper lays out a batch
described only by per-request context and new-token counts, giving each request fresh blocks
(block 0 stays the null block), so models and attention backends can be driven directly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vllm_core.attention.backend import CommonAttentionMetadata


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
    width = max(len(b) for b in block_ids)
    table = torch.zeros(len(seq_lens), width, dtype=torch.int32)
    for r, blocks in enumerate(block_ids):
        table[r, : len(blocks)] = torch.tensor(blocks, dtype=torch.int32)
    positions = torch.cat([torch.arange(c, s) for c, s in zip(context_lens, seq_lens,
                                                                strict=True)])
    req = torch.repeat_interleave(torch.arange(len(seq_lens)), torch.tensor(query_lens))
    slots = table[req, positions // block_size].long() * block_size + positions % block_size
    qsl = torch.tensor([0] + query_lens, dtype=torch.int32).cumsum(0, dtype=torch.int32)
    num_decodes = 0
    for c, q in zip(context_lens, query_lens, strict=True):
        if q != 1 or c == 0:
            break
        num_decodes += 1
    dev = torch.device(device)
    md = CommonAttentionMetadata(
        query_start_loc=qsl.to(dev),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=dev),
        context_lens=torch.tensor(context_lens, dtype=torch.int32, device=dev),
        block_table=table.to(dev),
        slot_mapping=slots.to(dev),
        query_start_loc_cpu=qsl,
        seq_lens_cpu=torch.tensor(seq_lens, dtype=torch.int32),
        num_reqs=len(seq_lens),
        num_tokens=int(sum(query_lens)),
        num_decodes=num_decodes,
        max_query_len=max(query_lens),
        max_seq_len=max(seq_lens),
        block_size=block_size,
    )
    return BatchLayout(md, positions.to(dev), block_ids,
                       1 + max(max(b) for b in block_ids))
