"""``StepPlan``: the one place where a step's batch layout is computed (host numpy, from the
scheduler's output and the persistent ``RequestTable``).

Layout (the attention contract): requests with exactly one scheduled token ("decodes") first,
then the others (prefill chunks), each request's new tokens contiguous on one flat token axis.
Every runner (core, CUDA, TPU, vendors) uses this plan; platforms only pad and upload it.

Where the next features plug in, without changing these structures:
- speculative verification: ``logits_per_request`` gives a request ``k + 1`` logits rows (its
  last ``k + 1`` scheduled tokens); ``logits_indices`` / ``logits_request`` already carry several
  rows per request;
- LoRA: ``RequestTable.lora_ids[slots]`` is the per-request adapter index; repeat it by
  ``num_scheduled`` for a per-token index (``token_lora_ids``);
- multimodal: the runner passes input embeddings for ``positions`` instead of token ids (the
  plan's ``token_slots`` / ``positions`` say which placeholder each token is);
- pipeline/tensor parallelism: every rank computes the same plan from the same broadcast
  ``SchedulerOutput``; only the sampling rank uses the logits rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from vllm_core.attention.backend import CommonAttentionMetadata
from vllm_core.messages import SchedulerOutput
from vllm_core.worker.request_table import RequestTable


@dataclass(slots=True)
class StepPlan:
    """Host arrays of one step. ``R`` requests, ``T`` tokens, ``L`` logits rows.

    order [R] request ids, decodes first; slots [R] their RequestTable rows;
    num_scheduled / num_computed / seq_lens [R]; query_start_loc [R + 1];
    positions / token_slots / slot_mapping [T] (absolute position, table row and KV slot of
    each new token); logits_indices [L] token index of each logits row; logits_request [L] the
    batch row (index into ``order``) it belongs to, ascending. Invariant: requests
    ``[0, num_decodes)`` have exactly one new token.
    """

    order: list[str]
    slots: np.ndarray
    num_scheduled: np.ndarray
    num_computed: np.ndarray
    seq_lens: np.ndarray
    query_start_loc: np.ndarray
    positions: np.ndarray
    token_slots: np.ndarray
    slot_mapping: np.ndarray
    logits_indices: np.ndarray
    logits_request: np.ndarray
    num_tokens: int
    num_decodes: int

    @property
    def num_reqs(self) -> int:
        return len(self.order)

    @property
    def is_decode_only(self) -> bool:
        return self.num_decodes == len(self.order)

    def sampling_ids(self) -> list[str]:
        """Request ids of the logits rows, in row order (a request repeats when it has several
        rows)."""
        order = self.order
        return [order[i] for i in self.logits_request.tolist()]

    def token_lora_ids(self, table: RequestTable) -> np.ndarray:
        """Adapter id of every new token (0: the base model)."""
        return np.repeat(table.lora_ids[self.slots], self.num_scheduled)

    def host_metadata(self, block_table: np.ndarray, block_size: int) -> CommonAttentionMetadata:
        """The attention metadata of this plan as host tensors (``block_table`` [R, B] holds
        each request's blocks); ``.to(device)`` it field by field, or let the runner's buffers
        carry it (the runner's own path)."""
        qsl = torch.from_numpy(self.query_start_loc)
        seq = torch.from_numpy(self.seq_lens)
        return CommonAttentionMetadata(
            query_start_loc=qsl, seq_lens=seq, context_lens=torch.from_numpy(self.num_computed),
            block_table=torch.from_numpy(block_table),
            slot_mapping=torch.from_numpy(self.slot_mapping), query_start_loc_cpu=qsl,
            seq_lens_cpu=seq, num_reqs=self.num_reqs, num_tokens=self.num_tokens,
            num_decodes=self.num_decodes, max_query_len=int(self.num_scheduled.max()),
            max_seq_len=int(self.seq_lens.max()), block_size=block_size)


def token_layout(num_computed: np.ndarray, num_scheduled: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(query_start_loc [R + 1], absolute position [T], request row [T]) of requests with
    ``num_computed`` tokens cached and ``num_scheduled`` new ones, laid out in order."""
    n = len(num_scheduled)
    qsl = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(num_scheduled, out=qsl[1:])
    rows = np.repeat(np.arange(n), num_scheduled)
    positions = np.arange(int(qsl[-1]), dtype=np.int64) - (qsl[:-1] - num_computed)[rows]
    return qsl, positions, rows


def plan_for_lengths(context_lens: list[int] | np.ndarray, query_lens: list[int] | np.ndarray,
                     block_table: np.ndarray, block_size: int) -> StepPlan:
    """The plan of a batch described by lengths alone (memory profiling, warm-up, tests,
    benchmarks), in the given order: request ``r`` has ``context_lens[r]`` tokens cached and
    ``query_lens[r]`` new ones in the blocks of ``block_table[r]``; every request has one logits
    row (its last token); the leading requests with one new token after a cached context are
    the decodes. ``slots`` are all 0 (no request table)."""
    computed = np.asarray(context_lens, dtype=np.int64)
    sched = np.asarray(query_lens, dtype=np.int64)
    qsl, positions, rows = token_layout(computed, sched)
    decode = (sched == 1) & (computed > 0)
    num_decodes = len(sched) if decode.all() else int(np.argmin(decode))
    return StepPlan(
        order=[str(i) for i in range(len(sched))], slots=np.zeros(len(sched), dtype=np.int64),
        num_scheduled=sched, num_computed=computed, seq_lens=computed + sched,
        query_start_loc=qsl, positions=positions, token_slots=np.zeros(len(rows), dtype=np.int64),
        slot_mapping=(np.asarray(block_table, dtype=np.int64)[rows, positions // block_size]
                      * block_size + positions % block_size),
        logits_indices=qsl[1:] - 1, logits_request=np.arange(len(sched)),
        num_tokens=int(qsl[-1]), num_decodes=num_decodes)


def plan_step(so: SchedulerOutput, table: RequestTable, block_size: int,
              logits_per_request: dict[str, int] | None = None) -> StepPlan:
    """Lay out ``so`` over ``table`` (whose deltas are already applied).

    Logits rows: one per request in ``so.sampling_req_ids`` (its last scheduled token), or
    ``logits_per_request[req_id]`` rows (its last that many tokens) where given.
    """
    sched = so.num_scheduled_tokens
    order = [r for r, n in sched.items() if n == 1]
    num_decodes = len(order)
    if num_decodes < len(sched):
        order += [r for r, n in sched.items() if n > 1]
    n = len(order)
    slot_of = table.slot_of
    slots = np.fromiter((slot_of[r] for r in order), dtype=np.int64, count=n)
    num_computed = table.num_computed[slots]
    if num_decodes == n:
        num_sched = np.ones(n, dtype=np.int64)
        qsl = np.arange(n + 1, dtype=np.int64)
        positions = num_computed.copy()
        token_slots = slots
    else:
        num_sched = np.fromiter((sched[r] for r in order), dtype=np.int64, count=n)
        qsl, positions, rows = token_layout(num_computed, num_sched)
        token_slots = slots[rows]
    slot_mapping = (table.block_table[token_slots, positions // block_size] * block_size
                    + positions % block_size)

    sampling = so.sampling_req_ids
    if logits_per_request:
        per = np.fromiter((logits_per_request.get(r, 1 if r in sampling else 0) for r in order),
                          dtype=np.int64, count=n)
    else:
        per = np.fromiter((r in sampling for r in order), dtype=np.int64, count=n)
    if int(per.max(initial=0)) <= 1:
        logits_request = np.flatnonzero(per)
        logits_indices = qsl[1:][logits_request] - 1
    else:
        logits_request = np.repeat(np.arange(n), per)
        starts = np.repeat(qsl[1:] - per, per)
        offsets = np.arange(len(logits_request)) - np.repeat(np.cumsum(per) - per, per)
        logits_indices = starts + offsets
    return StepPlan(order=order, slots=slots, num_scheduled=num_sched,
                    num_computed=num_computed, seq_lens=num_computed + num_sched,
                    query_start_loc=qsl, positions=positions, token_slots=token_slots,
                    slot_mapping=slot_mapping, logits_indices=logits_indices,
                    logits_request=logits_request, num_tokens=int(qsl[-1]),
                    num_decodes=num_decodes)
