"""``CudaModelRunner``: the core runner with persistent inputs, CUDA graphs and a lean step.

What differs from the core ``ModelRunner`` (whose request state, prompt-logprob and profiling
code it reuses):

* **Persistent request table** (``RequestTable``, numpy): one slot per live request holding its
  token ids, block table and counters, updated from the scheduler's deltas only. A step's flat
  inputs are gathered with vectorised numpy indexing (no Python loop over tokens; the loops
  left are the dict look-ups over the step's requests that the message format implies).
* **Persistent step buffers** (``StepBuffers``): pinned host staging arrays and device tensors of
  fixed capacity. Each step writes the used prefix on the host and issues one non-blocking copy
  per buffer; the attention metadata and the graphs read views of the device tensors.
* **CUDA graphs** for decode-only steps (``graphs.DecodeGraphs``), padded to a captured size,
  for backends that are graph-safe (launch shapes fixed on the host, lengths read on the device).
* **Sampling without syncs**: the sampling metadata is built (or reused, when the sampling rows
  and their parameters did not change and nothing depends on the outputs) *before* the forward
  is launched, so its small host->device copies never wait for the GPU; the core ``Sampler``
  then runs on the GPU and the only device->host transfer of the step is the sampled ids, copied
  into a pinned buffer and waited for with an event.
* **Async scheduling** (``execute_model_async``): a step is launched and returned as a
  ``PendingStep`` whose ``result()`` waits for its sampled ids. The engine schedules and
  launches step N+1 before collecting step N; rows of step N+1 whose input token is step N's
  sample (not yet on the host) get it on the device, gathered from step N's sampled-ids tensor
  into the input ids after the upload. Host staging memory is reused only after an event says
  the previous upload was consumed, and the sampled ids land in one of two pinned buffers by
  step parity. Requests with output-dependent sampling (penalties, min_tokens, bad words)
  collect the step in flight first. ``execute_model`` is ``execute_model_async(...).result()``.
* **KV waste**: allocated-but-unused KV slots of the running requests, averaged over decode-only
  steps (``kv_waste``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vllm_core.attention.backend import AttentionBackend, CommonAttentionMetadata
from vllm_core.config import EngineConfig
from vllm_core.messages import (
    EMPTY_MODEL_RUNNER_OUTPUT,
    Logprobs,
    ModelRunnerOutput,
    SchedulerOutput,
)
from vllm_core.logger import init_logger
from vllm_core.sampling.metadata import SamplingMetadata, build_sampling_metadata
from vllm_core.worker.model_runner import ModelRunner
from vllm_core.worker.worker_base import PendingOutput, ReadyOutput
from vllm_core_cuda.graphs import DecodeGraphs

logger = init_logger(__name__)

# Backends whose forward is CUDA-graph safe: host integers only shape launches, all lengths are
# read from device tensors, and the metadata builder does no host work on device data.
GRAPH_SAFE_BACKENDS = frozenset({"triton"})


class RequestTable:
    """Host-side persistent state of the live requests, one row ("slot") each.

    ``token_ids[s, :num_tokens[s]]`` are the request's prompt + output ids; ``block_table[s,
    :num_blocks[s]]`` its KV blocks; ``num_computed[s]`` the scheduler's computed count at the
    start of the current step. Rows are recycled through a free list; capacity grows on demand.
    """

    def __init__(self, capacity: int, max_model_len: int, max_blocks: int) -> None:
        self.max_len = max_model_len + 1          # room for the token sampled at the limit
        self.max_blocks = max_blocks
        self.slot_of: dict[str, int] = {}
        self._free: list[int] = []
        self.token_ids = np.zeros((0, self.max_len), dtype=np.int64)
        self.block_table = np.zeros((0, max_blocks), dtype=np.int32)
        self.num_tokens = np.zeros(0, dtype=np.int64)
        self.num_blocks = np.zeros(0, dtype=np.int64)
        self.num_computed = np.zeros(0, dtype=np.int64)
        self._grow(max(1, capacity))

    def _grow(self, capacity: int) -> None:
        old = self.num_tokens.shape[0]
        if capacity <= old:
            return

        def grow(a: np.ndarray) -> np.ndarray:
            out = np.zeros((capacity, *a.shape[1:]), dtype=a.dtype)
            out[:old] = a
            return out

        self.token_ids = grow(self.token_ids)
        self.block_table = grow(self.block_table)
        self.num_tokens = grow(self.num_tokens)
        self.num_blocks = grow(self.num_blocks)
        self.num_computed = grow(self.num_computed)
        self._free.extend(range(capacity - 1, old - 1, -1))

    def add(self, req_id: str, token_ids: list[int], block_ids: list[int],
            num_computed: int) -> int:
        slot = self.slot_of.get(req_id)
        if slot is None:
            if not self._free:
                self._grow(2 * self.num_tokens.shape[0])
            slot = self._free.pop()
            self.slot_of[req_id] = slot
        n = len(token_ids)
        if n > self.max_len or len(block_ids) > self.max_blocks:
            raise ValueError(f"request {req_id!r} has {n} tokens / {len(block_ids)} blocks, more "
                             f"than max_model_len allows")
        self.token_ids[slot, :n] = token_ids
        self.num_tokens[slot] = n
        self.block_table[slot, :len(block_ids)] = block_ids
        self.num_blocks[slot] = len(block_ids)
        self.num_computed[slot] = num_computed
        return slot

    def remove(self, req_id: str) -> None:
        slot = self.slot_of.pop(req_id, None)
        if slot is not None:
            self._free.append(slot)

    def extend_blocks(self, slot: int, block_ids: list[int]) -> None:
        start = int(self.num_blocks[slot])
        end = start + len(block_ids)
        if end > self.max_blocks:
            raise ValueError(f"block table of slot {slot} would hold {end} blocks, more than "
                             f"max_model_len allows ({self.max_blocks})")
        self.block_table[slot, start:end] = block_ids
        self.num_blocks[slot] = end

    def append_tokens(self, slots: np.ndarray, token_ids: np.ndarray) -> None:
        """Append one token to each of ``slots`` (distinct)."""
        pos = self.num_tokens[slots]
        ok = pos < self.max_len
        self.token_ids[slots[ok], pos[ok]] = token_ids[ok]
        self.num_tokens[slots] += 1


class StepBuffers:
    """Pinned host staging arrays and device tensors of fixed capacity for one step's inputs.

    Device tensors never move, so CUDA graphs and cached metadata may hold views of them.
    ``upload(T, R, S)`` copies the first ``T`` tokens, ``R`` requests and ``S`` logits indices.
    """

    def __init__(self, max_tokens: int, max_reqs: int, max_blocks: int,
                 device: torch.device) -> None:
        pin = device.type == "cuda"     # (host-only runs, e.g. tests of the logic on the CPU)

        def pair(shape: tuple[int, ...], dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
            host = torch.zeros(shape, dtype=dtype, pin_memory=pin)
            return host, torch.zeros(shape, dtype=dtype, device=device)

        self.input_ids_cpu, self.input_ids = pair((max_tokens,), torch.int64)
        self.positions_cpu, self.positions = pair((max_tokens,), torch.int64)
        self.slot_mapping_cpu, self.slot_mapping = pair((max_tokens,), torch.int64)
        self.logits_indices_cpu, self.logits_indices = pair((max_reqs,), torch.int64)
        self.query_start_loc_cpu, self.query_start_loc = pair((max_reqs + 1,), torch.int64)
        self.seq_lens_cpu, self.seq_lens = pair((max_reqs,), torch.int64)
        self.context_lens_cpu, self.context_lens = pair((max_reqs,), torch.int64)
        self.block_table_cpu, self.block_table = pair((max_reqs, max_blocks), torch.int32)
        # rows fed from the previous step's samples on the device (async scheduling)
        self.feed_src_cpu, self.feed_src = pair((max_reqs,), torch.int64)
        self.feed_dst_cpu, self.feed_dst = pair((max_reqs,), torch.int64)
        # sampled ids come back here, alternating by step so a step in flight never
        # overwrites ids the host has not read yet
        self.sampled_cpu = [torch.zeros(max_reqs, dtype=torch.int64, pin_memory=pin)
                            for _ in range(2)]
        # numpy views of the pinned staging memory
        self.input_ids_np = self.input_ids_cpu.numpy()
        self.positions_np = self.positions_cpu.numpy()
        self.slot_mapping_np = self.slot_mapping_cpu.numpy()
        self.logits_indices_np = self.logits_indices_cpu.numpy()
        self.query_start_loc_np = self.query_start_loc_cpu.numpy()
        self.seq_lens_np = self.seq_lens_cpu.numpy()
        self.context_lens_np = self.context_lens_cpu.numpy()
        self.block_table_np = self.block_table_cpu.numpy()
        self.feed_src_np = self.feed_src_cpu.numpy()
        self.feed_dst_np = self.feed_dst_cpu.numpy()
        self.sampled_np = [t.numpy() for t in self.sampled_cpu]
        self.max_tokens = max_tokens
        self.max_reqs = max_reqs

    def upload(self, num_tokens: int, num_reqs: int, num_logits: int) -> None:
        for host, dev, n in ((self.input_ids_cpu, self.input_ids, num_tokens),
                             (self.positions_cpu, self.positions, num_tokens),
                             (self.slot_mapping_cpu, self.slot_mapping, num_tokens),
                             (self.query_start_loc_cpu, self.query_start_loc, num_reqs + 1),
                             (self.seq_lens_cpu, self.seq_lens, num_reqs),
                             (self.context_lens_cpu, self.context_lens, num_reqs),
                             (self.block_table_cpu, self.block_table, num_reqs),
                             (self.logits_indices_cpu, self.logits_indices, num_logits)):
            if n:
                dev[:n].copy_(host[:n], non_blocking=True)

    def feed_from(self, sampled: torch.Tensor, num_rows: int) -> None:
        """``input_ids[feed_dst[i]] = sampled[feed_src[i]]`` for the first ``num_rows`` pairs
        staged in ``feed_src_np`` / ``feed_dst_np`` (after ``upload``, on the same stream)."""
        self.feed_src[:num_rows].copy_(self.feed_src_cpu[:num_rows], non_blocking=True)
        self.feed_dst[:num_rows].copy_(self.feed_dst_cpu[:num_rows], non_blocking=True)
        self.input_ids.index_copy_(0, self.feed_dst[:num_rows],
                                   sampled.index_select(0, self.feed_src[:num_rows]))

    def pad_decode_batch(self, start: int, size: int) -> None:
        """Fill requests/tokens ``start..size-1`` as padding rows of a decode-only batch."""
        if size <= start:
            return
        self.input_ids_np[start:size] = 0
        self.positions_np[start:size] = 0
        self.slot_mapping_np[start:size] = -1
        self.query_start_loc_np[start + 1:size + 1] = np.arange(start + 1, size + 1)
        self.seq_lens_np[start:size] = 1
        self.context_lens_np[start:size] = 0
        self.block_table_np[start:size] = 0
        self.logits_indices_np[start:size] = np.arange(start, size)


@dataclass(slots=True)
class StepBatch:
    """One prepared step (host facts; the device inputs are in ``StepBuffers``)."""

    order: list[str]                 # request ids in batch order (decodes first)
    slots: np.ndarray                # RequestTable slot of each row
    num_scheduled: np.ndarray
    seq_lens: np.ndarray
    query_start_loc: np.ndarray      # host copy, [num_reqs + 1]
    sample_rows: np.ndarray          # rows that sample this step
    num_tokens: int
    num_decodes: int
    graph_size: int | None           # padded size when the step replays a CUDA graph


@dataclass(slots=True)
class KVWasteStats:
    """Allocated-but-unused KV slots of the scheduled requests, summed over decode-only steps."""

    steps: int = 0
    allocated_slots: int = 0
    used_slots: int = 0
    last_fraction: float = 0.0

    @property
    def mean_fraction(self) -> float:
        return 1.0 - self.used_slots / self.allocated_slots if self.allocated_slots else 0.0

    def as_dict(self) -> dict[str, float]:
        return {"kv_waste_mean": round(self.mean_fraction, 5),
                "kv_waste_last": round(self.last_fraction, 5), "kv_waste_steps": self.steps}


@dataclass(slots=True)
class StepTiming:
    """Host wall time inside ``execute_model`` and, of it, the wait for the sampled ids (the
    GPU time the host did not overlap). The engine's own time is the step time minus these."""

    steps: int = 0
    execute_s: float = 0.0
    wait_s: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {"runner_steps": self.steps, "runner_execute_s": round(self.execute_s, 3),
                "runner_wait_s": round(self.wait_s, 3)}


@dataclass(slots=True, eq=False)
class PendingStep:
    """A launched step: what ``CudaModelRunner.collect`` needs to turn it into an output."""

    runner: CudaModelRunner
    order: list[str]
    sample_ids: list[str]
    sample_slots: np.ndarray         # RequestTable slot of each sampling row
    row_of: dict[str, int]           # request id -> row of ``token_ids`` (the step's samples)
    token_ids: torch.Tensor | None   # sampled ids on the device
    logprobs: Any                    # the sampler's logprobs tensors, or None
    prompt_logprobs: dict[str, list[Logprobs]]
    parity: int                      # which pinned buffer receives the ids
    done: torch.cuda.Event | None
    output: ModelRunnerOutput | None = None

    def result(self) -> ModelRunnerOutput:
        if self.output is None:
            self.output = self.runner.collect(self)
        return self.output


class CudaModelRunner(ModelRunner):
    """See the module docstring. ``config.graph_batch_sizes`` (empty with ``enforce_eager``)
    are the decode batch sizes to capture; graphs are used only with graph-safe backends."""

    def __init__(self, config: EngineConfig, device: torch.device,
                 attn_backend: type[AttentionBackend], ops: Any | None = None) -> None:
        super().__init__(config, device, attn_backend, ops)
        sched = config.scheduler
        max_model_len = int(config.model.max_model_len)
        self.max_blocks_per_req = -(-max_model_len // self.block_size)
        sizes = sorted(set(config.graph_batch_sizes))
        if sizes and attn_backend.name not in GRAPH_SAFE_BACKENDS:
            logger.info("CUDA graphs disabled: attention backend %r is not graph-safe "
                        "(graph-safe: %s)", attn_backend.name, ", ".join(GRAPH_SAFE_BACKENDS))
            sizes = []
        self.graph_sizes = sizes
        max_graph = sizes[-1] if sizes else 0
        self.max_num_tokens = max(int(sched.max_num_batched_tokens or 2048), max_graph)
        self.max_num_reqs = max(int(sched.max_num_seqs), max_graph)
        self.table = RequestTable(int(sched.max_num_seqs), max_model_len,
                                  self.max_blocks_per_req)
        self.buffers = StepBuffers(self.max_num_tokens, self.max_num_reqs,
                                   self.max_blocks_per_req, device)
        self.graphs: DecodeGraphs | None = None
        self._graph_metadata: dict[int, Any] = {}
        self.kv_waste = KVWasteStats()
        self.num_graph_steps = 0
        self.num_eager_steps = 0
        self.timing = StepTiming()
        self._dynamic_sampling: set[str] = set()     # outputs change their metadata
        self._prompt_logprob_reqs: set[str] = set()
        self._md_key: tuple[str, ...] | None = None
        self._md: SamplingMetadata | None = None
        self._on_gpu = device.type == "cuda"
        self._upload_done = torch.cuda.Event() if self._on_gpu else None
        self._upload_recorded = False
        self._in_flight: PendingStep | None = None     # launched, not collected
        self._parity = 0
        self.num_fed_rows = 0                            # inputs taken from a step in flight

    # ---------------------------------------------------------------- profiling
    @torch.inference_mode()
    def profile_run(self) -> None:
        """The core's maximal forward, then the sampler's worst case on ``max_num_seqs`` rows
        (random sampling with top-p over the full vocabulary, i.e. a full sort, and logprobs)."""
        super().profile_run()
        rows = max(1, int(self.config.scheduler.max_num_seqs))
        vocab = self.arch.vocab_size
        logits = torch.randn(rows, vocab, device=self.device, dtype=torch.float32)
        md = SamplingMetadata(
            temperature=torch.full((rows,), 0.7, device=self.device),
            greedy_mask=torch.zeros(rows, dtype=torch.bool, device=self.device),
            all_greedy=False, all_random=True,
            top_p=torch.full((rows,), 0.9, device=self.device),
            min_p=torch.full((rows,), 0.05, device=self.device),
            max_num_logprobs=min(self.config.model.max_logprobs, vocab) or None)
        self.sampler(logits, md)

    # ---------------------------------------------------------------- graphs
    def capture_graphs(self) -> float:
        """Capture the decode graphs (no-op without sizes). Returns the capture seconds."""
        if not self.graph_sizes:
            return 0.0
        if not self.kv_caches:
            raise RuntimeError("initialize_cache must run before capture_graphs")
        self.graphs = DecodeGraphs(self.graph_sizes, self.arch.vocab_size, self.device)
        metadata: dict[int, Any] = {}

        def prepare(size: int) -> None:
            b = self.buffers
            b.pad_decode_batch(0, size)
            b.query_start_loc_np[0] = 0
            b.upload(size, size, 0)
            torch.cuda.current_stream(self.device).synchronize()   # staging reused next size

        def forward(size: int) -> torch.Tensor:
            b = self.buffers
            md = metadata.get(size)
            if md is None:
                md = metadata[size] = self.builder.build(self._graph_common(size))
                self._plan_graph_attention(md, size)
            hidden = self.model(b.input_ids[:size], b.positions[:size], self.kv_caches, md)
            return self.model.compute_logits(hidden)

        seconds = self.graphs.capture(prepare, forward)
        self._graph_metadata = metadata            # keeps the captured launch plans alive
        return seconds

    def _plan_graph_attention(self, md: Any, size: int) -> None:
        """Fix the Triton attention launch of a decode graph of ``size`` requests.

        The backend's heuristic splits long contexts only for contexts over 512 tokens; in a
        graph the split count is frozen for every context up to ``max_model_len``, and at small
        batches a request's KV walked by one program is latency-bound (8 programs for batch 1
        of Llama-8B: ~26 us per layer at 640 tokens on an H200). So small graphs split each
        context into enough pieces for about two waves of programs, at least two 64-token
        tiles per piece; empty pieces are harmless.
        """
        launches = getattr(md, "launches", None)
        if launches is None or self.attn_backend.name != "triton":
            return
        from vllm_core_cuda.kernels.paged_attention import device_parallelism, plan_launch

        arch = self.arch
        kv_heads, gqa = arch.num_key_value_heads, arch.num_attention_heads // arch.num_key_value_heads
        units = device_parallelism(self.device)
        programs = size * kv_heads
        max_len = int(self.config.model.max_model_len)
        splits = 1
        if programs < units:
            splits = max(1, min(16, -(-2 * units // programs), max_len // 128))
        launches[(kv_heads, gqa, arch.head_dim, False)] = plan_launch(
            num_tokens=size, num_reqs=size, max_query_len=1, max_seq_len=max_len,
            num_kv_heads=kv_heads, num_queries_per_kv=gqa, head_size=arch.head_dim,
            num_compute_units=units, num_splits=splits)

    def _graph_common(self, size: int) -> CommonAttentionMetadata:
        """Metadata of a padded decode batch of ``size`` over the persistent buffers; launch
        shapes are planned for the longest context (``max_model_len``)."""
        b = self.buffers
        max_len = int(self.config.model.max_model_len)
        return CommonAttentionMetadata(
            query_start_loc=b.query_start_loc[:size + 1], seq_lens=b.seq_lens[:size],
            context_lens=b.context_lens[:size], block_table=b.block_table[:size],
            slot_mapping=b.slot_mapping[:size],
            query_start_loc_cpu=torch.arange(size + 1), seq_lens_cpu=torch.full((size,), max_len),
            num_reqs=size, num_tokens=size, num_decodes=size, max_query_len=1,
            max_seq_len=max_len, block_size=self.block_size)

    # ---------------------------------------------------------------- state updates
    def _update_states(self, so: SchedulerOutput) -> None:
        for req_id in so.finished_req_ids:
            self.table.remove(req_id)
            self._dynamic_sampling.discard(req_id)
            self._prompt_logprob_reqs.discard(req_id)
        super()._update_states(so)
        table = self.table
        for new in so.scheduled_new_reqs:
            state = self.requests[new.req_id]
            table.add(new.req_id, state.token_ids, state.block_ids, state.num_computed_tokens)
            p = state.sampling_params
            if (p.repetition_penalty != 1.0 or p.presence_penalty or p.frequency_penalty
                    or p.min_tokens or p.bad_words_token_ids):
                self._dynamic_sampling.add(new.req_id)
            if p.prompt_logprobs is not None:
                self._prompt_logprob_reqs.add(new.req_id)
        slot_of = table.slot_of
        for cached in so.scheduled_cached_reqs:
            slot = slot_of[cached.req_id]
            if cached.new_block_ids:
                table.extend_blocks(slot, cached.new_block_ids)
            table.num_computed[slot] = cached.num_computed_tokens

    # ---------------------------------------------------------------- input preparation
    def _prepare(self, so: SchedulerOutput) -> StepBatch:
        sched = so.num_scheduled_tokens
        order = [r for r, n in sched.items() if n == 1]
        num_decodes = len(order)
        if num_decodes < len(sched):
            order += [r for r, n in sched.items() if n > 1]
        n = len(order)
        t = self.table
        slot_of = t.slot_of
        slots = np.fromiter((slot_of[r] for r in order), dtype=np.int64, count=n)
        num_computed = t.num_computed[slots]
        if num_decodes == n:
            num_sched = np.ones(n, dtype=np.int64)
            total = n
            positions = num_computed
            token_slot = slots
            qsl = np.arange(n + 1, dtype=np.int64)
        else:
            num_sched = np.fromiter((sched[r] for r in order), dtype=np.int64, count=n)
            cu = np.cumsum(num_sched)
            total = int(cu[-1])
            qsl = np.concatenate([np.zeros(1, dtype=np.int64), cu])
            positions = (np.arange(total, dtype=np.int64)
                         - np.repeat(qsl[:-1] - num_computed, num_sched))
            token_slot = np.repeat(slots, num_sched)
        if total > self.max_num_tokens or n > self.max_num_reqs:
            raise ValueError(f"step of {total} tokens / {n} requests exceeds the runner's "
                             f"buffers ({self.max_num_tokens} / {self.max_num_reqs})")
        seq_lens = num_computed + num_sched
        sample_rows = np.flatnonzero(seq_lens >= t.num_tokens[slots])

        graph_size = None
        if (self.graphs is not None and num_decodes == n and len(sample_rows) == n):
            graph_size = self.graphs.padded_size(n)

        b = self.buffers
        if self._upload_recorded:            # staging memory still being read by the device?
            self._upload_done.synchronize()
        b.input_ids_np[:total] = t.token_ids[token_slot, positions]
        b.positions_np[:total] = positions
        b.slot_mapping_np[:total] = (
            t.block_table[token_slot, positions // self.block_size].astype(np.int64)
            * self.block_size + positions % self.block_size)
        b.query_start_loc_np[:n + 1] = qsl
        b.seq_lens_np[:n] = seq_lens
        b.context_lens_np[:n] = num_computed
        b.block_table_np[:n] = t.block_table[slots]
        num_logits = len(sample_rows)
        b.logits_indices_np[:num_logits] = qsl[1:][sample_rows] - 1
        if graph_size is not None:
            b.pad_decode_batch(n, graph_size)
            b.upload(graph_size, graph_size, 0)
        else:
            b.upload(total, n, num_logits)
        self._feed_in_flight_tokens(order, qsl)
        if self._upload_done is not None:
            self._upload_done.record()
            self._upload_recorded = True
        if num_decodes == n:
            self._record_kv_waste(slots, seq_lens)
        return StepBatch(order=order, slots=slots, num_scheduled=num_sched, seq_lens=seq_lens,
                         query_start_loc=qsl, sample_rows=sample_rows, num_tokens=total,
                         num_decodes=num_decodes, graph_size=graph_size)

    def _feed_in_flight_tokens(self, order: list[str], qsl: np.ndarray) -> None:
        """Rows whose input is the token the step in flight is sampling read it on the device
        (its position is the request's last, not yet on the host)."""
        prev = self._in_flight
        if prev is None:
            return
        row_of = prev.row_of
        src = [row_of.get(r, -1) for r in order]
        rows = [i for i, s in enumerate(src) if s >= 0]
        if not rows:
            return
        b = self.buffers
        m = len(rows)
        b.feed_src_np[:m] = [src[i] for i in rows]
        b.feed_dst_np[:m] = qsl[1:][rows] - 1           # the last token of each such row
        b.feed_from(prev.token_ids, m)
        self.num_fed_rows += m

    def _record_kv_waste(self, slots: np.ndarray, seq_lens: np.ndarray) -> None:
        allocated = int(self.table.num_blocks[slots].sum()) * self.block_size
        used = int(seq_lens.sum())
        w = self.kv_waste
        w.steps += 1
        w.allocated_slots += allocated
        w.used_slots += used
        w.last_fraction = 1.0 - used / allocated if allocated else 0.0

    def _eager_common(self, batch: StepBatch) -> CommonAttentionMetadata:
        b = self.buffers
        n, total = len(batch.order), batch.num_tokens
        return CommonAttentionMetadata(
            query_start_loc=b.query_start_loc[:n + 1], seq_lens=b.seq_lens[:n],
            context_lens=b.context_lens[:n], block_table=b.block_table[:n],
            slot_mapping=b.slot_mapping[:total],
            query_start_loc_cpu=torch.from_numpy(batch.query_start_loc),
            seq_lens_cpu=torch.from_numpy(batch.seq_lens),
            num_reqs=n, num_tokens=total, num_decodes=batch.num_decodes,
            max_query_len=int(batch.num_scheduled.max()), max_seq_len=int(batch.seq_lens.max()),
            block_size=self.block_size)

    def _sampling_metadata(self, req_ids: list[str]) -> SamplingMetadata:
        """Build, or reuse the previous step's when the rows are the same requests in the same
        order and none of them has output-dependent sampling (penalties, min_tokens, bad
        words). Built before the forward launch, so its host->device copies do not wait."""
        key = tuple(req_ids)
        if (self._md is not None and key == self._md_key
                and not self._dynamic_sampling.intersection(key)):
            return self._md
        states = [self.requests[r].sampling_state for r in req_ids]
        md = build_sampling_metadata(states, self.arch.vocab_size, self.device)
        self._md, self._md_key = md, key
        return md

    # ---------------------------------------------------------------- the step
    def execute_model(self, so: SchedulerOutput) -> ModelRunnerOutput:
        return self.execute_model_async(so).result()

    def execute_model_async(self, so: SchedulerOutput) -> PendingOutput:
        start = time.perf_counter()
        try:
            return self._launch(so)
        finally:
            self.timing.steps += 1
            self.timing.execute_s += time.perf_counter() - start

    @torch.inference_mode()
    def _launch(self, so: SchedulerOutput) -> PendingOutput:
        self._update_states(so)
        if so.total_num_scheduled_tokens == 0:
            return ReadyOutput(EMPTY_MODEL_RUNNER_OUTPUT)
        prev = self._in_flight
        if prev is not None and self._dynamic_sampling and any(
                r in prev.row_of for r in self._dynamic_sampling.intersection(
                    so.num_scheduled_tokens)):
            prev.result()           # their metadata needs the token in flight on the host
        batch = self._prepare(so)
        order = batch.order
        sample_ids = [order[i] for i in batch.sample_rows.tolist()]
        md = self._sampling_metadata(sample_ids) if sample_ids else None

        hidden = None
        if batch.graph_size is not None:
            logits = self.graphs.replay(batch.graph_size)[:len(order)]
            self.num_graph_steps += 1
        else:
            b = self.buffers
            attn_md = self.builder.build(self._eager_common(batch))
            hidden = self.model(b.input_ids[:batch.num_tokens], b.positions[:batch.num_tokens],
                                self.kv_caches, attn_md)
            logits = (self.model.compute_logits(hidden[b.logits_indices[:len(sample_ids)]])
                      if sample_ids else None)
            self.num_eager_steps += 1

        prompt_logprobs: dict[str, list[Logprobs]] = {}
        if hidden is not None and self._prompt_logprob_reqs:
            prompt_logprobs = self._prompt_logprobs(batch, hidden)   # duck-typed BatchInputs

        token_ids = out_logprobs = done = None
        parity = self._parity
        if sample_ids:
            out = self.sampler(logits, md)
            token_ids, out_logprobs = out.token_ids, out.logprobs
            self.buffers.sampled_cpu[parity][:len(sample_ids)].copy_(token_ids,
                                                                     non_blocking=True)
            if self._on_gpu:
                done = torch.cuda.Event()
                done.record()
            self._parity ^= 1
        step = PendingStep(
            runner=self, order=order, sample_ids=sample_ids,
            sample_slots=batch.slots[batch.sample_rows],
            row_of={r: i for i, r in enumerate(sample_ids)}, token_ids=token_ids,
            logprobs=out_logprobs, prompt_logprobs=prompt_logprobs, parity=parity, done=done)
        self._in_flight = step if sample_ids else None
        return step

    def collect(self, step: PendingStep) -> ModelRunnerOutput:
        """Wait for ``step``'s sampled ids and apply them to the requests still alive (one
        finished or preempted since was dropped from the state; its sample is discarded)."""
        if self._in_flight is step:
            self._in_flight = None
        sampled: dict[str, list[int]] = {r: [] for r in step.order}
        logprobs: dict[str, list[Logprobs]] = {}
        num = len(step.sample_ids)
        if num:
            if step.done is not None:
                t_wait = time.perf_counter()
                step.done.synchronize()
                self.timing.wait_s += time.perf_counter() - t_wait
            ids = self.buffers.sampled_np[step.parity][:num].copy()
            slot_of = self.table.slot_of
            alive = [i for i, (r, s) in enumerate(zip(step.sample_ids, step.sample_slots.tolist()))
                     if slot_of.get(r) == s]
            if len(alive) < num:
                keep = np.asarray(alive, dtype=np.int64)
                self.table.append_tokens(step.sample_slots[keep], ids[keep])
            else:
                self.table.append_tokens(step.sample_slots, ids)
            requests = self.requests
            id_list = ids.tolist()
            for i in alive:
                req_id = step.sample_ids[i]
                requests[req_id].append_output(id_list[i])
                sampled[req_id] = [id_list[i]]
            if step.logprobs is not None:
                tensors = step.logprobs if len(alive) == num else _rows(step.logprobs, alive)
                self.record_logprobs([requests[step.sample_ids[i]] for i in alive], tensors,
                                     logprobs)
        return ModelRunnerOutput(sampled_token_ids=sampled, logprobs=logprobs,
                                 prompt_logprobs=step.prompt_logprobs)


def _rows(logprobs: Any, rows: list[int]) -> Any:
    """The sampler's logprobs tensors restricted to ``rows`` (same type, each field indexed)."""
    import dataclasses

    index = torch.as_tensor(rows, dtype=torch.long)
    return dataclasses.replace(logprobs, **{
        f.name: getattr(logprobs, f.name)[index.to(getattr(logprobs, f.name).device)]
        for f in dataclasses.fields(logprobs)})
