"""``StepBuffers``: host staging arrays and device tensors of fixed capacity for one step's
inputs, written from a ``StepPlan``.

Device tensors never move, so captured graphs and cached metadata may hold views of them. The
host side is pinned when the platform asks (``ModelRunner.pin_memory``) so uploads are
asynchronous; when the device *is* host memory, host and device tensors are the same objects
and ``upload`` copies nothing.
"""

from __future__ import annotations

import numpy as np
import torch

from vllm_core.devices import HOST
from vllm_core.worker.request_table import RequestTable
from vllm_core.worker.step_plan import StepPlan


class StepBuffers:
    """``max_tokens`` tokens, ``max_reqs`` requests, ``max(max_tokens, max_reqs)`` logits rows
    (speculative verification has several per request), block tables of ``max_blocks``
    columns in ``block_table_dtype`` (the attention backend's choice).

    Per step: ``stage(plan, table)`` writes the used prefix on the host, the runner may pad
    (``pad_decode_batch``, ``pad_token_batch``), then ``upload(T, R, L)`` issues one non-blocking copy per buffer.
    """

    NAMES = ("input_ids", "positions", "slot_mapping", "logits_indices", "query_start_loc",
             "seq_lens", "context_lens", "block_table", "feed_src", "feed_dst")

    def __init__(self, max_tokens: int, max_reqs: int, max_blocks: int, device: torch.device,
                 pin_memory: bool, block_table_dtype: torch.dtype = torch.int64) -> None:
        self.max_tokens = max_tokens
        self.max_reqs = max_reqs
        self.max_logits = max_logits = max(max_tokens, max_reqs)
        self.shared = device == HOST and not pin_memory
        shapes = {"input_ids": (max_tokens,), "positions": (max_tokens,),
                  "slot_mapping": (max_tokens,), "logits_indices": (max_logits,),
                  "query_start_loc": (max_reqs + 1,), "seq_lens": (max_reqs,),
                  "context_lens": (max_reqs,), "block_table": (max_reqs, max_blocks),
                  "feed_src": (max_reqs,), "feed_dst": (max_reqs,)}
        for name in self.NAMES:
            dtype = block_table_dtype if name == "block_table" else torch.int64
            host = torch.zeros(shapes[name], dtype=dtype, pin_memory=pin_memory)
            dev = host if self.shared else torch.zeros(shapes[name], dtype=dtype, device=device)
            setattr(self, name + "_cpu", host)
            setattr(self, name, dev)
            setattr(self, name + "_np", host.numpy())
        # sampled ids come back here, alternating by step so that a step in flight never
        # overwrites ids the host has not read yet
        self.sampled_cpu = [torch.zeros(max_logits, dtype=torch.int64, pin_memory=pin_memory)
                            for _ in range(2)]
        self.sampled_np = [t.numpy() for t in self.sampled_cpu]

    def stage(self, plan: StepPlan, table: RequestTable) -> None:
        """Write ``plan``'s inputs into the host staging arrays (token ids gathered from the
        table; a token still in flight is fed on the device afterwards)."""
        t, n, num_logits = plan.num_tokens, plan.num_reqs, len(plan.logits_indices)
        if t > self.max_tokens or n > self.max_reqs or num_logits > self.max_logits:
            raise ValueError(f"step of {t} tokens / {n} requests / {num_logits} logits rows "
                             f"exceeds the runner's buffers ({self.max_tokens} / "
                             f"{self.max_reqs})")
        self.input_ids_np[:t] = table.token_ids[plan.token_slots, plan.positions]
        self.positions_np[:t] = plan.positions
        self.slot_mapping_np[:t] = plan.slot_mapping
        self.query_start_loc_np[:n + 1] = plan.query_start_loc
        self.seq_lens_np[:n] = plan.seq_lens
        self.context_lens_np[:n] = plan.num_computed
        width = int(table.num_blocks[plan.slots].max(initial=0))
        self.block_table_np[:n, :width] = table.block_table[plan.slots, :width]
        self.logits_indices_np[:num_logits] = plan.logits_indices

    def pad_decode_batch(self, start: int, size: int, pad_slot: int = -1) -> None:
        """Fill requests/tokens ``start..size-1`` as padding rows of a decode-only batch: token
        0 at position 0, KV slot ``pad_slot`` (-1: not written), a one-token context read from
        the null block, its own logits row."""
        if size <= start:
            return
        self._pad_one_token_requests(start, size, start, pad_slot)
        self.logits_indices_np[start:size] = np.arange(start, size)

    def pad_token_batch(self, num_reqs: int, num_tokens: int, size: int, padded_tokens: int,
                        pad_slot: int = -1) -> None:
        """Pad a batch whose every token is a logits row (a verification step: each request's
        last ``k + 1`` tokens) to ``size + 1`` requests and ``padded_tokens`` tokens:
        requests ``num_reqs..size-1`` get one padding token each (as in ``pad_decode_batch``)
        and request ``size`` takes every remaining token (possibly none, at most the block
        table's width in tokens) as a causal context of its own read from the null block
        (block-table row of zeros; positions 0, only the rotary embedding reads them).
        Padding tokens are never written to the KV cache (``pad_slot``); every token, real or
        padding, is its own logits row. Requires ``padded_tokens - num_tokens >= size -
        num_reqs``."""
        pad_reqs = size - num_reqs
        rest = padded_tokens - num_tokens - pad_reqs
        if pad_reqs < 0 or rest < 0:
            raise ValueError(f"cannot pad {num_reqs} requests / {num_tokens} tokens to "
                             f"{size} + 1 requests / {padded_tokens} tokens")
        self._pad_one_token_requests(num_reqs, size, num_tokens, pad_slot)
        start = num_tokens + pad_reqs
        self.query_start_loc_np[size + 1] = padded_tokens
        self.input_ids_np[start:padded_tokens] = 0
        self.positions_np[start:padded_tokens] = 0           # rotary input only: any in range
        self.slot_mapping_np[start:padded_tokens] = pad_slot
        self.seq_lens_np[size] = rest
        self.context_lens_np[size] = 0
        self.block_table_np[size] = 0
        self.logits_indices_np[num_tokens:padded_tokens] = np.arange(num_tokens, padded_tokens)

    def _pad_one_token_requests(self, req_start: int, req_end: int, token_start: int,
                                pad_slot: int) -> None:
        """Requests ``req_start..req_end-1`` as one-token padding requests whose tokens start
        at ``token_start`` (token 0 at position 0, KV slot ``pad_slot``, a one-token context
        read from the null block)."""
        t_end = token_start + req_end - req_start
        self.input_ids_np[token_start:t_end] = 0
        self.positions_np[token_start:t_end] = 0
        self.slot_mapping_np[token_start:t_end] = pad_slot
        self.query_start_loc_np[req_start + 1:req_end + 1] = np.arange(token_start + 1, t_end + 1)
        self.seq_lens_np[req_start:req_end] = 1
        self.context_lens_np[req_start:req_end] = 0
        self.block_table_np[req_start:req_end] = 0

    def upload(self, num_tokens: int, num_reqs: int, num_logits: int) -> None:
        """Copy the first rows of every staging array to its device tensor (non-blocking)."""
        if self.shared:
            return
        for name, n in (("input_ids", num_tokens), ("positions", num_tokens),
                        ("slot_mapping", num_tokens), ("query_start_loc", num_reqs + 1),
                        ("seq_lens", num_reqs), ("context_lens", num_reqs),
                        ("block_table", num_reqs), ("logits_indices", num_logits)):
            if n:
                getattr(self, name)[:n].copy_(getattr(self, name + "_cpu")[:n],
                                              non_blocking=True)

    def feed_from(self, sampled: torch.Tensor, num_rows: int) -> None:
        """``input_ids[feed_dst[i]] = sampled[feed_src[i]]`` for the first ``num_rows`` pairs
        staged in ``feed_src_np`` / ``feed_dst_np`` (after ``upload``, on the same stream)."""
        if not self.shared:
            self.feed_src[:num_rows].copy_(self.feed_src_cpu[:num_rows], non_blocking=True)
            self.feed_dst[:num_rows].copy_(self.feed_dst_cpu[:num_rows], non_blocking=True)
        src = self.feed_src[:num_rows]
        self.input_ids.index_copy_(0, self.feed_dst[:num_rows],
                                   sampled.to(self.input_ids.device).index_select(0, src))
