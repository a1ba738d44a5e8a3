"""LLMEngine: the synchronous engine loop (add_request / step / abort).

One ``step`` = ``Scheduler.schedule`` -> ``Executor.execute_model`` ->
``Scheduler.update_from_output`` -> ``OutputProcessor.process_outputs``. Stop strings found
by the detokenizer finish the request in the scheduler in the same step. n > 1 requests fan out
into child requests ``"{i}_{request_id}"`` that share the prompt's KV blocks.

With async scheduling (``SchedulerConfig.async_scheduling``) a step schedules and launches step
N+1 first, then waits for step N's sampled ids and processes them, so the host work of one step
(scheduling, input preparation, output processing) overlaps the device running the other. Each
``step()`` then returns the outputs of the step before; at most one step is in flight, and
``has_unfinished_requests()`` stays true until it has been collected.

Structured outputs: ``add_request`` starts compiling a request's grammar (the scheduler holds the
request until it is ready); after ``schedule`` the engine attaches the step's grammar bitmask
(``StructuredOutputManager.attach_bitmask``). The bitmask of a step depends on every earlier
token of its requests, so under async scheduling, when the new step has a structured-output
request that samples and that also samples in the step in flight, the step runs in two phases
(when the executor ``supports_deferred_sampling``): launch N+1 with ``defer_sampling`` (forward
only), collect and process step N (the matchers advance), build N+1's bitmask while the device
runs its forward, then ``sample_tokens``. Host grammar work overlaps the forward; only the
sampling waits for it. An executor without the second phase collects step N before launching
N+1 (no overlap for such steps). When a step schedules nothing because every waiting request
is still compiling, ``step`` waits briefly on the compiles instead of spinning.

Pipeline micro-batching (``ParallelConfig.max_concurrent_batches > 1``): ``step`` hands over to
``BatchQueue.step`` (``engine/batch_queue.py``), which keeps one step of distinct requests in
flight per pipeline stage.
"""

from __future__ import annotations

import time
from concurrent.futures import FIRST_COMPLETED, wait
from typing import Any

from vllm_core.config import EngineConfig
from vllm_core.engine.arg_utils import EngineArgs
from vllm_core.engine.batch_queue import make_batch_queue
from vllm_core.engine.executor import create_executor
from vllm_core.engine.input_processor import InputProcessor, ProcessedPrompt, PromptType
from vllm_core.engine.output_processor import OutputProcessor
from vllm_core.engine.request import Request, RequestStatus
from vllm_core.engine.scheduler import Scheduler
from vllm_core.engine.startup import in_background, phase
from vllm_core.engine.stats import IterationStats, SchedulerStats, StatLogger
from vllm_core.logger import init_logger
from vllm_core.outputs import RequestOutput
from vllm_core.sampling.params import SamplingParams

logger = init_logger(__name__)


def load_chat_template(value: str | None) -> str | None:
    """A chat template given as a file path or as the template text itself."""
    if value is None:
        return None
    import os

    if os.path.isfile(value):
        with open(value, encoding="utf-8") as f:
            return f.read()
    if "{" not in value:
        raise ValueError(f"chat_template {value!r} is neither a file nor a Jinja template")
    return value


class LLMEngine:
    def __init__(self, config: EngineConfig, platform: Any,
                 stat_loggers: list[StatLogger] | None = None) -> None:
        from vllm_core.model_executor.loader import generation_defaults_for, get_tokenizer

        start = time.perf_counter()
        self.config = config
        self.platform = platform
        model = config.model
        logger.info("start-up: loading %s", model.model)
        tokenizer = in_background("tokenizer", get_tokenizer, model.model, model.tokenizer)
        template = load_chat_template(model.chat_template)
        self.generation_defaults: dict[str, Any] = generation_defaults_for(
            model.model, model.generation_config)
        with phase("model load"):
            self.executor = create_executor(config, platform)
        self.tokenizer = tokenizer.result()
        if template is not None:
            self.tokenizer.chat_template = template
        try:
            num_blocks = self._check_num_blocks(self.executor.determine_num_blocks())
            config.cache.num_blocks = num_blocks
            with phase(f"KV cache allocation ({num_blocks} blocks) and warm-up"):
                self.executor.initialize_cache(num_blocks)
        except BaseException:
            self.executor.shutdown()          # no worker process outlives a failed start
            raise
        self.scheduler = Scheduler(config.scheduler, config.cache, model.max_model_len,
                                   max_loras=config.lora.max_loras if config.lora else None)
        from vllm_core.lora.registry import LoRARegistry

        self.loras = LoRARegistry()
        from vllm_core.structured_output.manager import StructuredOutputManager

        eos_ids = InputProcessor.model_eos_token_ids(config, self.tokenizer,
                                                     self.generation_defaults)
        self.structured_output_manager = StructuredOutputManager(
            config.structured_outputs, self.tokenizer, model.arch.vocab_size, eos_ids)
        self.input_processor = InputProcessor(config, self.tokenizer, self.generation_defaults,
                                              self.structured_output_manager)
        self.output_processor = OutputProcessor(self.tokenizer)
        self.stat_loggers: list[StatLogger] = list(stat_loggers or [])
        self._children: dict[str, list[str]] = {}
        self.async_scheduling = bool(config.scheduler.async_scheduling)
        self._in_flight: tuple[Any, Any, float] | None = None   # (SchedulerOutput, pending, t0)
        self.drafter = None                    # speculative decoding's proposer hook
        if config.speculative is not None:
            from vllm_core.spec_decode.drafter import Drafter

            self.drafter = Drafter(config.speculative)
        self._deferred_sampling = (self.async_scheduling and config.structured_outputs.overlap_bitmask
                                   and getattr(self.executor, "supports_deferred_sampling",
                                               False))
        self.num_two_phase_steps = 0
        self.batch_queue = make_batch_queue(config, self.scheduler)   # pipeline micro-batching
        self.startup_time = time.perf_counter() - start
        logger.info("engine ready in %.1f s: %s, dtype %s, %d KV blocks of %d tokens "
                    "(%d tokens), max_model_len %d%s", self.startup_time, platform.describe(),
                    model.dtype, num_blocks, config.cache.block_size,
                    (num_blocks - 1) * config.cache.block_size, model.max_model_len,
                    ", async scheduling" if self.async_scheduling else "")

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

    @classmethod
    def from_engine_args(cls, engine_args: EngineArgs,
                         stat_loggers: list[StatLogger] | None = None) -> LLMEngine:
        config, platform = engine_args.create_engine_config()
        return cls(config, platform, stat_loggers)

    # ------------------------------------------------------------------ requests
    def get_tokenizer(self) -> Any:
        return self.tokenizer

    def default_sampling_params(self) -> SamplingParams:
        return self.input_processor.default_sampling_params()

    @property
    def eos_token_ids(self) -> list[int]:
        """The model's end-of-sequence ids (generation_config, else tokenizer, else config)."""
        return self.input_processor.eos_token_ids

    def process_inputs(self, prompt: PromptType,
                       params: SamplingParams | None = None) -> ProcessedPrompt:
        """Tokenize and validate a prompt and complete its SamplingParams (generation_config
        defaults, checks against the model). Pure: touches no engine state, so a front end may
        call it on any thread (the async engine does, off its engine loop). Raises ValueError
        naming the bad field."""
        return self.input_processor.process(prompt, params)

    def add_request(self, request_id: str, prompt: PromptType | ProcessedPrompt,
                    params: SamplingParams | None = None, arrival_time: float | None = None,
                    priority: int = 0, lora_request: Any = None) -> None:
        """The one way a request enters the engine (``LLM``, ``AsyncLLMEngine``, beam search
        and the server all call it). ``prompt`` is raw (string, token ids, dict), processed
        here with ``params``, or a ``ProcessedPrompt`` from ``process_inputs`` (``params`` must
        then be None). Raises ValueError, with nothing queued, on bad input or a reused id.
        n > 1 fans out into child requests ``"{i}_{request_id}"`` (seed + i).
        ``lora_request`` (a ``LoRARequest``) runs it with that adapter, loaded on first use."""
        if request_id in self._children or self.output_processor.has_request(request_id):
            raise ValueError(f"request id {request_id!r} is already in use")
        lora_id = 0
        if lora_request is not None:
            self.add_lora(lora_request)
            lora_id = lora_request.lora_int_id
        if isinstance(prompt, ProcessedPrompt):
            if params is not None:
                raise ValueError("pass params to process_inputs, not with a ProcessedPrompt")
            processed = prompt
        else:
            processed = self.input_processor.process(prompt, params)
        arrival = time.time() if arrival_time is None else arrival_time
        params = processed.params
        n = params.n
        child_ids = [request_id] if n == 1 else [f"{i}_{request_id}" for i in range(n)]
        requests = []
        for i, child_id in enumerate(child_ids):
            child_params = params
            if n > 1:
                child_params = params.clone()
                child_params.n = 1
                if params.seed is not None:
                    child_params.seed = params.seed + i
            grammar = None
            if child_params.structured_outputs is not None:
                grammar = self.structured_output_manager.submit(
                    child_params.structured_outputs, processed.prompt_token_ids)
            requests.append(Request(
                request_id=child_id, prompt_token_ids=processed.prompt_token_ids,
                sampling_params=child_params, arrival_time=arrival, priority=priority,
                lora_id=lora_id, parent_id=request_id if n > 1 else None,
                structured_output=grammar))
        for i, req in enumerate(requests):           # scheduler first: it may refuse
            self.scheduler.add_request(req)
            self.output_processor.add_request(
                req.request_id, processed.prompt, processed.prompt_token_ids,
                req.sampling_params, arrival, parent_id=request_id if n > 1 else None,
                child_index=i, num_children=n)
        self._children[request_id] = child_ids

    # ------------------------------------------------------------------ LoRA adapters
    def add_lora(self, lora_request: Any) -> bool:
        """Load a PEFT adapter (``LoRARequest``) on the workers and register its name. False
        when it is already loaded; ValueError when LoRA is off, the name or id is taken, or
        the adapter does not fit the model."""
        if self.config.lora is None:
            raise ValueError("LoRA adapters need an engine started with enable_lora=True "
                             "(--enable-lora)")
        return self.loras.add(lora_request, self.executor.add_lora)

    def remove_lora(self, name: str) -> None:
        """Unload the adapter ``name``; ValueError when unknown or still used by a request."""
        request = self.loras.get(name)
        if request is None:
            raise ValueError(f"no LoRA adapter named {name!r} is loaded")
        if any(r.lora_id == request.lora_int_id for r in self.scheduler.requests.values()):
            raise ValueError(f"LoRA adapter {name!r} is in use by unfinished requests")
        self.executor.remove_lora(request.lora_int_id)
        self.loras.remove(name)

    def abort_request(self, request_ids: str | list[str]) -> None:
        ids = [request_ids] if isinstance(request_ids, str) else list(request_ids)
        children = [c for r in ids for c in self._children.pop(r, [])]
        if children:
            self.scheduler.finish_requests(children, RequestStatus.FINISHED_ABORTED)
            for child in children:
                self.output_processor.abort_request(child)

    def has_unfinished_requests(self) -> bool:
        return (self.scheduler.has_unfinished_requests() or self._in_flight is not None
                or bool(self.batch_queue))

    def get_num_unfinished_requests(self) -> int:
        return len(self._children)

    # ------------------------------------------------------------------ the loop
    def step(self) -> list[RequestOutput]:
        if self.batch_queue is not None:
            return self.batch_queue.step(self)
        t0 = time.perf_counter()
        outputs = self._propose_drafts() if self.drafter is not None else []
        scheduler_output = self.scheduler.schedule()
        outputs += self._failed_outputs()
        if scheduler_output.is_empty and self._in_flight is None:
            self._wait_for_grammars()
        if not self.async_scheduling or scheduler_output.scheduled_spec_decode_tokens:
            self._attach_bitmask(scheduler_output)
            return outputs + self._finish_step(
                scheduler_output, self.executor.execute_model(scheduler_output), t0)
        previous, self._in_flight = self._in_flight, None
        if previous is not None and self.structured_output_manager.depends_on_step(
                scheduler_output, self.scheduler.requests, previous[0]):
            if self._deferred_sampling:
                return outputs + self._two_phase_step(scheduler_output, previous, t0)
            outputs += self._finish_step(previous[0], previous[1].result(), previous[2])
            previous = None                 # matchers advanced: the bitmask can be built
        self._attach_bitmask(scheduler_output)
        if scheduler_output.is_empty:       # nothing to overlap: deliver finished ids now
            self.executor.execute_model(scheduler_output)
        else:
            self._in_flight = (scheduler_output,
                               self.executor.execute_model_async(scheduler_output), t0)
        if previous is None:
            return outputs
        prev_output, pending, prev_t0 = previous
        return outputs + self._finish_step(prev_output, pending.result(), prev_t0)

    def _propose_drafts(self) -> list[RequestOutput]:
        """Speculative decoding: give running decodes their drafts before ``schedule()``.
        Drafts follow the last known token, so a step in flight is collected first: steps
        that speculate do not overlap host and device work (async scheduling continues for
        the steps where speculation is off, e.g. above ``disable_by_batch_size``)."""
        if not self.drafter.active(self.scheduler.num_running):
            return []
        outputs: list[RequestOutput] = []
        if self._in_flight is not None:
            prev_output, pending, prev_t0 = self._in_flight
            self._in_flight = None
            outputs = self._finish_step(prev_output, pending.result(), prev_t0)
        self.drafter.propose(self.scheduler.running, self.scheduler.max_seq_len)
        return outputs

    def _two_phase_step(self, scheduler_output: Any, previous: tuple[Any, Any, float],
                        t0: float) -> list[RequestOutput]:
        """Launch ``scheduler_output``'s forward, finish the step in flight (its tokens advance
        the matchers), build the bitmask while the device computes, then sample."""
        scheduler_output.defer_sampling = True
        self.num_two_phase_steps += 1
        self.executor.execute_model_async(scheduler_output)
        prev_output, pending, prev_t0 = previous
        outputs = self._finish_step(prev_output, pending.result(), prev_t0)
        self._attach_bitmask(scheduler_output)
        self._in_flight = (scheduler_output, self.executor.sample_tokens(scheduler_output), t0)
        return outputs

    def _attach_bitmask(self, scheduler_output: Any) -> None:
        if scheduler_output.sampling_req_ids:
            self.structured_output_manager.attach_bitmask(scheduler_output,
                                                          self.scheduler.requests)

    def _wait_for_grammars(self, timeout: float = 0.05) -> None:
        futures = self.scheduler.grammar_futures()
        if futures:
            wait(futures, timeout=timeout, return_when=FIRST_COMPLETED)

    def _failed_outputs(self) -> list[RequestOutput]:
        failed = self.scheduler.pop_failed_outputs()
        return self._process(failed) if failed else []

    def _finish_step(self, scheduler_output: Any, runner_output: Any,
                     t0: float) -> list[RequestOutput]:
        if scheduler_output.structured_output_req_ids:       # matchers advance in a batch
            self.structured_output_manager.advance(
                scheduler_output, runner_output.sampled_token_ids, self.scheduler.requests)
        core_outputs = self.scheduler.update_from_output(scheduler_output, runner_output)
        processed = self._process(core_outputs, return_processed=True)
        if self.stat_loggers:
            self._record_stats(scheduler_output, core_outputs, processed,
                               time.perf_counter() - t0, runner_output)
        return processed.request_outputs

    def _process(self, core_outputs: list, return_processed: bool = False) -> Any:
        processed = self.output_processor.process_outputs(core_outputs, time.time())
        if processed.reqs_to_abort:
            self.scheduler.finish_requests(processed.reqs_to_abort,
                                           RequestStatus.FINISHED_STOPPED)
        for out in processed.request_outputs:
            if out.finished:
                self._children.pop(out.request_id, None)
        return processed if return_processed else processed.request_outputs

    def _record_stats(self, scheduler_output: Any, core_outputs: list, processed: Any,
                      step_time: float, runner_output: Any = None) -> None:
        it: IterationStats = getattr(processed, "iteration_stats", None) or IterationStats()
        it.step_time = step_time
        it.expert_load = getattr(runner_output, "expert_load", None)
        it.num_generation_tokens = sum(len(o.new_token_ids) for o in core_outputs)
        sampled = {o.req_id for o in core_outputs if o.new_token_ids}
        drafts = scheduler_output.scheduled_spec_decode_tokens
        it.num_prompt_tokens = sum(
            n for r, n in scheduler_output.num_scheduled_tokens.items()
            if n - len(drafts.get(r, ())) > 1 or r not in sampled)
        stats: SchedulerStats = self.scheduler.make_stats()
        self._add_lora_stats(stats)
        for stat_logger in self.stat_loggers:
            stat_logger.record(stats, it)

    def shutdown(self) -> None:
        self.structured_output_manager.shutdown()
        self.executor.shutdown()

    def scheduler_snapshot(self) -> SchedulerStats:
        """Running / waiting / KV usage now, without consuming the per-step counters."""
        s = self.scheduler
        return self._add_lora_stats(SchedulerStats(
            num_running_reqs=s.num_running, num_waiting_reqs=s.num_waiting,
            kv_cache_usage=s.kv_cache_usage, num_total_blocks=self.config.cache.num_blocks or 0))

    def _add_lora_stats(self, stats: SchedulerStats | None) -> SchedulerStats | None:
        """Per-adapter running / waiting counts, by adapter name (every loaded adapter)."""
        if stats is None or not len(self.loras):
            return stats
        running, waiting = self.scheduler.lora_counts()
        for lora in self.loras:
            stats.lora_running[lora.lora_name] = running.get(lora.lora_int_id, 0)
            stats.lora_waiting[lora.lora_name] = waiting.get(lora.lora_int_id, 0)
        return stats
