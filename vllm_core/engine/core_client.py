"""EngineCoreClient: the front end's handle on an engine core in its own process.

It has ``EngineCore``'s interface (``add_request``, ``finish_requests``,
``has_unfinished_requests``, ``step``, ``add_lora``, ``remove_lora``, ``scheduler_snapshot``,
``shutdown``, ``num_blocks``),
so ``LLMEngine`` runs over either. ``step`` does not compute: it waits (up to
``STEP_WAIT_S``, or until ``notify`` is called from another thread) for the core's next
``StepOutputs`` messages and returns everything that has arrived as one ``CoreStep``.
``add_lora`` / ``remove_lora`` block until the core answers (outputs that arrive meanwhile are
kept for the next ``step``).

Processes: ``EngineCoreClient.start`` spawns the core (``core_proc.run_engine_core``) and
connects to it as front end 0; ``EngineCoreClient.connect`` attaches another front end (index
>= 1) to a running core by its input address. Only the starter owns the process (it sends
``Shutdown`` and joins it; front ends that merely connect only disconnect).

Failure: a core that exits, or says ``CoreFailed``, makes every later call raise
``EngineDeadError`` (with the exit code or the core's message) within about a second (the
liveness check runs whenever a wait times out); nothing waits forever. Requests the front end
refuses here (prompt longer than max_model_len, more KV blocks than the cache has) raise
``ValueError`` before anything is sent, with the scheduler's wording.

Thread safety: one thread calls everything except ``notify``.
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from typing import Any

from vllm_core.engine import core_messages as m
from vllm_core.engine.core import CoreStep, CoreStepStats
from vllm_core.engine.errors import EngineDeadError
from vllm_core.engine.request import Request, RequestStatus
from vllm_core.engine.stats import SchedulerStats
from vllm_core.logger import init_logger

logger = init_logger(__name__)

STEP_WAIT_S = 1.0


def new_ipc_address(tag: str) -> str:
    """A fresh ``ipc://`` address in the temp dir (short: unix socket paths are limited)."""
    return f"ipc://{tempfile.gettempdir()}/vc-{tag}-{uuid.uuid4().hex[:12]}"



def drain(fd: int) -> None:
    """Read a non-blocking wake-up pipe until it is empty (``notify`` writes one byte)."""
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass

class EngineCoreClient:
    """See the module docstring. Use ``start`` or ``connect``, not the constructor."""

    def __init__(self, config: Any, input_address: str, client_index: int,
                 process: Any = None) -> None:
        import zmq

        self.zmq = zmq
        self.config = config
        self.input_address = input_address
        self.client_index = client_index
        self.process = process
        self._ctx = zmq.Context()
        self._input = self._ctx.socket(zmq.PUSH)
        self._input.setsockopt(zmq.LINGER, 2000)
        self._input.connect(input_address)
        self._output_address = new_ipc_address(f"out{client_index}")
        self._output = self._ctx.socket(zmq.PULL)
        self._output.bind(self._output_address)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._poller = zmq.Poller()
        self._poller.register(self._output, zmq.POLLIN)
        self._poller.register(self._wake_r, zmq.POLLIN)
        self._encoder = m.encoder()
        self._decoder = m.from_core_decoder()
        self._live: set[str] = set()
        self._snapshot = SchedulerStats()
        self._dead: str | None = None
        self._closed = False
        self._finalizer: Any = None
        self.num_blocks = 0
        self.core_pid: int | None = None
        self.startup_phases: dict[str, float] = {}
        self._ready = False
        self._next_call_id = 0
        self._pending = CoreStep()       # outputs that arrived while a call waited
        self._send(m.Hello(client_index, self._output_address))

    # ------------------------------------------------------------------ construction
    @classmethod
    def start(cls, config: Any, platform: Any) -> EngineCoreClient:
        """Spawn an engine core process for ``config`` and connect to it as front end 0.
        Returns at once; ``wait_ready`` blocks until the core has loaded."""
        from multiprocessing.util import Finalize

        proc, address = start_core_process(config, platform)
        try:
            client = cls(config, address, 0, process=proc)
        except BaseException:
            stop_process(proc, grace_s=0.0)
            raise
        # The core is not a daemon (it may start worker processes), so multiprocessing would
        # join it at interpreter exit: stop it first (exitpriority runs before the join).
        client._finalizer = Finalize(client, _stop_core, args=(proc, address), exitpriority=10)
        return client

    @classmethod
    def connect(cls, config: Any, input_address: str, client_index: int) -> EngineCoreClient:
        """Attach front end ``client_index`` to the core at ``input_address``, started by
        someone else (``start_core_process``); call ``wait_ready`` next. Indices are unique
        per core; front end 0 receives the per-step counters."""
        return cls(config, input_address, client_index)

    def check_alive(self) -> None:
        """Raise EngineDeadError when the core has exited or failed (cheap; no wait)."""
        self._check_process()

    def wait_ready(self, timeout_s: float | None = None) -> None:
        """Block until the core is ready (model loaded, cache allocated, warmed up). Raises
        ``RuntimeError`` with the reason if it fails, exits or times out first (the process
        is stopped then)."""
        if self._ready:
            return
        try:
            self._wait_ready(timeout_s)
        except BaseException:
            if self.process is not None:
                stop_process(self.process, grace_s=0.0)
            self.close_sockets()
            raise
        self._ready = True

    def _wait_ready(self, timeout_s: float | None) -> None:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            if self._output.poll(int(STEP_WAIT_S * 1000)):
                msg = self._decoder.decode(self._output.recv())
                if isinstance(msg, m.Ready):
                    self.num_blocks = msg.num_blocks
                    self.core_pid = msg.pid
                    self.startup_phases = dict(msg.startup_phases)
                    return
                if isinstance(msg, m.CoreFailed):
                    raise RuntimeError(f"the engine core failed to start: {msg.message}")
                continue
            if self.process is not None and not self.process.is_alive():
                raise RuntimeError(f"the engine core process exited with code "
                                   f"{self.process.exitcode} while starting (see its log above)")
            if deadline is not None and time.monotonic() > deadline:
                raise RuntimeError(f"the engine core was not ready within {timeout_s} s")

    # ------------------------------------------------------------------ requests
    def add_request(self, request: Request) -> None:
        self._check()
        self._refuse_impossible(request)
        self._send(m.AddRequest(self.client_index, request.request_id,
                                request.prompt_token_ids, request.sampling_params,
                                request.arrival_time, request.priority, request.parent_id,
                                request.lora_id, m.mm_to_wire(request.mm_features)))
        self._live.add(request.request_id)

    def _refuse_impossible(self, request: Request) -> None:
        """The scheduler's admission checks, made here so that a bad request fails at once."""
        max_len = self.config.model.max_model_len
        n = request.num_prompt_tokens
        rid = request.request_id
        if rid in self._live:
            raise ValueError(f"request id {rid!r} is already in the scheduler")
        if n >= max_len:
            raise ValueError(f"request {rid!r}: the prompt has {n} tokens, but max_model_len "
                             f"is {max_len}; the prompt must be shorter than max_model_len to "
                             "leave room for at least one output token")
        bs = self.config.cache.block_size
        need = -(-(n + 1) // bs)
        usable = self.num_blocks - 1
        if need > usable:
            raise ValueError(f"request {rid!r}: the prompt has {n} tokens; with one output "
                             f"token it needs {need} KV-cache blocks of {bs} tokens, but the "
                             f"whole cache has only {usable} blocks ({usable * bs} tokens)")

    def finish_requests(self, request_ids: list[str], status: RequestStatus) -> None:
        ids = [r for r in request_ids if r in self._live]
        if not ids:
            return
        self._live.difference_update(ids)
        if self._dead is None:
            self._send(m.FinishRequests(ids, int(status)))

    def has_unfinished_requests(self) -> bool:
        return bool(self._live)

    # ------------------------------------------------------------------ LoRA adapters
    def add_lora(self, lora_id: int, name: str, path: str) -> None:
        """Load an adapter in the core (see ``EngineCore.add_lora``); ValueError if refused."""
        self._call("add", lora_id, name, path)

    def remove_lora(self, lora_id: int) -> None:
        """Unload an adapter in the core (see ``EngineCore.remove_lora``)."""
        self._call("remove", lora_id)

    def _call(self, op: str, lora_id: int, name: str = "", path: str = "") -> None:
        self._check()
        self._next_call_id += 1
        call_id = self._next_call_id
        self._send(m.LoRACall(self.client_index, call_id, op, lora_id, name, path))
        while True:
            if not self._output.poll(int(STEP_WAIT_S * 1000)):
                self._check_process()
                continue
            msg = self._decoder.decode(self._output.recv())
            if isinstance(msg, m.CallDone) and msg.call_id == call_id:
                if msg.error is not None:
                    raise ValueError(msg.error)
                return
            self._take(self._pending, msg)

    # ------------------------------------------------------------------ outputs
    def notify(self) -> None:
        """Wake a ``step`` waiting on another thread (new commands to send). Thread-safe."""
        try:
            os.write(self._wake_w, b"\0")
        except (BlockingIOError, OSError):
            pass                                   # already woken, or closed

    def step(self, wait_s: float = STEP_WAIT_S) -> CoreStep:
        """Everything the core has sent since the last call, as one ``CoreStep`` (empty when
        nothing came within ``wait_s`` or ``notify`` was called). Raises EngineDeadError."""
        self._check()
        zmq = self.zmq
        if self._pending.outputs or self._pending.stats is not None:
            wait_s = 0.0                          # a call left outputs: no waiting
        events = dict(self._poller.poll(int(wait_s * 1000)))
        if self._wake_r in events:
            drain(self._wake_r)
        result, self._pending = self._pending, CoreStep()
        if self._output not in events:
            if not events:
                self._check_process()
            return result
        while True:
            try:
                raw = self._output.recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            self._take(result, self._decoder.decode(raw.buffer))
        return result

    def _take(self, result: CoreStep, msg: Any) -> None:
        if isinstance(msg, m.StepOutputs):
            self._absorb(result, msg)
        elif isinstance(msg, m.CoreFailed):
            self._dead = f"the engine core failed: {msg.message}"
            raise EngineDeadError(self._dead)

    def _absorb(self, result: CoreStep, msg: m.StepOutputs) -> None:
        self._snapshot = msg.snapshot
        for out in msg.outputs:
            if out.req_id not in self._live:
                continue                           # finished here already (stop string)
            result.outputs.append(out)
            if out.finish_reason is not None:
                self._live.discard(out.req_id)
        if msg.stats is not None:
            s = msg.stats
            stats = CoreStepStats(s.scheduler_stats, s.num_prompt_tokens, s.step_time,
                                  s.expert_load)
            if result.stats is None:
                result.stats = stats
            else:
                from vllm_core.engine.core import _accumulate

                _accumulate(result.stats, stats)
        elif result.stats is None and msg.outputs and self.client_index != 0:
            result.stats = CoreStepStats(self._snapshot_without_counters(), 0, 0.0)

    def _snapshot_without_counters(self) -> SchedulerStats:
        s = self._snapshot
        return SchedulerStats(num_running_reqs=s.num_running_reqs,
                              num_waiting_reqs=s.num_waiting_reqs,
                              kv_cache_usage=s.kv_cache_usage,
                              num_total_blocks=s.num_total_blocks)

    def scheduler_snapshot(self) -> SchedulerStats:
        return self._snapshot

    # ------------------------------------------------------------------ health
    @property
    def is_dead(self) -> bool:
        return self._dead is not None

    def _check(self) -> None:
        if self._dead is not None:
            raise EngineDeadError(self._dead)

    def _check_process(self) -> None:
        """The starter watches its process; a connected front end watches the core's pid."""
        if self.process is not None:
            if not self.process.is_alive():
                self._dead = (f"the engine core process (pid {self.process.pid}) exited with "
                              f"code {self.process.exitcode}")
        elif self.core_pid is not None and not _pid_alive(self.core_pid):
            self._dead = f"the engine core process (pid {self.core_pid}) is gone"
        self._check()

    def _send(self, msg: Any) -> None:
        self._input.send(self._encoder.encode(msg), copy=False)

    # ------------------------------------------------------------------ end
    def shutdown(self, timeout_s: float = 10.0) -> None:
        """Stop the core (if this client started it: ``Shutdown``, then terminate, then kill
        after ``timeout_s``) and close the sockets. Idempotent."""
        if self._closed:
            return
        if self.process is not None and self.process.is_alive():
            try:
                self._send(m.Shutdown())
            except Exception:  # noqa: BLE001
                pass
            stop_process(self.process, grace_s=timeout_s)
        if self._finalizer is not None:
            self._finalizer.cancel()
        self.close_sockets()

    @property
    def output_socket(self) -> Any:
        """The PULL socket this front end's outputs from the core arrive on; a client over
        several cores (``DPEngineCoreClient``) polls theirs together."""
        return self._output

    def close_sockets(self) -> None:
        """Close this client's sockets, ZeroMQ context and wake-up pipe; the core process is
        left alone (``shutdown`` stops it first). Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._input.close(linger=0)
        self._output.close(linger=0)
        self._ctx.term()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass


def start_core_process(config: Any, platform: Any) -> tuple[Any, str]:
    """Spawn ``core_proc.run_engine_core`` for ``config``; (the process, its input address)."""
    import multiprocessing

    from vllm_core.engine.core_proc import run_engine_core

    address = new_ipc_address("core")
    ctx = multiprocessing.get_context("spawn")
    proc = ctx.Process(target=run_engine_core, name="vllm-core-engine-core",
                       args=(config, platform, address))
    proc.start()
    return proc, address


def send_shutdown(input_address: str) -> None:
    """Ask the core at ``input_address`` to exit (for the owner that has no client)."""
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 2000)
    sock.connect(input_address)
    sock.send(m.encoder().encode(m.Shutdown()))
    sock.close()
    ctx.term()


def _stop_core(proc: Any, address: str) -> None:
    if proc.is_alive():
        try:
            send_shutdown(address)
        except Exception:  # noqa: BLE001 - the process is stopped below anyway
            pass
    stop_process(proc, grace_s=5.0)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_process(proc: Any, grace_s: float) -> None:
    """Join ``proc`` for ``grace_s``, then terminate it, then kill it (5 s each)."""
    proc.join(grace_s)
    if proc.is_alive():
        proc.terminate()
        proc.join(5.0)
    if proc.is_alive():
        proc.kill()
        proc.join(5.0)
