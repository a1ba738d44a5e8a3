"""``TpuModelRunner``: the core ModelRunner with every device input padded to a bucket.

XLA traces a step lazily and compiles one graph per distinct (shapes, ops) trace, so a step
must never expose a data-dependent shape to the device. Per step:

1. on the host (numpy, as in the core runner): order the batch decodes first, build token ids,
   positions and slots, then pad the token axis to ``T_b = buckets.token_bucket(T)`` and the
   request axis to ``R_b = buckets.request_bucket(R_sample)``; block tables always have
   ``pages_per_request = ceil(max_model_len / block_size)`` columns;
2. on the device: the model forward over ``T_b`` tokens (the attention backend writes the KV
   cache), the logits of ``R_b`` rows (``logits_indices`` padded with row 0), then one
   ``torch_xla.sync()``: the whole step is a single graph keyed by ``(T_b, R_b)``;
3. on the host: the logits come back and the core sampler runs on the CPU (sampling options
   never reach the graph, so they cannot multiply the graph count). Prompt logprobs, when
   asked for, score the hidden states on the host with a CPU copy of the output projection.

Invariant: the set of graphs is ``Buckets.graphs()``; ``compile_or_warm_up`` compiles all of
them up front (when ``precompile``), so serving never compiles.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from vllm_core.attention.backend import AttentionBackend, CommonAttentionMetadata
from vllm_core.config import EngineConfig
from vllm_core.messages import (
    EMPTY_MODEL_RUNNER_OUTPUT,
    Logprobs,
    ModelRunnerOutput,
    SchedulerOutput,
)
from vllm_core.logger import init_logger
from vllm_core.model_executor.layers.ops import LayerOps
from vllm_core.sampling.sampler import compute_prompt_logprobs
from vllm_core.worker.model_runner import ModelRunner
from vllm_core_tpu import runtime
from vllm_core_tpu.buckets import Buckets

logger = init_logger(__name__)

HOST = torch.device("cpu")


@dataclass(slots=True)
class PaddedBatch:
    """Host tensors of one step, padded to ``(num_tokens_padded, num_reqs_padded)``."""

    order: list[str]                   # request ids in batch order (decodes first)
    input_ids: torch.Tensor            # [T_b] long
    positions: torch.Tensor            # [T_b] long
    common: CommonAttentionMetadata    # host tensors, padded (see vllm_core_tpu.attention)
    sample_rows: list[int]             # batch rows that sample this step
    logits_indices: torch.Tensor       # [R_b] long (padding: 0)
    query_start_loc: np.ndarray        # [R + 1] real
    num_tokens: int
    num_tokens_padded: int
    num_reqs_padded: int


class TpuModelRunner(ModelRunner):
    """See the module docstring. ``buckets`` defaults to the config's limits."""

    def __init__(self, config: EngineConfig, device: torch.device,
                 attn_backend: type[AttentionBackend], ops: LayerOps | None = None,
                 buckets: Buckets | None = None) -> None:
        super().__init__(config, device, attn_backend, ops)
        sched = config.scheduler
        self.buckets = buckets or Buckets.for_limits(int(sched.max_num_batched_tokens or 512),
                                                     sched.max_num_seqs)
        max_len = int(config.model.max_model_len or sched.max_model_len)
        self.pages_per_request = -(-max_len // self.block_size)
        self.graphs_run: set[tuple[int, int]] = set()
        self.warmup_compiles = 0
        self.warmup_seconds = 0.0
        self._host_lm_weight: torch.Tensor | None = None

    # ------------------------------------------------------------------ state
    def _update_states(self, so: SchedulerOutput) -> None:
        """The core's bookkeeping; per-request generators live on the host, where sampling
        runs (the core makes them on ``self.device``)."""
        device, self.device = self.device, HOST
        try:
            super()._update_states(so)
        finally:
            self.device = device

    # ------------------------------------------------------------------ inputs
    def _pad_batch(self, order: list[str], num_sched: np.ndarray, num_computed: np.ndarray,
                   token_ids: np.ndarray, block_rows: list[list[int]], sample_rows: list[int]
                   ) -> PaddedBatch:
        """Pad one step to its buckets. ``block_rows[i]`` is request i's block table."""
        num_reqs = len(order)
        cu = np.cumsum(num_sched)
        qsl = np.concatenate([[0], cu]).astype(np.int64)
        total = int(cu[-1]) if num_reqs else 0
        t_pad = self.buckets.token_bucket(max(total, 1))
        r_pad = self.buckets.request_bucket(max(num_reqs, len(sample_rows), 1))
        positions = np.arange(total, dtype=np.int64) - np.repeat(qsl[:-1] - num_computed,
                                                                 num_sched)
        table = np.zeros((r_pad, self.pages_per_request), dtype=np.int64)
        for i, row in enumerate(block_rows):
            if len(row) > self.pages_per_request:
                raise ValueError(f"request {order[i]!r} holds {len(row)} blocks, more than "
                                 f"max_model_len allows ({self.pages_per_request})")
            table[i, :len(row)] = row
        req_index = np.repeat(np.arange(num_reqs), num_sched)
        slots = np.zeros(t_pad, dtype=np.int64)
        slots[:total] = (table[req_index, positions // self.block_size] * self.block_size
                         + positions % self.block_size)
        padded_qsl = np.full(r_pad + 1, total, dtype=np.int64)
        padded_qsl[:num_reqs + 1] = qsl
        seq_lens = np.zeros(r_pad, dtype=np.int64)
        seq_lens[:num_reqs] = num_computed + num_sched
        context = np.zeros(r_pad, dtype=np.int64)
        context[:num_reqs] = num_computed
        ids = np.zeros(t_pad, dtype=np.int64)
        ids[:total] = token_ids
        pos = np.zeros(t_pad, dtype=np.int64)
        pos[:total] = positions
        logits_idx = np.zeros(r_pad, dtype=np.int64)
        logits_idx[:len(sample_rows)] = cu[sample_rows] - 1 if sample_rows else []
        qsl_t, seq_t = torch.from_numpy(padded_qsl), torch.from_numpy(seq_lens)
        common = CommonAttentionMetadata(
            query_start_loc=qsl_t, seq_lens=seq_t, context_lens=torch.from_numpy(context),
            block_table=torch.from_numpy(table), slot_mapping=torch.from_numpy(slots),
            query_start_loc_cpu=qsl_t, seq_lens_cpu=seq_t, num_reqs=num_reqs,
            num_tokens=total,
            num_decodes=int(np.sum(num_sched == 1)) if num_reqs else 0,
            max_query_len=int(num_sched.max()) if num_reqs else 0,
            max_seq_len=int(seq_lens.max()), block_size=self.block_size)
        return PaddedBatch(order=order, input_ids=torch.from_numpy(ids),
                           positions=torch.from_numpy(pos), common=common,
                           sample_rows=sample_rows, logits_indices=torch.from_numpy(logits_idx),
                           query_start_loc=qsl, num_tokens=total, num_tokens_padded=t_pad,
                           num_reqs_padded=r_pad)

    def _prepare_padded(self, so: SchedulerOutput) -> PaddedBatch:
        sched = so.num_scheduled_tokens
        order = [r for r, n in sched.items() if n == 1] + [r for r, n in sched.items() if n > 1]
        states = [self.requests[r] for r in order]
        num_sched = np.fromiter((sched[r] for r in order), dtype=np.int64, count=len(order))
        num_computed = np.fromiter((s.num_computed_tokens for s in states), dtype=np.int64,
                                   count=len(order))
        token_ids = np.fromiter(
            itertools.chain.from_iterable(
                s.token_ids[c:c + n] for s, c, n in zip(states, num_computed.tolist(),
                                                         num_sched.tolist())),
            dtype=np.int64, count=int(num_sched.sum()))
        seq_after = num_computed + num_sched
        sample_rows = [i for i, s in enumerate(states) if seq_after[i] >= s.num_tokens]
        return self._pad_batch(order, num_sched, num_computed, token_ids,
                               [s.block_ids for s in states], sample_rows)

    # ------------------------------------------------------------------ device step
    def _run_graph(self, batch: PaddedBatch, kv_caches: list[torch.Tensor]
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """Trace and run the step graph of ``batch``'s buckets. Returns (hidden, logits) on
        the device, both materialised (the sync has run)."""
        dev = self.device
        attn_metadata = self.builder.build(batch.common)
        hidden = self.model(batch.input_ids.to(dev), batch.positions.to(dev), kv_caches,
                            attn_metadata)
        logits = self.model.compute_logits(hidden[batch.logits_indices.to(dev)])
        runtime.sync()
        self.graphs_run.add((batch.num_tokens_padded, batch.num_reqs_padded))
        return hidden, logits

    @torch.no_grad()
    def execute_model(self, so: SchedulerOutput) -> ModelRunnerOutput:
        self._update_states(so)
        if so.total_num_scheduled_tokens == 0:
            return EMPTY_MODEL_RUNNER_OUTPUT
        batch = self._prepare_padded(so)
        hidden, logits = self._run_graph(batch, self.kv_caches)
        prompt_logprobs = self._host_prompt_logprobs(batch, hidden)
        sampled: dict[str, list[int]] = {r: [] for r in batch.order}
        logprobs: dict[str, list[Logprobs]] = {}
        if batch.sample_rows:
            host_logits = logits.cpu()[: len(batch.sample_rows)]
            states = [self.requests[batch.order[i]] for i in batch.sample_rows]
            self.sample_into(states, host_logits, sampled, logprobs)
        return ModelRunnerOutput(sampled_token_ids=sampled, logprobs=logprobs,
                                 prompt_logprobs=prompt_logprobs)

    def _host_prompt_logprobs(self, batch: PaddedBatch, hidden: torch.Tensor
                              ) -> dict[str, list[Logprobs]]:
        wanted = [i for i, r in enumerate(batch.order)
                  if self.requests[r].sampling_params.prompt_logprobs is not None]
        if not wanted:
            return {}
        host_hidden = hidden.cpu()
        weight = self._lm_weight_on_host()
        result: dict[str, list[Logprobs]] = {}
        for i in wanted:
            state = self.requests[batch.order[i]]
            start = state.num_computed_tokens
            row0 = int(batch.query_start_loc[i])
            n = int(batch.query_start_loc[i + 1]) - row0
            last = min(start + n, len(state.prompt_token_ids) - 1)
            if last <= start:
                continue
            rows = host_hidden[row0: row0 + (last - start)]
            targets = torch.tensor(state.prompt_token_ids[start + 1: last + 1], dtype=torch.long)
            logits = F.linear(rows.float(), weight)
            lp = compute_prompt_logprobs(logits, targets, state.sampling_params.prompt_logprobs)
            result[state.req_id] = lp.to_logprobs_list()
        return result

    def _lm_weight_on_host(self) -> torch.Tensor:
        if self._host_lm_weight is None:
            model = self.model
            head = getattr(model, "lm_head", None)
            weight = head.weight if head is not None else model.model.embed_tokens.weight
            self._host_lm_weight = weight.detach().cpu().float()
        return self._host_lm_weight

    # ------------------------------------------------------------------ profiling / warm-up
    def dummy_batch(self, num_tokens_padded: int, num_reqs_padded: int) -> PaddedBatch:
        """A batch of exactly these bucket shapes: ``num_reqs_padded`` requests sharing the
        tokens, every one sampling (block tables all null, so the KV writes land in block 0)."""
        reqs = min(num_reqs_padded, num_tokens_padded)
        per = [num_tokens_padded // reqs] * reqs
        per[-1] += num_tokens_padded - sum(per)
        per = [min(p, self.pages_per_request * self.block_size) for p in per]
        num_sched = np.array(per, dtype=np.int64)
        batch = self._pad_batch([f"warmup-{i}" for i in range(reqs)], num_sched,
                                np.zeros(reqs, dtype=np.int64),
                                np.zeros(int(num_sched.sum()), dtype=np.int64),
                                [[] for _ in range(reqs)], list(range(reqs)))
        if (batch.num_tokens_padded, batch.num_reqs_padded) != (num_tokens_padded,
                                                                 num_reqs_padded):
            raise ValueError(f"cannot form a batch of buckets ({num_tokens_padded}, "
                             f"{num_reqs_padded}) under max_model_len")
        return batch

    @torch.no_grad()
    def profile_run(self) -> None:
        """The largest graph without a KV cache (activation peak), like the core's."""
        t, r = self.buckets.graphs()[-1]
        empty = [torch.empty(0, device=self.device)] * self.arch.num_hidden_layers
        self._run_graph(self.dummy_batch(t, r), empty)

    @torch.no_grad()
    def compile_or_warm_up(self, precompile: bool = True) -> int:
        """Run every bucket graph once over the allocated KV cache (compiling each), and log
        the bucket list and the compile count. Returns the compiles this warm-up caused."""
        start_compiles = runtime.compile_count()
        start = time.perf_counter()
        if precompile:
            for t, r in self.buckets.graphs():
                self._run_graph(self.dummy_batch(t, r), self.kv_caches)
            runtime.wait_device_ops()
        self.warmup_compiles = runtime.compile_count() - start_compiles
        self.warmup_seconds = time.perf_counter() - start
        logger.info("TPU runner on %s: %s; warm-up %s %d graph(s) in %.1f s (XLA compiles so "
                    "far: %d)", runtime.pjrt_device_type() or "XLA", self.buckets.describe(),
                    "compiled" if precompile else "skipped (precompile off):",
                    self.warmup_compiles, self.warmup_seconds, runtime.compile_count())
        return self.warmup_compiles
