"""LLMEngine: the synchronous engine loop (add_request / step / abort).

The engine is a front end around an engine core. The front end does input processing
(tokenize, validate, complete SamplingParams; n > 1 fans out into child requests
``"{i}_{request_id}"`` that share the prompt's KV blocks) and output processing (incremental
detokenization, stop strings, logprobs, ``RequestOutput``). The core
(``vllm_core.engine.core.EngineCore``: scheduler, workers, grammars; async scheduling) runs
in this process, or in its own process behind ``vllm_core.engine.core_client.EngineCoreClient``
(same interface). One ``step`` = one core step (schedule -> execute -> update) ->
``OutputProcessor.process_outputs``. A stop string found by the detokenizer finishes the
request in the core with ``FINISHED_STOPPED`` (in-process: before the next step is scheduled;
with the core in another process: when the message arrives, so the core may have computed a
few tokens more, which are dropped here). Speculative decoding, the two-phase structured-output
step and the MoE expert load live in the core (``EngineCore``), so both layouts have them.

LoRA: the front end keeps the adapter names (``LoRARegistry``: the server resolves
``model=<name>`` through it); the core loads adapters by id (``core.add_lora``).
"""

from __future__ import annotations

import time
from typing import Any

from vllm_core.config import EngineConfig
from vllm_core.engine.arg_utils import EngineArgs
from vllm_core.engine.core import CoreStep, EngineCore
from vllm_core.engine.front_end_threads import FrontEndThreads
from vllm_core.engine.input_processor import InputProcessor, ProcessedPrompt, PromptType
from vllm_core.engine.output_processor import OutputProcessor
from vllm_core.engine.request import Request, RequestStatus
from vllm_core.engine.scheduler import Scheduler
from vllm_core.engine.startup import describe_phases
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
    """Input processing + an engine core + output processing (see the module docstring).

    ``core`` is an in-process ``EngineCore`` (built here when None) or any object with its
    request/step interface, such as ``vllm_core.engine.core_client.EngineCoreClient`` for an
    engine core in its own process.
    """

    def __init__(self, config: EngineConfig, platform: Any,
                 stat_loggers: list[StatLogger] | None = None, core: Any = None) -> None:
        from vllm_core.model_executor.loader import generation_defaults_for
        from vllm_core.model_executor.tokenizer import get_tokenizer_in_background

        start = time.perf_counter()
        self.config = config
        self.platform = platform
        model = config.model
        logger.info("start-up: loading %s", model.model)
        tokenizer = get_tokenizer_in_background(model.model, model.tokenizer)
        template = load_chat_template(model.chat_template)
        self.generation_defaults: dict[str, Any] = generation_defaults_for(
            model.model, model.generation_config)
        self._front_end_threads: FrontEndThreads | None = None
        if core is None:
            core = EngineCore(config, platform, tokenizer)
        else:
            core.wait_ready()
            self._front_end_threads = FrontEndThreads.limit()   # the core computes elsewhere
        self.core = core
        self.tokenizer = tokenizer.result()
        if template is not None:
            self.tokenizer.chat_template = template
        eos_ids = InputProcessor.model_eos_token_ids(config, self.tokenizer,
                                                     self.generation_defaults)
        num_blocks = config.cache.num_blocks = core.num_blocks
        from vllm_core.structured_output.manager import StructuredOutputManager

        # The front end's manager only validates constraints and picks their backend
        # (``prepare``); the core's compiles them. In-process they are the same object.
        self.structured_output_manager = getattr(core, "structured_output_manager", None) \
            or StructuredOutputManager(config.structured_outputs, self.tokenizer,
                                       model.arch.vocab_size, eos_ids)
        self.input_processor = InputProcessor(config, self.tokenizer, self.generation_defaults,
                                              self.structured_output_manager)
        self.output_processor = OutputProcessor(self.tokenizer)
        self.stat_loggers: list[StatLogger] = list(stat_loggers or [])
        self._children: dict[str, list[str]] = {}
        from vllm_core.lora.registry import LoRARegistry

        self.loras = LoRARegistry()
        self.async_scheduling = bool(config.scheduler.async_scheduling)
        self.startup_time = time.perf_counter() - start
        self.startup_phases: dict[str, float] = dict(core.startup_phases)
        self.startup_phases["total"] = self.startup_time
        kv = config.cache.kv_cache_dtype
        logger.info("engine ready in %.1f s: %s, dtype %s, %d KV blocks of %d tokens "
                    "(%d tokens%s), max_model_len %d%s%s", self.startup_time,
                    platform.describe(), model.dtype, num_blocks, config.cache.block_size,
                    (num_blocks - 1) * config.cache.block_size,
                    "" if kv == "auto" else f", KV cache {kv}", model.max_model_len,
                    ", async scheduling" if self.async_scheduling else "",
                    "" if self.in_process else ", engine core in its own process")
        logger.info("start-up phases: %s", describe_phases(self.startup_phases))

    # The in-process core's parts (tests and benchmarks reach the workers through these).
    @property
    def executor(self) -> Any:
        return self._in_process_core().executor

    @property
    def scheduler(self) -> Scheduler:
        return self._in_process_core().scheduler

    @property
    def batch_queue(self) -> Any:
        """Pipeline micro-batching's ``BatchQueue`` (None when off); in-process core only."""
        return self._in_process_core().batch_queue

    @property
    def drafter(self) -> Any:
        """Speculative decoding's drafter (None when off); in-process core only."""
        return self._in_process_core().drafter

    @property
    def num_two_phase_steps(self) -> int:
        """Steps run in two phases (structured outputs); in-process core only."""
        return self._in_process_core().num_two_phase_steps

    def _in_process_core(self) -> EngineCore:
        if not isinstance(self.core, EngineCore):
            raise RuntimeError("the engine core runs in another process; its executor and "
                               "scheduler are not reachable from here")
        return self.core

    @classmethod
    def from_engine_args(cls, engine_args: EngineArgs,
                         stat_loggers: list[StatLogger] | None = None,
                         engine_core_process: bool | None = False) -> LLMEngine:
        """``engine_core_process``: run the engine core in its own process (None: the
        platform's default, ``Platform.default_engine_core_process``). With
        ``data_parallel_size`` > 1 every engine core runs in its own process
        (``vllm_core.engine.dp_client``)."""
        config, platform = engine_args.create_engine_config()
        if engine_core_process is None:
            engine_core_process = platform.default_engine_core_process()
        core = None
        if config.parallel.data_parallel_size > 1:     # always engine core processes
            from vllm_core.engine.dp_client import DPEngineCoreClient

            core = DPEngineCoreClient.start(config, platform)
        elif engine_core_process:
            from vllm_core.engine.core_client import EngineCoreClient

            core = EngineCoreClient.start(config, platform)
        try:
            return cls(config, platform, stat_loggers, core=core)
        except BaseException:
            if core is not None:
                core.shutdown(timeout_s=0.0)
            raise

    @property
    def in_process(self) -> bool:
        """Whether the engine core runs in this process."""
        return isinstance(self.core, EngineCore)

    def check_health(self) -> None:
        """Raise when the engine cannot serve: the executor's probe fails (a worker process
        ended) or, with the core in its own process, ``EngineDeadError`` when that process has
        exited or failed (the core probes its own executor). Cheap; any thread."""
        if self.in_process:
            self.core.check_health()
        else:
            self.core.check_alive()

    def notify(self) -> None:
        """Wake a ``step`` that waits for the engine core process (thread-safe; no-op when
        the core is in this process)."""
        if not self.in_process:
            self.core.notify()

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
            requests.append(Request(
                request_id=child_id, prompt_token_ids=processed.prompt_token_ids,
                sampling_params=child_params, arrival_time=arrival, priority=priority,
                lora_id=lora_id, parent_id=request_id if n > 1 else None,
                mm_features=processed.mm_features))
        for i, req in enumerate(requests):           # the core first: it may refuse
            self.core.add_request(req)
            self.output_processor.add_request(
                req.request_id, processed.prompt, processed.prompt_token_ids,
                req.sampling_params, arrival, parent_id=request_id if n > 1 else None,
                child_index=i, num_children=n)
        self._children[request_id] = child_ids

    # ------------------------------------------------------------------ LoRA adapters
    def add_lora(self, lora_request: Any) -> bool:
        """Load a PEFT adapter (``LoRARequest``) in the core and register its name. False
        when it is already loaded; ValueError when LoRA is off, the name or id is taken, or
        the adapter does not fit the model."""
        if self.config.lora is None:
            raise ValueError("LoRA adapters need an engine started with enable_lora=True "
                             "(--enable-lora)")
        return self.loras.add(lora_request, lambda lora_id, path: self.core.add_lora(
            lora_id, lora_request.lora_name, path))

    def remove_lora(self, name: str) -> None:
        """Unload the adapter ``name``; ValueError when unknown or still used by a request."""
        request = self.loras.get(name)
        if request is None:
            raise ValueError(f"no LoRA adapter named {name!r} is loaded")
        self.core.remove_lora(request.lora_int_id)
        self.loras.remove(name)

    def abort_request(self, request_ids: str | list[str]) -> None:
        ids = [request_ids] if isinstance(request_ids, str) else list(request_ids)
        children = [c for r in ids for c in self._children.pop(r, [])]
        if children:
            self.core.finish_requests(children, RequestStatus.FINISHED_ABORTED)
            for child in children:
                self.output_processor.abort_request(child)

    def has_unfinished_requests(self) -> bool:
        return self.core.has_unfinished_requests()

    def get_num_unfinished_requests(self) -> int:
        return len(self._children)

    # ------------------------------------------------------------------ the loop
    def step(self) -> list[RequestOutput]:
        """One core step (see ``EngineCore.step``; with the core in another process: the next
        batch of outputs it sent, or none after a short wait), detokenized."""
        core_step = self.core.step()
        if not core_step.outputs and core_step.stats is None:
            return []
        processed = self.output_processor.process_outputs(core_step.outputs, time.time())
        if processed.reqs_to_abort:
            self.core.finish_requests(processed.reqs_to_abort, RequestStatus.FINISHED_STOPPED)
        for out in processed.request_outputs:
            if out.finished:
                self._children.pop(out.request_id, None)
        if self.stat_loggers and core_step.stats is not None:
            self._record_stats(core_step, processed)
        return processed.request_outputs

    def _record_stats(self, core_step: CoreStep, processed: Any) -> None:
        it: IterationStats = processed.iteration_stats or IterationStats()
        it.step_time = core_step.stats.step_time
        it.expert_load = core_step.stats.expert_load
        it.num_generation_tokens = sum(len(o.new_token_ids) for o in core_step.outputs)
        it.num_prompt_tokens = core_step.stats.num_prompt_tokens
        stats = core_step.stats.scheduler_stats
        for stat_logger in self.stat_loggers:
            stat_logger.record(stats, it)

    def shutdown(self) -> None:
        if self.structured_output_manager is not getattr(self.core, "structured_output_manager",
                                                         None):
            self.structured_output_manager.shutdown()
        self.core.shutdown()
        if self._front_end_threads is not None:
            self._front_end_threads.restore()

    def scheduler_snapshot(self) -> SchedulerStats:
        """Running / waiting / KV usage now, without consuming the per-step counters."""
        return self.core.scheduler_snapshot()
