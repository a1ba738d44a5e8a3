"""AsyncLLMEngine: the engine loop on a background thread, each request an async generator.

Thread model: only the engine thread touches the engine core (or its client), the workers and
the output processor. Callers (the asyncio loop of the server) validate and tokenize their
request on their own thread, then hand it over through a command queue; outputs come back
through ``loop.call_soon_threadsafe`` into a per-request ``asyncio.Queue``. Torch releases the
GIL while it computes, so the event loop stays responsive during a step.

With the engine core in its own process (``engine_core_process``), the engine thread only
sends requests and aborts to it, waits for its per-step output batches and detokenizes them;
it is woken (``LLMEngine.notify``) whenever a command is queued. A core process that dies
fails every request in flight with ``EngineDeadError`` and makes ``check_health`` raise within
about a second, busy or idle.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from vllm_core.engine.arg_utils import EngineArgs
from vllm_core.engine.errors import EngineDeadError
from vllm_core.engine.input_processor import PromptType
from vllm_core.engine.llm_engine import LLMEngine
from vllm_core.engine.stats import SchedulerStats, StatLogger
from vllm_core.logger import init_logger
from vllm_core.outputs import RequestOutput
from vllm_core.sampling.params import SamplingParams, sampling_params_from_user

logger = init_logger(__name__)


def _settle(future: asyncio.Future, result: Any) -> None:
    if future.done():
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)


@dataclass(slots=True)
class _Stream:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue


class AsyncLLMEngine:
    def __init__(self, engine: LLMEngine) -> None:
        self.engine = engine
        self.config = engine.config
        self.tokenizer = engine.tokenizer
        self.generation_defaults = engine.generation_defaults
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._wakeup = threading.Event()
        self._streams: dict[str, _Stream] = {}
        self._streams_lock = threading.Lock()
        self._error: BaseException | None = None
        self._stop = False
        self._snapshot = SchedulerStats(num_total_blocks=engine.config.cache.num_blocks or 0)
        self._thread = threading.Thread(target=self._run, name="vllm-core-engine", daemon=True)
        self._thread.start()

    @classmethod
    def from_engine_args(cls, engine_args: EngineArgs,
                         stat_loggers: list[StatLogger] | None = None,
                         engine_core_process: bool | None = None) -> AsyncLLMEngine:
        """``engine_core_process``: the engine core in its own process (None: the platform's
        default)."""
        return cls(LLMEngine.from_engine_args(engine_args, stat_loggers,
                                              engine_core_process=engine_core_process))

    def _wake(self) -> None:
        self._wakeup.set()
        self.engine.notify()

    # ------------------------------------------------------------------ state
    def is_ready(self) -> bool:
        return self._thread.is_alive() and self._error is None and not self._stop

    @property
    def errored(self) -> bool:
        return self._error is not None

    async def check_health(self) -> None:
        """Raise ``EngineDeadError`` when the engine cannot serve: its thread failed or ended,
        or the executor's own probe (``executor.check_health``: a worker process that ended)
        fails, which also fails every request in flight. Cheap: called per request and by the
        server's watchdog."""
        if self._error is None and not self._stop and self._thread.is_alive():
            try:
                self.engine.check_health()
            except Exception as e:  # noqa: BLE001 - the engine cannot serve any more
                logger.error("engine health check failed: %s", e)
                self._die(e)
        if self._error is not None:
            raise EngineDeadError(f"the engine stopped: {self._error}")
        if not self._thread.is_alive():
            raise EngineDeadError("engine thread is not running")

    def get_scheduler_stats(self) -> SchedulerStats:
        """Running / waiting / KV usage after the latest step (a copy, safe to read)."""
        return self._snapshot

    def make_sampling_params(self, **user_fields: Any) -> SamplingParams:
        """SamplingParams where generation_config fills the fields the user left unset."""
        return sampling_params_from_user(self.generation_defaults, **user_fields)

    def check_structured_outputs(self, params: Any) -> None:
        """Validate a grammar constraint and pick its backend (ValueError with the reason)."""
        self.engine.structured_output_manager.prepare(params)

    # ------------------------------------------------------------------ requests
    @property
    def loras(self) -> Any:
        """The engine's ``LoRARegistry`` (read-only use off the engine thread)."""
        return self.engine.loras

    async def add_lora(self, lora_request: Any) -> bool:
        """Load an adapter on the engine thread (see ``LLMEngine.add_lora``)."""
        return await self._on_engine_thread(self.engine.add_lora, lora_request)

    async def remove_lora(self, name: str) -> None:
        """Unload an adapter on the engine thread (see ``LLMEngine.remove_lora``)."""
        await self._on_engine_thread(self.engine.remove_lora, name)

    async def _on_engine_thread(self, fn: Any, *args: Any) -> Any:
        await self.check_health()
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()

        def work() -> None:
            try:
                result: Any = fn(*args)
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                result = e
            loop.call_soon_threadsafe(_settle, future, result)

        self._commands.put(("call", work))
        self._wake()
        return await future

    async def generate(self, prompt: PromptType, sampling_params: SamplingParams,
                       request_id: str, priority: int = 0, lora_request: Any = None
                       ) -> AsyncIterator[RequestOutput]:
        """Stream a request's outputs; the last has ``finished=True``. Raises ValueError for
        bad input before the first output. Cancelling the consumer aborts the request."""
        await self.check_health()
        if self._stop:
            raise EngineDeadError("engine is shutting down")
        max_len = self.config.model.max_model_len
        processed = self.engine.process_inputs(prompt, sampling_params)
        n_prompt = len(processed.prompt_token_ids)
        asked = sampling_params.max_tokens
        if asked is not None and n_prompt + asked > max_len:
            raise ValueError(
                f"This model's maximum context length is {max_len} tokens. However, you "
                f"requested {n_prompt + asked} tokens ({n_prompt} in the messages, {asked} in "
                f"the completion). Please reduce the length of the messages or completion.")
        loop = asyncio.get_running_loop()
        stream = _Stream(loop, asyncio.Queue())
        with self._streams_lock:
            if request_id in self._streams:
                raise ValueError(f"request id {request_id!r} is already in use")
            self._streams[request_id] = stream
        if self._error is not None:       # died after the check: _die may not have seen us
            with self._streams_lock:
                self._streams.pop(request_id, None)
            raise EngineDeadError(f"the engine stopped: {self._error}")
        self._commands.put(("add", request_id, processed, priority, time.time(),
                            lora_request))
        self._wake()
        finished = False
        try:
            while True:
                item = await stream.queue.get()
                if isinstance(item, BaseException):
                    raise item
                finished = item.finished
                yield item
                if finished:
                    return
        finally:
            with self._streams_lock:
                self._streams.pop(request_id, None)
            if not finished:
                self._commands.put(("abort", request_id))
                self._wake()

    async def embed(self, prompts: list[list[int]], pooling: str = "last",
                    normalize: bool = True) -> list[list[float]]:
        """Pooled final hidden states of token-id prompts (``vllm_core.pooling``), computed on
        the engine thread between steps. Raises ValueError for bad input."""
        from vllm_core.pooling import Embedder

        await self.check_health()
        if self._stop:
            raise EngineDeadError("engine is shutting down")
        if not self.engine.in_process:
            raise ValueError("embeddings need the engine core in the server's process; start "
                             "the server with --no-engine-core-process")
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        embedder = Embedder(self.engine.executor.worker.runner,
                            self.config.model.max_model_len)

        def work() -> None:
            try:
                result: Any = embedder.embed(prompts, pooling, normalize)  # type: ignore[arg-type]
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                result = e
            loop.call_soon_threadsafe(_settle, future, result)

        self._commands.put(("call", work))
        self._wake()
        return await future

    async def abort(self, request_id: str) -> None:
        self._commands.put(("abort", request_id))
        self._wake()

    async def shutdown(self, timeout: float = 10.0) -> None:
        self._stop = True
        self._wake()
        await asyncio.to_thread(self._thread.join, timeout)
        self.engine.shutdown()

    # ------------------------------------------------------------------ engine thread
    def _deliver(self, request_id: str, item: Any) -> None:
        with self._streams_lock:
            stream = self._streams.get(request_id)
        if stream is not None:
            stream.loop.call_soon_threadsafe(stream.queue.put_nowait, item)

    def _drain_commands(self) -> None:
        while True:
            try:
                cmd = self._commands.get_nowait()
            except queue.Empty:
                return
            if cmd[0] == "add":
                _, request_id, processed, priority, arrival, lora_request = cmd
                with self._streams_lock:
                    alive = request_id in self._streams
                if not alive:          # the client went away before we got here
                    continue
                try:
                    self.engine.add_request(request_id, processed, arrival_time=arrival,
                                            priority=priority, lora_request=lora_request)
                except ValueError as e:
                    self._deliver(request_id, e)
            elif cmd[0] == "call":
                cmd[1]()
            else:
                self.engine.abort_request(cmd[1])

    def _die(self, error: BaseException) -> None:
        """Record the fatal ``error`` (first one wins) and fail every request in flight with
        ``EngineDeadError``; the engine thread stops at its next iteration. Any thread."""
        if self._error is None:
            if isinstance(error, EngineDeadError):     # the core process: its reason says it
                logger.error("%s; failing all requests", error)
            else:
                logger.error("the engine failed; failing all requests", exc_info=error)
            self._error = error
        dead = EngineDeadError(f"the engine stopped: {self._error}")
        with self._streams_lock:
            ids = list(self._streams)
        for request_id in ids:
            self._deliver(request_id, dead)
        self._wake()

    def _run(self) -> None:
        engine = self.engine
        while not self._stop and self._error is None:
            try:
                self._drain_commands()
                if engine.in_process and not engine.has_unfinished_requests():
                    self._snapshot = engine.scheduler_snapshot()
                    self._wakeup.wait(timeout=1.0)
                    self._wakeup.clear()
                    continue
                # With a core process, step() also waits while idle (for the core's state
                # messages, a notify, or a second: then it checks that the core lives).
                outputs = engine.step()
            except BaseException as e:  # noqa: BLE001 - any failure here kills the engine
                self._die(e)
                return
            self._snapshot = engine.scheduler_snapshot()
            for out in outputs:
                self._deliver(out.request_id, out)
