"""The model runner every platform uses: persistent request state -> one step plan -> padded
device inputs -> model -> sampler, with an async step pipeline.

Per step (``execute_model_async``): apply the scheduler's deltas to the ``RequestTable`` and
the per-request sampling state; lay the step out once (``plan_step``: decodes first, positions,
slot mapping, logits rows from ``SchedulerOutput.sampling_req_ids``); stage it in the host
buffers, let the platform pad it, upload it, feed the tokens a step in flight is still
sampling (on the device); build (or reuse) the sampling metadata *before* launching the
forward, so its small copies never wait for the device; run the forward (eager or a replayed
graph), sample on the device, and copy the sampled ids into a pinned buffer. The returned
``PendingStep`` is collected later (``result()``): the engine schedules and launches step
N+1 before it collects step N (async scheduling). ``execute_model`` does both at once. A step
launched with ``SchedulerOutput.defer_sampling`` stops after the forward (returns None) and
``sample_tokens`` finishes it once the engine has attached the grammar bitmask (two-phase step).

Platform hooks (API 2.0, the only methods a plugin overrides; see
``docs/plugin-author-guide.md``):

``pin_memory``            class attribute: stage inputs in pinned host memory (accelerators).
``sampling_device``       where logits are sampled and per-request generators live.
``new_step_event()``      an event recorded after a step's uploads / sampled-id copy, or None
                          on a device that is synchronous with the host.
``padded_shape(plan)``    the padded ``StepShape`` a step runs at (a graph's, a bucket's), or
                          None to run it as it is.
``pad_inputs(plan, s)``   fill the staging rows past the real batch up to the padded shape.
``upload_inputs(...)``    move the staged inputs to the device; returns the ``StepInputs``.
``run_forward(...)``      hidden states and the logits of the logits rows (eager or replay).
``capture_graphs()``      capture graphs for the padded sizes; returns seconds.
``native_bitmask_kernel`` class attribute: xgrammar's kernel masks this device's logits.

The worker calls the runner inside ``Platform.inference_mode()``. Invariants: at most one step
is in flight; a request's host tokens lag its sampled tokens by at
most the step in flight; a finished or preempted request's late sample is discarded. Under
pipeline micro-batching (``ids_from_scheduler``) several steps are in flight on the stages, but
with disjoint requests; only the sampling rank holds the sampled ids of a step, the other ranks
take them from the next ``SchedulerOutput`` that schedules the request.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from vllm_core.attention.backend import AttentionBackend, CommonAttentionMetadata
from vllm_core.config import EngineConfig
from vllm_core.devices import HOST
from vllm_core.distributed.parallel_context import ParallelContext, single_rank_context
from vllm_core.logger import init_logger
from vllm_core.messages import (
    EMPTY_MODEL_RUNNER_OUTPUT,
    Logprobs,
    ModelRunnerOutput,
    SchedulerOutput,
)
from vllm_core.model_executor.layers.fused_moe.load_stats import ExpertLoadTracker
from vllm_core.model_executor.layers.parallel_linear import kv_heads_per_rank
from vllm_core.model_executor.models.interface import IntermediateTensors
from vllm_core.sampling.metadata import (
    RequestSamplingState,
    SamplingMetadata,
    build_sampling_metadata,
    make_generator,
)
from vllm_core.sampling.sampler import Sampler, compute_prompt_logprobs
from vllm_core.sampling.structured import BitmaskStaging, apply_grammar_bitmask
from vllm_core.spec_decode import verifier
from vllm_core.structured_output.backend import bitmask_width
from vllm_core.worker.mm_inputs import MultiModalStepInputs
from vllm_core.worker.request_state import CachedRequestState
from vllm_core.worker.request_table import RequestTable
from vllm_core.worker.runner_stats import KVWasteStats, StepTiming
from vllm_core.worker.step_buffers import StepBuffers
from vllm_core.worker.step_plan import StepPlan, plan_for_lengths, plan_step
from vllm_core.worker.worker_base import PendingOutput, ReadyOutput

logger = init_logger(__name__)


@dataclass(slots=True, frozen=True)
class StepShape:
    """The padded size of a step: token rows, request rows and logits rows. ``max_query_len``
    1: a padded decode batch (``StepBuffers.pad_decode_batch``); q > 1: a padded verification
    batch whose every token is a logits row, ``num_reqs - 1`` requests of at most q tokens
    plus the one that takes the remaining padding tokens (``StepBuffers.pad_token_batch``)."""

    num_tokens: int
    num_reqs: int
    num_logits: int
    max_query_len: int = 1


@dataclass(slots=True)
class StepInputs:
    """Device inputs of one step, ``num_tokens`` rows (the padded count when padded).

    ``inputs_embeds`` [T, H], when set, replaces the embedding of ``input_ids`` (multimodal
    inputs: encoder outputs at their placeholder tokens, ``worker/mm_inputs.py``); then
    ``positions`` may be ``[3, T]`` (M-RoPE)."""

    input_ids: torch.Tensor
    positions: torch.Tensor
    logits_indices: torch.Tensor
    common: CommonAttentionMetadata
    inputs_embeds: torch.Tensor | None = None
    intermediate: IntermediateTensors | None = None   # from the previous pipeline stage


@dataclass(slots=True)
class ForwardOutput:
    """``hidden`` [T, H] (None when a graph replay keeps it internal; ``IntermediateTensors``
    on a pipeline stage other than the last); ``logits`` float32 [>= L, V] whose first ``L``
    rows are the plan's logits rows (None when ``L == 0``, and on every rank but the TP rank 0
    of the last stage)."""

    hidden: torch.Tensor | IntermediateTensors | None
    logits: torch.Tensor | None


@dataclass(slots=True, eq=False)
class PendingStep:
    """A launched step: what ``ModelRunner.collect`` needs to turn it into an output."""

    runner: ModelRunner
    order: list[str]
    sample_ids: list[str]
    sample_slots: np.ndarray         # RequestTable slot of each sampling row
    row_of: dict[str, int]           # request id -> row of ``token_ids``
    token_ids: torch.Tensor | None   # sampled ids (sampling device)
    logprobs: Any                    # the sampler's LogprobsTensors, or None
    prompt_logprobs: dict[str, list[Logprobs]]
    parity: int                      # which pinned buffer receives the ids
    done: Any                        # event recorded after the ids' copy, or None
    output: ModelRunnerOutput | None = None
    expert_load: torch.Tensor | None = None   # MoE load snapshot (host), valid after ``done``
    row_start: np.ndarray | None = None  # verification step: first row of each row's request

    def result(self) -> ModelRunnerOutput:
        if self.output is None:
            self.output = self.runner.collect(self)
        return self.output


@dataclass(slots=True, eq=False)
class _Forwarded:
    """A step whose forward ran (or is queued on the device) and that has not sampled yet:
    what ``ModelRunner._sample`` needs. ``samples``: this rank samples (``logits`` set)."""

    plan: StepPlan
    sample_ids: list[str]
    samples: bool
    metadata: SamplingMetadata | None
    logits: torch.Tensor | None
    prompt_logprobs: dict[str, list[Logprobs]]
    drafts: dict[str, list[int]]                 # speculative decoding: this step's drafts
    row_start: np.ndarray | None                 # verification step: see ``PendingStep``
    draft_probs: torch.Tensor | None = None      # worker proposer's q rows [L, V], or None


@dataclass(slots=True)
class _SamplingCache:
    """The last step's sampling metadata, reused while the rows are the same requests in the
    same order and none of them has output-dependent sampling."""

    key: tuple[str, ...] | None = None
    metadata: SamplingMetadata | None = None
    dynamic: set[str] = field(default_factory=set)   # penalties / min_tokens / bad words


class ModelRunner:
    """Owns the model, the KV cache tensors and the worker-side request state.

    ``device`` is the torch device; ``attn_backend`` the selected backend class; ``ops`` the
    platform's LayerOps (None: the core's torch ops); ``parallel`` this rank's
    ``ParallelContext`` (None: one rank). Every rank of a TP x PP grid runs the same plan from
    the same ``SchedulerOutput``: the first stage embeds, a later stage receives the previous
    stage's ``IntermediateTensors`` (``recv_intermediate``), a stage other than the last sends
    its own on; the sampling rank (last stage, TP rank 0) samples and broadcasts the ids to
    every rank, so every request table holds the same tokens. ``config.graph_batch_sizes`` are the
    decode batch sizes to capture, honoured only when the backend declares
    ``supports_graph_capture`` and the platform implements ``capture_graphs``.
    """

    pin_memory: ClassVar[bool] = False
    pad_slot: ClassVar[int] = -1          # KV slot of padding tokens (-1: not written)
    # the sampling device's logits are ones xgrammar's in-place bitmask kernel serves (it
    # serves host memory always); otherwise a vectorised torch fallback masks them
    native_bitmask_kernel: ClassVar[bool] = False

    def __init__(self, config: EngineConfig, device: torch.device,
                 attn_backend: type[AttentionBackend], ops: Any | None = None,
                 parallel: ParallelContext | None = None) -> None:
        self.config = config
        self.parallel = parallel or single_rank_context()
        self.device = device
        self.attn_backend = attn_backend
        self.ops = ops
        arch = config.model.arch
        if arch is None:
            raise ValueError("ModelConfig.arch must be resolved before building the runner")
        self.arch = arch
        start, end = self.parallel.layer_range(arch.num_hidden_layers)
        self.num_local_layers = end - start
        self.local_kv_heads = kv_heads_per_rank(arch.num_attention_heads,
                                                arch.num_key_value_heads, self.parallel.tp_size)
        self.block_size = int(config.cache.block_size or attn_backend.preferred_block_size)
        self.dtype: torch.dtype = getattr(torch, config.model.dtype)
        self.model: torch.nn.Module | None = None
        self.expert_load: ExpertLoadTracker | None = None      # MoE models: per-step load
        self.lora: Any = None                 # LoRAManager when config.lora is set
        self.mm: MultiModalStepInputs | None = None   # models that accept images
        self.proposer: Any = None             # WorkerProposer (draft model / EAGLE), if any
        self.kv_caches: list[torch.Tensor] = []
        self.sampler = Sampler()
        self.builder = attn_backend.get_builder_cls()(self.block_size, device)
        sched = config.scheduler
        max_model_len = int(config.model.max_model_len)
        self.max_blocks_per_req = -(-max_model_len // self.block_size)
        sizes = sorted(set(config.graph_batch_sizes))
        if sizes and not attn_backend.supports_graph_capture:
            logger.info("graphs off: attention backend %r does not support graph capture",
                        attn_backend.name)
            sizes = []
        self.graph_sizes: list[int] = sizes
        max_graph = sizes[-1] if sizes else 0
        self.max_num_tokens = max(int(sched.max_num_batched_tokens or 2048), max_graph)
        self.max_num_reqs = max(int(sched.max_num_seqs), max_graph)
        self.requests: dict[str, CachedRequestState] = {}
        self.table = RequestTable(int(sched.max_num_seqs), max_model_len,
                                  self.max_blocks_per_req)
        # one spare request row: a padded verification batch's padding request (pad_inputs)
        self.buffers = StepBuffers(self.max_num_tokens, self.max_num_reqs + 1,
                                   self.max_blocks_per_req, device, self.pin_memory,
                                   attn_backend.block_table_dtype)
        self._sampling = _SamplingCache()
        self._prompt_logprob_reqs: set[str] = set()
        self._upload_done = self.new_step_event()
        self._upload_recorded = False
        self._in_flight: PendingStep | None = None
        self._forwarded: _Forwarded | None = None     # a step launched with defer_sampling
        self._bitmask_staging = BitmaskStaging(bitmask_width(arch.vocab_size),
                                               self.max_num_reqs, self.pin_memory)
        self._parity = 0
        self.kv_waste = KVWasteStats()
        self.timing = StepTiming()
        self.num_graph_steps = 0
        self.num_eager_steps = 0
        self.num_fed_rows = 0                 # inputs taken from a step in flight
        # pipeline micro-batching: the scheduler sends every rank the tokens its requests
        # sampled (CachedRequestData.new_token_ids) instead of a broadcast after each step
        self.ids_from_scheduler = config.parallel.max_concurrent_batches > 1

    # ================================================================ platform hooks
    @property
    def sampling_device(self) -> torch.device:
        """Hook: where the sampler runs and seeded generators live (default: the device)."""
        return self.device

    def new_step_event(self) -> Any | None:
        """Hook: an object with ``record()`` and ``synchronize()`` (and optionally ``query()``:
        completed yet?) marking device progress, or None when device work is finished when the
        host call returns (the default)."""
        return None

    def padded_shape(self, plan: StepPlan) -> StepShape | None:
        """Hook: the padded shape this step runs at (e.g. a captured graph's batch size, a
        compiled bucket), or None to run it unpadded (the default)."""
        return None

    def pad_inputs(self, plan: StepPlan, shape: StepShape) -> None:
        """Hook: fill the staging rows past the real batch (tokens, requests and logits rows)
        up to ``shape``. Default: padding decodes (see ``StepBuffers.pad_decode_batch``), valid
        for a decode-only step whose every request samples, padded to equal counts; with
        ``shape.max_query_len > 1`` a verification batch (``StepBuffers.pad_token_batch``)."""
        if shape.max_query_len > 1:
            self.buffers.pad_token_batch(plan.num_reqs, plan.num_tokens, shape.num_reqs - 1,
                                         shape.num_tokens, self.pad_slot)
        else:
            self.buffers.pad_decode_batch(plan.num_reqs, shape.num_reqs, self.pad_slot)

    def upload_inputs(self, plan: StepPlan, shape: StepShape | None) -> StepInputs:
        """Hook: move the staged step to the device and describe it. Default: non-blocking
        copies into the persistent device buffers, views of them in the result."""
        b = self.buffers
        if shape is None:
            shape = StepShape(plan.num_tokens, plan.num_reqs, len(plan.logits_indices))
            padded = False
        else:
            padded = True
        t, n, num_logits = shape.num_tokens, shape.num_reqs, shape.num_logits
        b.upload(t, n, num_logits)
        if not padded:
            qsl_cpu = torch.from_numpy(plan.query_start_loc)
            seq_cpu = torch.from_numpy(plan.seq_lens)
            num_decodes = plan.num_decodes
            max_query_len = int(plan.num_scheduled.max())
            max_seq_len = int(plan.seq_lens.max())
        else:
            qsl_cpu, seq_cpu = b.query_start_loc_cpu[:n + 1], b.seq_lens_cpu[:n]
            num_decodes, max_query_len = n, 1
            if shape.max_query_len > 1:        # a padded verification batch
                num_decodes = 0
                max_query_len = int(np.diff(b.query_start_loc_np[:n + 1]).max())
            max_seq_len = int(b.seq_lens_np[:n].max())
        common = CommonAttentionMetadata(
            query_start_loc=b.query_start_loc[:n + 1], seq_lens=b.seq_lens[:n],
            context_lens=b.context_lens[:n], block_table=b.block_table[:n],
            slot_mapping=b.slot_mapping[:t], query_start_loc_cpu=qsl_cpu, seq_lens_cpu=seq_cpu,
            num_reqs=n, num_tokens=t, num_decodes=num_decodes, max_query_len=max_query_len,
            max_seq_len=max_seq_len, block_size=self.block_size)
        return StepInputs(input_ids=b.input_ids[:t], positions=b.positions[:t],
                          logits_indices=b.logits_indices[:num_logits], common=common)

    def run_forward(self, plan: StepPlan, inputs: StepInputs,
                    shape: StepShape | None) -> ForwardOutput:
        """Hook: the model forward over ``inputs`` and the logits of the logits rows. Default:
        eager, attention metadata built from ``inputs.common``."""
        attn_metadata = self.builder.build(inputs.common)
        extra = {} if inputs.intermediate is None else {"intermediate": inputs.intermediate}
        if inputs.inputs_embeds is not None:
            extra["inputs_embeds"] = inputs.inputs_embeds
        hidden = self.model(inputs.input_ids, inputs.positions, self.kv_caches, attn_metadata,
                            **extra)
        logits = None
        if len(plan.logits_indices) and self.parallel.is_last_stage:
            logits = self.model.compute_logits(hidden[inputs.logits_indices])
        return ForwardOutput(hidden=hidden, logits=logits)

    def capture_graphs(self) -> float:
        """Hook: capture graphs for ``graph_sizes`` after the KV cache exists; returns the
        seconds it took. Default: nothing to capture."""
        return 0.0

    # ================================================================ parallel plumbing
    def recv_intermediate(self, num_tokens: int) -> IntermediateTensors:
        """The previous pipeline stage's hidden states and residual for ``num_tokens`` rows."""
        pp = self.parallel.pp
        shape = (num_tokens, self.arch.hidden_size)
        src = pp.rank - 1
        hidden = pp.recv(shape, self.dtype, self.device, src)
        residual = pp.recv(shape, self.dtype, self.device, src)
        return IntermediateTensors(hidden, residual)

    def send_intermediate(self, tensors: IntermediateTensors) -> None:
        """Hand this stage's output to the next stage (same row count as the step)."""
        pp = self.parallel.pp
        pp.send(tensors.hidden, pp.rank + 1)
        pp.send(tensors.residual, pp.rank + 1)

    def share_sampled_ids(self, token_ids: torch.Tensor | None, num: int) -> torch.Tensor:
        """Broadcast the sampling rank's ids (int64, ``num`` rows) to every rank."""
        par = self.parallel
        if token_ids is None:
            token_ids = torch.empty(num, dtype=torch.int64, device=self.sampling_device)
        else:
            token_ids = token_ids.to(torch.int64)
        return par.world.broadcast(token_ids, src=par.sampling_rank)

    # ================================================================ model and cache
    def load_model(self) -> None:
        from vllm_core.model_executor.loader import get_model

        self.model = get_model(self.config.model, self.attn_backend, self.device, self.ops,
                               self.parallel)
        self.expert_load = ExpertLoadTracker.for_model(self.model, self.pin_memory)
        self.mm = MultiModalStepInputs.for_model(self.model, self.device, self.dtype,
                                                 self.parallel.is_first_stage)
        if self.config.lora is not None:
            from vllm_core.lora.worker import lora_manager_for_runner

            self.lora = lora_manager_for_runner(self)
        from vllm_core.spec_decode.worker_proposer import make_worker_proposer

        self.proposer = make_worker_proposer(self)

    @property
    def kv_cache_dtype(self) -> torch.dtype:
        from vllm_core.attention.kv_cache_dtype import kv_cache_torch_dtype

        return kv_cache_torch_dtype(self.config.cache.kv_cache_dtype, self.dtype)

    def kv_cache_bytes_per_block(self) -> int:
        shape = self.attn_backend.get_kv_cache_shape(1, self.block_size, self.local_kv_heads,
                                                     self.arch.head_dim)
        per_layer = int(np.prod(shape)) * torch.empty((), dtype=self.kv_cache_dtype).element_size()
        draft = self.proposer.kv_cache_bytes_per_block() if self.proposer is not None else 0
        return per_layer * self.num_local_layers + draft

    def initialize_cache(self, num_blocks: int) -> None:
        if self.proposer is not None:
            self.proposer.initialize_cache(num_blocks)
        shape = self.attn_backend.get_kv_cache_shape(num_blocks, self.block_size,
                                                     self.local_kv_heads, self.arch.head_dim)
        self.kv_caches = [torch.zeros(shape, dtype=self.kv_cache_dtype, device=self.device)
                          for _ in range(self.num_local_layers)]

    def profile_run(self) -> None:
        """The activation peak: a forward of ``max_num_batched_tokens`` tokens spread over
        ``max_num_seqs`` requests with no KV cache, then the sampler's worst case on
        ``max_num_seqs`` rows (random sampling with top-p over the full vocabulary, i.e. a full
        sort, and logprobs)."""
        sched = self.config.scheduler
        num_tokens = int(sched.max_num_batched_tokens or 2048)
        num_reqs = max(1, min(sched.max_num_seqs, num_tokens))
        per_req = [num_tokens // num_reqs] * num_reqs
        per_req[-1] += num_tokens - sum(per_req)
        per_req = [p for p in per_req if p > 0]
        table = np.zeros((len(per_req), -(-max(per_req) // self.block_size)), dtype=np.int64)
        plan = plan_for_lengths([0] * len(per_req), per_req, table, self.block_size)
        host = plan.host_metadata(table, self.block_size)
        dev = self.device
        common = dataclasses.replace(host, **{f: getattr(host, f).to(dev) for f in (
            "query_start_loc", "seq_lens", "context_lens", "slot_mapping")},
            block_table=host.block_table.to(dev, self.attn_backend.block_table_dtype))
        input_ids = torch.zeros(num_tokens, dtype=torch.long, device=dev)
        empty = [torch.empty(0, device=dev)] * self.num_local_layers
        extra = {}
        if not self.parallel.is_first_stage:
            zeros = torch.zeros(num_tokens, self.arch.hidden_size, dtype=self.dtype, device=dev)
            extra["intermediate"] = IntermediateTensors(zeros, zeros.clone())
        hidden = self.model(input_ids, torch.from_numpy(plan.positions).to(dev), empty,
                            self.builder.build(common), **extra)
        if not self.parallel.is_last_stage:
            return
        rows = len(per_req)
        logits = self.model.compute_logits(hidden[:rows])
        if logits is None:             # a TP rank that does not sample
            return
        logits = logits.float()
        sdev = self.sampling_device
        md = SamplingMetadata(
            temperature=torch.full((rows,), 0.7, device=sdev),
            greedy_mask=torch.zeros(rows, dtype=torch.bool, device=sdev),
            all_greedy=False, all_random=True, top_p=torch.full((rows,), 0.9, device=sdev),
            min_p=torch.full((rows,), 0.05, device=sdev),
            max_num_logprobs=min(self.config.model.max_logprobs, self.arch.vocab_size) or None)
        self.sampler(logits.to(sdev), md)

    # ================================================================ state updates
    def update_states(self, so: SchedulerOutput) -> None:
        """Apply the step's deltas: drop finished requests, add new (or resumed) ones, extend
        block tables and computed counts."""
        table, requests = self.table, self.requests
        for req_id in so.finished_req_ids:
            requests.pop(req_id, None)
            table.remove(req_id)
            self._sampling.dynamic.discard(req_id)
            self._prompt_logprob_reqs.discard(req_id)
        sdev = self.sampling_device
        for new in so.scheduled_new_reqs:
            params = new.sampling_params
            prompt = list(new.prompt_token_ids)
            outputs = list(new.output_token_ids)
            generator = (make_generator(params.seed, sdev)
                         if params.seed is not None and not params.is_greedy else None)
            state = CachedRequestState(
                req_id=new.req_id, prompt_token_ids=prompt, output_token_ids=outputs,
                sampling_params=params, generator=generator,
                sampling_state=RequestSamplingState(params, prompt, outputs, generator))
            requests[new.req_id] = state
            table.add(new.req_id, prompt + outputs, new.block_ids, new.num_computed_tokens,
                      new.lora_id)
            if (params.repetition_penalty != 1.0 or params.presence_penalty
                    or params.frequency_penalty or params.min_tokens
                    or params.bad_words_token_ids):
                self._sampling.dynamic.add(new.req_id)
            if params.prompt_logprobs is not None:
                self._prompt_logprob_reqs.add(new.req_id)
        slot_of = table.slot_of
        for cached in so.scheduled_cached_reqs:
            slot = slot_of[cached.req_id]
            if cached.new_block_ids:
                table.extend_blocks(slot, cached.new_block_ids)
            table.num_computed[slot] = cached.num_computed_tokens
            if cached.new_token_ids:
                self._append_known_tokens(slot, cached)
        if self.mm is not None:
            self.mm.update(so)

    def _append_known_tokens(self, slot: int, cached: Any) -> None:
        """Pipeline micro-batching: append the scheduler's tokens of a request (output tokens
        from ``max(num_computed_tokens, len(prompt))`` on) that this rank does not hold yet:
        every token on a rank that did not sample it, none on the sampling rank (it appended
        its own sample when it collected the step)."""
        state = self.requests[cached.req_id]
        start = max(cached.num_computed_tokens, len(state.prompt_token_ids))
        skip = int(self.table.num_tokens[slot]) - start
        if skip < 0:
            raise RuntimeError(f"request {cached.req_id!r}: this rank holds "
                               f"{start + skip} tokens, the scheduler's new tokens start at "
                               f"{start}")
        new = cached.new_token_ids[skip:]
        if new:
            self.table.append_run(slot, np.asarray(new, dtype=np.int64))
            for token in new:
                state.append_output(token)

    # ================================================================ the step
    def execute_model(self, so: SchedulerOutput) -> ModelRunnerOutput:
        return self.execute_model_async(so).result()

    def execute_model_async(self, so: SchedulerOutput) -> PendingOutput | None:
        """Launch the step; None when ``so.defer_sampling`` (then ``sample_tokens``)."""
        start = time.perf_counter()
        try:
            return self._launch(so)
        finally:
            self.timing.steps += 1
            self.timing.execute_s += time.perf_counter() - start

    def _launch(self, so: SchedulerOutput) -> PendingOutput | None:
        self.update_states(so)
        if self.proposer is not None:
            self.proposer.update_states(so)
        if so.total_num_scheduled_tokens == 0:
            return ReadyOutput(EMPTY_MODEL_RUNNER_OUTPUT)
        prev = self._in_flight
        dynamic = self._sampling.dynamic
        drafts = so.scheduled_spec_decode_tokens
        if prev is not None and (drafts or prev.row_start is not None or dynamic and any(
                r in prev.row_of for r in dynamic.intersection(so.num_scheduled_tokens))):
            prev.result()        # their sampling metadata needs the token in flight on the host
        draft_probs = None
        if drafts and self.proposer is not None:     # worker-side drafts replace the slots
            drafts, draft_probs = self.proposer.propose(
                self, {r: len(ids) for r, ids in drafts.items()})
        plan = plan_step(so, self.table, self.block_size,
                         verifier.stage_drafts(self.table, drafts) if drafts else None)
        shape = self.padded_shape(plan)
        if shape is not None and self.mm is not None and self.mm.computes_images(plan):
            shape = None                      # image tokens need embeddings: run eager
        inputs = self._stage(plan, shape)
        if self.mm is not None:               # encoder runs, input embeddings, M-RoPE
            self.mm.prepare(plan, so, inputs)
        sample_ids = plan.sampling_ids()
        par = self.parallel
        samples = bool(sample_ids) and par.is_sampling_rank
        starts = verifier.row_starts(sample_ids) if drafts else None
        md = q_rows = None
        if samples:
            md = (verifier.verify_metadata(self, sample_ids, starts, drafts) if drafts
                  else self._sampling_metadata(sample_ids))
            if draft_probs:
                q_rows = verifier.draft_prob_rows(sample_ids, starts, draft_probs,
                                                  self.arch.vocab_size, self.sampling_device)
        if not par.is_first_stage:
            inputs.intermediate = self.recv_intermediate(inputs.input_ids.shape[0])
        out = self.run_forward(plan, inputs, shape)
        if not par.is_last_stage:
            self.send_intermediate(out.hidden)
        if self.proposer is not None:
            self.proposer.observe_forward(self, plan, out.hidden)
        if shape is None:
            self.num_eager_steps += 1
        else:
            self.num_graph_steps += 1

        prompt_logprobs: dict[str, list[Logprobs]] = {}
        if (out.hidden is not None and self._prompt_logprob_reqs and par.is_last_stage):
            prompt_logprobs = self.prompt_logprobs(plan, out.hidden)
        forwarded = _Forwarded(plan, sample_ids, samples, md, out.logits, prompt_logprobs,
                               drafts, starts, q_rows)
        if so.defer_sampling:                 # the engine builds the bitmask meanwhile
            self._forwarded = forwarded
            return None
        return self._sample(forwarded, so)

    def sample_tokens(self, so: SchedulerOutput) -> PendingOutput:
        """Second phase of a step launched with ``so.defer_sampling``: mask the logits with
        ``so.grammar_bitmask`` (attached since the launch) and sample. Returns the step's
        ``PendingStep``, as ``execute_model_async`` does for an undeferred step."""
        forwarded, self._forwarded = self._forwarded, None
        if forwarded is None:
            raise RuntimeError("sample_tokens without a step launched with defer_sampling")
        start = time.perf_counter()
        try:
            return self._sample(forwarded, so)
        finally:
            self.timing.execute_s += time.perf_counter() - start

    def _sample(self, fwd: _Forwarded, so: SchedulerOutput) -> PendingStep:
        """Mask (structured outputs), sample and start the sampled ids' copy to the host."""
        plan, sample_ids, par = fwd.plan, fwd.sample_ids, self.parallel
        drafts, starts = fwd.drafts, fwd.row_start
        token_ids = logprobs = done = expert_load = None
        parity = self._parity
        if sample_ids:
            if fwd.samples:
                logits = fwd.logits[:len(sample_ids)].to(self.sampling_device)
                if so.grammar_bitmask is not None:      # structured outputs, before sampling
                    apply_grammar_bitmask(logits, sample_ids, so,
                                          native=self.native_bitmask_kernel
                                          or self.sampling_device == HOST,
                                          staging=self._bitmask_staging)
                md = fwd.metadata
                sampled = (verifier.sample(logits, md, verifier.draft_row_ids(
                    sample_ids, starts, drafts), starts, fwd.draft_probs)
                           if drafts else self.sampler(logits, md))
                token_ids, logprobs = sampled.token_ids, sampled.logprobs
            if par.world_size > 1 and not self.ids_from_scheduler:
                token_ids = self.share_sampled_ids(token_ids, len(sample_ids))
            if token_ids is not None:         # None: a rank that gets them from the scheduler
                self.buffers.sampled_cpu[parity][:len(sample_ids)].copy_(token_ids,
                                                                         non_blocking=True)
            expert_load = self.expert_load.snapshot() if self.expert_load else None
            done = self.new_step_event()
            if done is not None:
                done.record()
            self._parity ^= 1
        step = PendingStep(
            runner=self, order=plan.order, sample_ids=sample_ids,
            sample_slots=plan.slots[plan.logits_request],
            row_of={r: i for i, r in enumerate(sample_ids)}, token_ids=token_ids,
            logprobs=logprobs, prompt_logprobs=fwd.prompt_logprobs, parity=parity, done=done,
            expert_load=expert_load, row_start=starts)
        self._in_flight = step if sample_ids and token_ids is not None else None
        return step

    def _stage(self, plan: StepPlan, shape: StepShape | None) -> StepInputs:
        """Stage, pad, upload and feed the step's inputs; returns the device inputs."""
        b = self.buffers
        if self._upload_recorded:            # staging memory still being read by the device?
            self._upload_done.synchronize()
        b.stage(plan, self.table)
        if self.mm is not None:
            self.mm.stage_positions(plan, b.positions_np)
        if self.lora is not None:            # per-token adapter slots (inside the upload window)
            self.lora.prepare_step(plan.token_lora_ids(self.table),
                                   shape.num_tokens if shape is not None else None)
        if shape is not None:
            self.pad_inputs(plan, shape)
        inputs = self.upload_inputs(plan, shape)
        self._feed_in_flight_tokens(plan)
        if self._upload_done is not None:
            self._upload_done.record()
            self._upload_recorded = True
        if plan.is_decode_only:
            self.kv_waste.record(int(self.table.num_blocks[plan.slots].sum()) * self.block_size,
                                 int(plan.seq_lens.sum()))
        return inputs

    def _feed_in_flight_tokens(self, plan: StepPlan) -> None:
        """Rows whose input is the token the step in flight is sampling read it on the device
        (its position is the request's last, not yet on the host)."""
        prev = self._in_flight
        if prev is None:
            return
        row_of = prev.row_of
        src = [row_of.get(r, -1) for r in plan.order]
        rows = [i for i, s in enumerate(src) if s >= 0]
        if not rows:
            return
        b = self.buffers
        m = len(rows)
        b.feed_src_np[:m] = [src[i] for i in rows]
        b.feed_dst_np[:m] = plan.query_start_loc[1:][rows] - 1    # each such row's last token
        b.feed_from(prev.token_ids, m)
        self.num_fed_rows += m

    @property
    def dynamic_sampling_reqs(self) -> set[str]:
        """Ids of the live requests whose sampling depends on their outputs (penalties,
        min_tokens, bad words): their metadata is rebuilt every step (read-only view)."""
        return self._sampling.dynamic

    def _sampling_metadata(self, req_ids: list[str]) -> SamplingMetadata:
        """Build, or reuse the previous step's when the rows are the same requests in the same
        order and none of them has output-dependent sampling."""
        cache = self._sampling
        key = tuple(req_ids)
        if cache.metadata is not None and key == cache.key and not cache.dynamic.intersection(key):
            return cache.metadata
        states = [self.requests[r].sampling_state for r in req_ids]
        md = build_sampling_metadata(states, self.arch.vocab_size, self.sampling_device,
                                     self.pin_memory)
        cache.key, cache.metadata = key, md
        return md

    def collect(self, step: PendingStep) -> ModelRunnerOutput:
        """Wait for ``step``'s sampled ids and apply them to the requests still alive (one
        finished or preempted since was dropped from the state; its sample is discarded)."""
        if self._in_flight is step:
            self._in_flight = None
        if step.row_start is not None:
            return verifier.collect_verified(self, step)
        sampled: dict[str, list[int]] = {r: [] for r in step.order}
        logprobs: dict[str, list[Logprobs]] = {}
        num = len(step.sample_ids) if step.token_ids is not None else 0
        if num:
            if step.done is not None:
                t_wait = time.perf_counter()
                step.done.synchronize()
                self.timing.wait_s += time.perf_counter() - t_wait
            ids = self.buffers.sampled_np[step.parity][:num].copy()
            slot_of = self.table.slot_of
            alive = [i for i, (r, s) in enumerate(zip(step.sample_ids, step.sample_slots.tolist()))
                     if slot_of.get(r) == s]
            keep = np.asarray(alive, dtype=np.int64)
            self.table.append_tokens(step.sample_slots[keep], ids[keep])
            requests = self.requests
            id_list = ids.tolist()
            for i in alive:
                req_id = step.sample_ids[i]
                requests[req_id].append_output(id_list[i])
                sampled[req_id] = [id_list[i]]
            if step.logprobs is not None and alive:
                tensors = step.logprobs if len(alive) == num else _rows(step.logprobs, alive)
                self.record_logprobs([requests[step.sample_ids[i]] for i in alive], tensors,
                                     logprobs)
        return ModelRunnerOutput(
            sampled_token_ids=sampled, logprobs=logprobs, prompt_logprobs=step.prompt_logprobs,
            expert_load=None if step.expert_load is None else step.expert_load.tolist())

    @staticmethod
    def record_logprobs(states: list[CachedRequestState], tensors: Any,
                        logprobs: dict[str, list[Logprobs]]) -> None:
        """Host ``Logprobs`` of each sampled row, kept for the requests that asked for them."""
        rows = tensors.to_logprobs_list([s.sampling_params.logprobs for s in states])
        for state, row in zip(states, rows):
            if state.sampling_params.logprobs is not None:
                logprobs[state.req_id] = [row]

    def prompt_logprobs(self, plan: StepPlan, hidden: torch.Tensor
                        ) -> dict[str, list[Logprobs]]:
        """Logprobs of prompt tokens 1..P-1 covered by this step's chunks (position j's hidden
        state scores token j+1), for the requests that asked for them."""
        result: dict[str, list[Logprobs]] = {}
        qsl = plan.query_start_loc
        for i, req_id in enumerate(plan.order):
            if req_id not in self._prompt_logprob_reqs:
                continue
            state = self.requests[req_id]
            start = int(plan.num_computed[i])
            row0 = int(qsl[i])
            last = min(start + int(qsl[i + 1]) - row0, len(state.prompt_token_ids) - 1)
            if last <= start:
                continue
            rows = hidden[row0: row0 + (last - start)]
            targets = torch.tensor(state.prompt_token_ids[start + 1: last + 1],
                                   dtype=torch.long, device=rows.device)
            logits = self.prompt_logits(rows)
            if logits is None:                 # a TP rank that does not sample
                continue
            lp = compute_prompt_logprobs(logits, targets,
                                         state.sampling_params.prompt_logprobs)
            result[req_id] = lp.to_logprobs_list()
        return result

    def prompt_logits(self, hidden_rows: torch.Tensor) -> torch.Tensor:
        """The logits of some hidden-state rows, for prompt logprobs (a platform whose
        compiled graphs must not see data-dependent shapes may compute them elsewhere)."""
        return self.model.compute_logits(hidden_rows)


def _rows(logprobs: Any, rows: list[int]) -> Any:
    """The sampler's logprobs tensors restricted to ``rows`` (same type, each field indexed)."""
    import dataclasses

    index = torch.as_tensor(rows, dtype=torch.long)
    return dataclasses.replace(logprobs, **{
        f.name: getattr(logprobs, f.name)[index.to(getattr(logprobs, f.name).device)]
        for f in dataclasses.fields(logprobs)})
