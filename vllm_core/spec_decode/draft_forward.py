"""The paged forwards a worker-side proposer runs over the target's request table.

``DraftCache`` owns a proposer's KV tensors (one per draft layer, the target's block count and
block size) and its attention metadata builder, and runs one batched forward over pieces of
requests given by lengths (``forward``): piece ``i`` is ``lens[i]`` new tokens of the request
in table slot ``slots[i]``, at positions ``starts[i] ..``, written into the draft cache at the
slots the target's block table gives them. ``catch_up_pieces`` splits "consume positions
``start .. end`` of each request" into forwards of at most ``budget`` tokens; ``piece_arrays``
lays one forward's pieces out as arrays.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vllm_core.attention.backend import AttentionBackend
from vllm_core.worker.request_table import RequestTable
from vllm_core.worker.step_plan import StepPlan, plan_for_lengths

# model(input_ids, positions, kv_caches, attn_metadata, plan) -> hidden [T, H]
ForwardFn = Callable[[torch.Tensor, torch.Tensor, list[torch.Tensor], Any, StepPlan],
                     torch.Tensor]


@dataclass(slots=True)
class Piece:
    """``length`` tokens of request ``index`` (into the caller's request list) from ``start``."""

    index: int
    start: int
    length: int


def catch_up_pieces(starts: np.ndarray, ends: np.ndarray, budget: int) -> list[list[Piece]]:
    """Forwards (lists of pieces, at most ``budget`` tokens each) that cover positions
    ``[starts[i], ends[i])`` of every request ``i``; a request longer than the budget is split
    over consecutive forwards, in position order. Each forward lists its decodes first (one
    token after a non-empty context), as the attention contract requires."""
    forwards: list[list[Piece]] = []
    current: list[Piece] = []
    used = 0
    for i in np.argsort(ends - starts, kind="stable").tolist():
        start, end = int(starts[i]), int(ends[i])
        while start < end:
            n = min(end - start, budget - used)
            current.append(Piece(i, start, n))
            used += n
            start += n
            if used == budget:
                forwards.append(current)
                current, used = [], 0
    if current:
        forwards.append(current)
    for pieces in forwards:
        pieces.sort(key=lambda p: not (p.length == 1 and p.start > 0))
    return forwards


def piece_arrays(pieces: list[Piece]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(index, start, length)`` of each piece as int64 arrays, and the position of every
    token of the forward (pieces in order, each ``start ..``)."""
    idx = np.fromiter((p.index for p in pieces), dtype=np.int64, count=len(pieces))
    starts = np.fromiter((p.start for p in pieces), dtype=np.int64, count=len(pieces))
    lens = np.fromiter((p.length for p in pieces), dtype=np.int64, count=len(pieces))
    positions = (np.arange(int(lens.sum())) - np.repeat(np.cumsum(lens) - lens, lens)
                 + np.repeat(starts, lens))
    return idx, starts, lens, positions


class DraftCache:
    """A proposer's paged KV cache over the target's blocks, and its forward over pieces."""

    def __init__(self, attn_backend: type[AttentionBackend], block_size: int,
                 num_layers: int, num_kv_heads: int, head_dim: int, kv_dtype: torch.dtype,
                 device: torch.device) -> None:
        self.attn_backend = attn_backend
        self.block_size = block_size
        self.num_layers = num_layers
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.kv_dtype = kv_dtype
        self.device = device
        self.builder = attn_backend.get_builder_cls()(block_size, device)
        self.kv_caches: list[torch.Tensor] = []

    def bytes_per_block(self) -> int:
        shape = self.attn_backend.get_kv_cache_shape(1, self.block_size, self.num_kv_heads,
                                                     self.head_dim)
        itemsize = torch.empty((), dtype=self.kv_dtype).element_size()
        return int(np.prod(shape)) * itemsize * self.num_layers

    def allocate(self, num_blocks: int) -> None:
        shape = self.attn_backend.get_kv_cache_shape(num_blocks, self.block_size,
                                                     self.num_kv_heads, self.head_dim)
        self.kv_caches = [torch.zeros(shape, dtype=self.kv_dtype, device=self.device)
                          for _ in range(self.num_layers)]

    def forward(self, model: ForwardFn, table: RequestTable, slots: np.ndarray,
                starts: np.ndarray, lens: np.ndarray, input_ids: np.ndarray | torch.Tensor
                ) -> tuple[torch.Tensor, StepPlan]:
        """Hidden states [T, H] of one forward over the pieces (decodes first), and its plan.
        ``input_ids`` [T]: host ids, or a device tensor (drafts of the previous step)."""
        block_table = table.block_table[slots]
        plan = plan_for_lengths(starts, lens, block_table, self.block_size)
        host = plan.host_metadata(block_table, self.block_size)
        dev = self.device
        common = dataclasses.replace(host, **{f: getattr(host, f).to(dev) for f in (
            "query_start_loc", "seq_lens", "context_lens", "slot_mapping")},
            block_table=host.block_table.to(dev, self.attn_backend.block_table_dtype))
        if isinstance(input_ids, np.ndarray):
            input_ids = torch.from_numpy(input_ids)
        ids = input_ids.to(dev, torch.long)
        positions = torch.from_numpy(plan.positions).to(dev)
        hidden = model(ids, positions, self.kv_caches, self.builder.build(common), plan)
        return hidden, plan
