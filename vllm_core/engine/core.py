"""EngineCore: the schedule -> execute -> update loop, without input or output processing.

The core owns the executor (workers, KV cache), the scheduler and the structured-output
grammars. It takes ready-made ``Request`` objects (tokenized, params final, n > 1 already fanned
out into children) and returns, per step, the scheduler's ``EngineCoreOutput`` list: token ids,
finish reasons, logprobs. It never detokenizes: stop strings are found by the front end, which
finishes the request here with ``finish_requests(ids, FINISHED_STOPPED)``.

The same class runs in-process (``LLMEngine`` holds one) or in its own process
(``vllm_core.engine.core_proc`` drives one over ZeroMQ).

Async scheduling (``SchedulerConfig.async_scheduling``): ``step`` schedules and launches step
N+1 first, then waits for step N's sampled ids and returns them, so host work overlaps the
device. At most one step is in flight; ``has_unfinished_requests`` stays true until it has been
collected. Structured outputs: the bitmask of a step depends on every earlier token of its
requests, so when the new step has a structured-output request that also samples in the step in
flight, that step is collected first (the matchers advance), then the bitmask is built and the
new step launched; when the executor ``supports_deferred_sampling`` such a step runs in two
phases instead (``_two_phase_step``: launch N+1's forward with ``defer_sampling``, collect step N
so the matchers advance, build N+1's bitmask while the device computes, then
``sample_tokens``). Matchers advance in one batch per step
(``StructuredOutputManager.advance``) before ``Scheduler.update_from_output``. When a step
schedules nothing because every waiting request is still compiling its grammar, ``step`` waits
briefly on the compiles instead of spinning.

Pipeline micro-batching (``ParallelConfig.max_concurrent_batches > 1``): ``step`` hands over to
``BatchQueue.step`` (``engine/batch_queue.py``), which keeps one step of distinct requests in
flight per pipeline stage.

Speculative decoding (``config.speculative``): before ``schedule`` the drafter gives the running
decodes their drafts; drafts follow the last known token, so a step in flight is collected first
and a step that verifies drafts runs synchronously.

Start-up: model load, KV cache allocation and graph capture, then (``config.warmup``) the
warm-up steps of ``vllm_core.engine.warmup``; each phase's seconds are in ``startup_phases``.
Last, the start-up heap is frozen out of the garbage collector's reach (``startup.freeze_heap``,
unless ``VLLM_FREEZE_GC_HEAP=0``); ``shutdown`` thaws it.

LoRA: the front end names adapters (``vllm_core.lora.registry.LoRARegistry``); the core loads
them by id on the workers (``add_lora`` / ``remove_lora``) and counts running / waiting requests
per adapter name in its stats.
"""

from __future__ import annotations

import time
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from typing import Any

from vllm_core import envs
from vllm_core.config import EngineConfig
from vllm_core.engine.batch_queue import make_batch_queue
from vllm_core.engine.executor import create_executor
from vllm_core.engine.request import Request, RequestStatus
from vllm_core.engine.scheduler import Scheduler
from vllm_core.engine.startup import freeze_heap, persist_compile_caches, phase, thaw_heap
from vllm_core.engine.stats import SchedulerStats
from vllm_core.engine.warmup import WarmUpReport, run_warmup
from vllm_core.logger import init_logger
from vllm_core.messages import EngineCoreOutput

logger = init_logger(__name__)


@dataclass(slots=True)
class CoreStepStats:
    """What one collected step did: the scheduler's stats after it (None when the scheduler does
    not log stats), the prompt tokens it computed, its wall time (schedule to collect) and, for
    MoE models, the experts' load."""

    scheduler_stats: SchedulerStats | None
    num_prompt_tokens: int
    step_time: float
    expert_load: list[int] | None = None    # MoE: routed (token, expert) pairs per EP rank


@dataclass(slots=True)
class CoreStep:
    """``outputs`` of the requests with news (one ``EngineCoreOutput`` each); ``stats`` of the
    step collected, None when only scheduler-side failures (grammar errors) are reported."""

    outputs: list[EngineCoreOutput] = field(default_factory=list)
    stats: CoreStepStats | None = None


class EngineCore:
    """Workers + scheduler + grammars; see the module docstring. Not thread-safe: one thread
    calls every method."""

    def __init__(self, config: EngineConfig, platform: Any, tokenizer: Any) -> None:
        """Load the model, size and allocate the KV cache, warm up. ``tokenizer`` (the grammar
        compiler needs it) may be a ``Future`` still loading: it is joined after the weights."""
        from vllm_core.engine.input_processor import InputProcessor
        from vllm_core.model_executor.loader import generation_defaults_for
        from vllm_core.structured_output.manager import StructuredOutputManager

        thaw_heap()          # a dropped engine's frozen cycles go before this one sizes memory
        self._froze_heap = False
        self.config = config
        self.startup_phases: dict[str, float] = {}   # phase -> seconds, in order
        self.warmup_report: WarmUpReport | None = None
        persist_compile_caches(envs.cache_root())
        with phase("model load", record=self.startup_phases):
            self.executor = create_executor(config, platform)
        try:
            num_blocks = self._check_num_blocks(self.executor.determine_num_blocks())
            config.cache.num_blocks = num_blocks
            with phase("KV cache allocation and graph capture", record=self.startup_phases):
                self.executor.initialize_cache(num_blocks)
        except BaseException:
            self.executor.shutdown()          # no worker process outlives a failed start
            raise
        self.num_blocks = num_blocks
        self.scheduler = Scheduler(config.scheduler, config.cache, config.model.max_model_len,
                                   max_loras=config.lora.max_loras if config.lora else None)
        self.loras: dict[int, tuple[str, str]] = {}   # loaded adapters: id -> (name, path)
        if isinstance(tokenizer, Future):
            tokenizer = tokenizer.result()
        model = config.model
        eos_ids = InputProcessor.model_eos_token_ids(
            config, tokenizer, generation_defaults_for(model.model, model.generation_config))
        self.structured_output_manager = StructuredOutputManager(
            config.structured_outputs, tokenizer, model.arch.vocab_size, eos_ids)
        self.async_scheduling = bool(config.scheduler.async_scheduling)
        self._in_flight: tuple[Any, Any, float] | None = None   # (SchedulerOutput, pending, t0)
        self.drafter = None                    # speculative decoding's proposer hook
        if config.speculative is not None:
            from vllm_core.spec_decode.drafter import Drafter

            self.drafter = Drafter(config.speculative)
        self._deferred_sampling = (self.async_scheduling
                                   and config.structured_outputs.overlap_bitmask
                                   and getattr(self.executor, "supports_deferred_sampling",
                                               False))
        self.num_two_phase_steps = 0
        self.batch_queue = make_batch_queue(config, self.scheduler)   # pipeline micro-batching
        if config.warmup:
            try:
                with phase("warm-up", record=self.startup_phases):
                    self.warmup_report = run_warmup(self)
            except BaseException:
                self.shutdown()
                raise
        self._froze_heap = envs.freeze_gc_heap()
        if self._froze_heap:
            self.startup_phases["heap freeze"] = freeze_heap()

    def _check_num_blocks(self, num_blocks: int) -> int:
        bs = self.config.cache.block_size
        need = -(-self.config.model.max_model_len // bs) + 1      # + the null block
        if num_blocks < need:
            raise ValueError(
                f"the KV cache holds {max(num_blocks - 1, 0) * bs} tokens, fewer than one "
                f"request of max_model_len={self.config.model.max_model_len} needs; lower "
                f"--max-model-len or give the cache more memory (--gpu-memory-utilization, "
                f"VLLM_CPU_KVCACHE_SPACE / --kv-cache-space-gib)")
        return num_blocks

    # ------------------------------------------------------------------ requests
    def add_request(self, request: Request) -> None:
        """Queue ``request`` (its grammar, if any, starts compiling). Raises ValueError with
        nothing queued when the scheduler refuses it."""
        params = request.sampling_params
        if params.structured_outputs is not None and request.structured_output is None:
            request.structured_output = self.structured_output_manager.submit(
                params.structured_outputs, request.prompt_token_ids)
        self.scheduler.add_request(request)

    def finish_requests(self, request_ids: list[str], status: RequestStatus) -> None:
        """Finish requests from outside: aborts, and stop strings found by the front end.
        Unknown (already finished) ids are ignored."""
        if request_ids:
            self.scheduler.finish_requests(request_ids, status)

    def has_unfinished_requests(self) -> bool:
        return (self.scheduler.has_unfinished_requests() or self._in_flight is not None
                or bool(self.batch_queue))

    # ------------------------------------------------------------------ LoRA adapters
    def add_lora(self, lora_id: int, name: str, path: str) -> None:
        """Load the PEFT adapter at ``path`` as ``lora_id`` on the workers (ValueError when LoRA
        is off, the id is another adapter's, or it does not fit the model). Loading the same
        adapter again (another front end's registry) is a no-op."""
        if self.config.lora is None:
            raise ValueError("LoRA adapters need an engine started with enable_lora=True "
                             "(--enable-lora)")
        known = self.loras.get(lora_id)
        if known == (name, path):
            return
        if known is not None:
            raise ValueError(f"LoRA id {lora_id} is already used by adapter {known[0]!r}")
        self.executor.add_lora(lora_id, path)
        self.loras[lora_id] = (name, path)

    def remove_lora(self, lora_id: int) -> None:
        """Unload adapter ``lora_id``; ValueError while an unfinished request uses it."""
        name = self.loras.get(lora_id, (str(lora_id),))[0]
        if any(r.lora_id == lora_id for r in self.scheduler.requests.values()):
            raise ValueError(f"LoRA adapter {name!r} is in use by unfinished requests")
        self.executor.remove_lora(lora_id)
        self.loras.pop(lora_id, None)

    def _add_lora_stats(self, stats: SchedulerStats | None) -> SchedulerStats | None:
        """Per-adapter running / waiting counts, by adapter name (every loaded adapter)."""
        if stats is None or not self.loras:
            return stats
        running, waiting = self.scheduler.lora_counts()
        for lora_id, (name, _) in self.loras.items():
            stats.lora_running[name] = running.get(lora_id, 0)
            stats.lora_waiting[name] = waiting.get(lora_id, 0)
        return stats

    # ------------------------------------------------------------------ the loop
    def step(self) -> CoreStep:
        """Run one step (see the module docstring); the outputs of the step(s) collected."""
        t0 = time.perf_counter()
        result = CoreStep()
        if self.batch_queue is not None:
            self.batch_queue.step(self, result)
            return result
        if self.drafter is not None:
            self._propose_drafts(result)
        scheduler_output = self.scheduler.schedule()
        result.outputs.extend(self.scheduler.pop_failed_outputs())
        if scheduler_output.is_empty and self._in_flight is None:
            self._wait_for_grammars()
        if not self.async_scheduling or scheduler_output.scheduled_spec_decode_tokens:
            self._attach_bitmask(scheduler_output)
            self._collect(result, scheduler_output,
                          self.executor.execute_model(scheduler_output), t0)
            return result
        previous, self._in_flight = self._in_flight, None
        if previous is not None and self.structured_output_manager.depends_on_step(
                scheduler_output, self.scheduler.requests, previous[0]):
            if self._deferred_sampling:
                self._two_phase_step(result, scheduler_output, previous, t0)
                return result
            self._collect(result, previous[0], previous[1].result(), previous[2])
            previous = None                 # matchers advanced: the bitmask can be built
        self._attach_bitmask(scheduler_output)
        if scheduler_output.is_empty:       # nothing to overlap: deliver finished ids now
            self.executor.execute_model(scheduler_output)
        else:
            self._in_flight = (scheduler_output,
                               self.executor.execute_model_async(scheduler_output), t0)
        if previous is not None:
            self._collect(result, previous[0], previous[1].result(), previous[2])
        return result

    def _propose_drafts(self, result: CoreStep) -> None:
        """Speculative decoding: give running decodes their drafts before ``schedule()``.
        Drafts follow the last known token, so a step in flight is collected first: steps
        that speculate do not overlap host and device work (async scheduling continues for
        the steps where speculation is off, e.g. above ``disable_by_batch_size``)."""
        if not self.drafter.active(self.scheduler.num_running):
            return
        if self._in_flight is not None:
            prev_output, pending, prev_t0 = self._in_flight
            self._in_flight = None
            self._collect(result, prev_output, pending.result(), prev_t0)
        self.drafter.propose(self.scheduler.running, self.scheduler.max_seq_len)

    def _two_phase_step(self, result: CoreStep, scheduler_output: Any,
                        previous: tuple[Any, Any, float], t0: float) -> None:
        """Launch ``scheduler_output``'s forward, finish the step in flight (its tokens advance
        the matchers), build the bitmask while the device computes, then sample."""
        scheduler_output.defer_sampling = True
        self.num_two_phase_steps += 1
        self.executor.execute_model_async(scheduler_output)
        prev_output, pending, prev_t0 = previous
        self._collect(result, prev_output, pending.result(), prev_t0)
        self._attach_bitmask(scheduler_output)
        self._in_flight = (scheduler_output, self.executor.sample_tokens(scheduler_output), t0)

    def _collect(self, result: CoreStep, scheduler_output: Any, runner_output: Any,
                 t0: float) -> None:
        if scheduler_output.structured_output_req_ids:       # matchers advance in a batch
            self.structured_output_manager.advance(
                scheduler_output, runner_output.sampled_token_ids, self.scheduler.requests)
        outputs = self.scheduler.update_from_output(scheduler_output, runner_output)
        result.outputs.extend(outputs)
        sampled = {o.req_id for o in outputs if o.new_token_ids}
        drafts = scheduler_output.scheduled_spec_decode_tokens
        num_prompt = sum(n for r, n in scheduler_output.num_scheduled_tokens.items()
                         if n - len(drafts.get(r, ())) > 1 or r not in sampled)
        stats = CoreStepStats(self._add_lora_stats(self.scheduler.make_stats()), num_prompt,
                              time.perf_counter() - t0,
                              getattr(runner_output, "expert_load", None))
        if result.stats is None:
            result.stats = stats
        else:                               # two steps collected at once: add them up
            _accumulate(result.stats, stats)

    def _attach_bitmask(self, scheduler_output: Any) -> None:
        if scheduler_output.sampling_req_ids:
            self.structured_output_manager.attach_bitmask(scheduler_output,
                                                          self.scheduler.requests)

    def _wait_for_grammars(self, timeout: float = 0.05) -> None:
        futures = self.scheduler.grammar_futures()
        if futures:
            wait(futures, timeout=timeout, return_when=FIRST_COMPLETED)

    # ------------------------------------------------------------------ state
    def scheduler_snapshot(self) -> SchedulerStats:
        """Running / waiting / KV usage now, without consuming the per-step counters."""
        s = self.scheduler
        return self._add_lora_stats(SchedulerStats(
            num_running_reqs=s.num_running, num_waiting_reqs=s.num_waiting,
            kv_cache_usage=s.kv_cache_usage, num_total_blocks=self.config.cache.num_blocks or 0))

    def check_health(self) -> None:
        """Raise when the executor's own probe fails (a worker process ended); no-op for an
        executor without one."""
        probe = getattr(self.executor, "check_health", None)
        if probe is not None:
            probe()

    def shutdown(self) -> None:
        self.structured_output_manager.shutdown()
        self.executor.shutdown()
        if self._froze_heap:
            thaw_heap()


def _accumulate(into: CoreStepStats, more: CoreStepStats) -> None:
    """Add ``more`` (a later step collected in the same call) to ``into``."""
    into.num_prompt_tokens += more.num_prompt_tokens
    into.step_time += more.step_time
    into.scheduler_stats = _merge(into.scheduler_stats, more.scheduler_stats)
    if more.expert_load is not None:
        into.expert_load = (more.expert_load if into.expert_load is None else
                            [a + b for a, b in zip(into.expert_load, more.expert_load)])


def _merge(a: SchedulerStats | None, b: SchedulerStats | None) -> SchedulerStats | None:
    """``b``'s state with the per-step counters of both."""
    if a is None or b is None:
        return b or a
    b.add_step_counters(a)
    return b
