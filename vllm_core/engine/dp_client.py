"""DPEngineCoreClient: data parallelism, N engine-core processes behind one front end.

``--data-parallel-size N`` (``LLM(data_parallel_size=N)``) runs N independent engine cores,
each the ordinary ``core_proc.run_engine_core`` process with its own scheduler, KV cache and
executor (so each may itself be TP x PP-sharded: ``config.parallel.world_size`` ranks). Core
``r`` gets the devices ``Platform.data_parallel_env(r, world_size)`` names (on CUDA the ranks
``[r * world_size, (r + 1) * world_size)`` of the visible GPUs; nothing on CPU), applied in
its process before anything touches a device.

The client has ``EngineCoreClient``'s interface, so ``LLMEngine`` (and through it ``LLM``,
``AsyncLLMEngine`` and the OpenAI server) runs over it unchanged. It holds one
``EngineCoreClient`` per core (as front end 0 of each) and a ``DPRouter``:

- ``add_request`` routes a new request to the least-loaded core (``dp_router.pick_core``: the
  waiting + running counts each core reports with its step outputs, KV usage as tie-break);
  the request stays there for its life (aborts and stop-string finishes go to that core), and
  the children of one ``n > 1`` request stay together;
- ``step`` waits (up to ``STEP_WAIT_S``, or until ``notify``) on every core's output socket
  at once and returns what all of them sent as one ``CoreStep``; its stats add up the cores
  (``aggregate_snapshots``: running and waiting summed, KV usage over all blocks, the per-step
  counters summed), so the Prometheus metrics and the log line describe the whole engine;
- LoRA adapters are loaded in (and removed from) every core;
- a core that exits or reports a failure makes every later call raise ``EngineDeadError``
  naming the core (every core is checked at least once a second, also while the others keep
  sending outputs), exactly as with one core: the server answers 503 and exits 1; nothing
  waits forever.

Start: all cores are spawned first and load in parallel; ``wait_ready`` waits for all (one
that fails stops the others). With ``--api-server-count M`` the supervisor spawns the cores
and each API server attaches with ``connect`` as front end ``i`` of every core. ``num_blocks`` is the smallest core's, so a request the front
end admits fits any core. Shutdown asks every core to stop first, then joins them.

Thread safety: one thread calls everything except ``notify``.
"""

from __future__ import annotations

import copy
import os
import time
from typing import Any

from vllm_core.engine.core import CoreStep, CoreStepStats
from vllm_core.engine.core_client import (
    STEP_WAIT_S,
    EngineCoreClient,
    drain,
    new_ipc_address,
    send_shutdown,
    stop_process,
)
from vllm_core.engine.dp_router import CoreLoad, DPRouter
from vllm_core.engine.errors import EngineDeadError
from vllm_core.engine.request import Request, RequestStatus
from vllm_core.engine.stats import SchedulerStats
from vllm_core.logger import init_logger

logger = init_logger(__name__)


def run_dp_engine_core(config: Any, platform: Any, input_address: str, dp_rank: int,
                       env: dict[str, str]) -> None:
    """Process target of data-parallel core ``dp_rank``: apply its device environment (before
    anything initialises a device), then run the ordinary engine core loop."""
    os.environ.update(env)
    from vllm_core.engine.core_proc import run_engine_core

    logger.info("data-parallel engine core %d starting (pid %d)%s", dp_rank, os.getpid(),
                "".join(f", {k}={v}" for k, v in env.items()))
    run_engine_core(config, platform, input_address)


def start_dp_core_process(config: Any, platform: Any, dp_rank: int,
                          env: dict[str, str]) -> tuple[Any, str]:
    """Spawn data-parallel core ``dp_rank``; (the process, its input address)."""
    import multiprocessing

    address = new_ipc_address(f"dp{dp_rank}")
    ctx = multiprocessing.get_context("spawn")
    proc = ctx.Process(target=run_dp_engine_core, name=f"vllm-core-engine-core-dp{dp_rank}",
                       args=(config, platform, address, dp_rank, env))
    proc.start()
    return proc, address


def aggregate_snapshots(snapshots: list[SchedulerStats]) -> SchedulerStats:
    """The engine-wide state: requests summed (per LoRA adapter too), KV usage as the fraction
    of all cores' blocks in use, the per-step counters summed."""
    total_blocks = sum(s.num_total_blocks for s in snapshots)
    used = sum(s.kv_cache_usage * s.num_total_blocks for s in snapshots)
    engine = SchedulerStats(
        num_running_reqs=sum(s.num_running_reqs for s in snapshots),
        num_waiting_reqs=sum(s.num_waiting_reqs for s in snapshots),
        kv_cache_usage=used / total_blocks if total_blocks else 0.0,
        num_total_blocks=total_blocks)
    for s in snapshots:
        engine.add_step_counters(s)
        for name, n in s.lora_running.items():
            engine.lora_running[name] = engine.lora_running.get(name, 0) + n
        for name, n in s.lora_waiting.items():
            engine.lora_waiting[name] = engine.lora_waiting.get(name, 0) + n
    return engine


class DPEngineCoreClient:
    """See the module docstring. Build with ``start``."""

    def __init__(self, config: Any, clients: list[EngineCoreClient],
                 addresses: list[str]) -> None:
        import zmq

        self.config = config
        self.clients = clients
        self.addresses = addresses
        self.router = DPRouter(len(clients))
        self._poller = zmq.Poller()
        for client in clients:
            self._poller.register(client.output_socket, zmq.POLLIN)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._poller.register(self._wake_r, zmq.POLLIN)
        self._dead: str | None = None
        self._closed = False
        self._finalizer: Any = None
        self._ready = False
        self._last_liveness_check = time.monotonic()
        self.num_blocks = 0
        self.startup_phases: dict[str, float] = {}      # per phase, the slowest core's

    @classmethod
    def start(cls, config: Any, platform: Any) -> DPEngineCoreClient:
        """Spawn ``config.parallel.data_parallel_size`` cores and connect to each; returns at
        once (``wait_ready`` blocks until all have loaded). ValueError, before anything
        starts, when the platform cannot give every core its devices."""
        from multiprocessing.util import Finalize

        par = config.parallel
        envs = [dict(platform.data_parallel_env(r, par.world_size))
                for r in range(par.data_parallel_size)]
        procs: list[Any] = []
        addresses: list[str] = []
        clients: list[EngineCoreClient] = []
        try:
            for rank, env in enumerate(envs):
                proc, address = start_dp_core_process(config, platform, rank, env)
                procs.append(proc)
                addresses.append(address)
                clients.append(EngineCoreClient(config, address, 0, process=proc))
            client = cls(config, clients, addresses)
        except BaseException:
            for c in clients:
                c.close_sockets()
            _stop_all(procs, addresses, grace_s=0.0)
            raise
        # Cores are not daemons (they start worker processes): stop them before
        # multiprocessing joins its children at interpreter exit.
        client._finalizer = Finalize(client, _stop_all, args=(procs, addresses, 5.0),
                                     exitpriority=10)
        return client

    @classmethod
    def connect(cls, config: Any, input_addresses: list[str],
                client_index: int) -> DPEngineCoreClient:
        """Attach front end ``client_index`` to running cores (started by someone else with
        ``start_dp_core_process``, in data-parallel rank order); call ``wait_ready`` next.
        Each front end routes by the counts every core reports, so several balance together;
        only front end 0 receives the per-step counters (see ``core_messages``)."""
        clients: list[EngineCoreClient] = []
        try:
            for address in input_addresses:
                clients.append(EngineCoreClient.connect(config, address, client_index))
            return cls(config, clients, list(input_addresses))
        except BaseException:
            for c in clients:
                c.close_sockets()
            raise

    # ------------------------------------------------------------------ readiness
    def wait_ready(self, timeout_s: float | None = None) -> None:
        """Block until every core is ready; RuntimeError naming the core that failed (all
        cores are stopped then)."""
        if self._ready:
            return
        try:
            for rank, client in enumerate(self.clients):
                try:
                    client.wait_ready(timeout_s)
                except RuntimeError as e:
                    raise RuntimeError(f"data-parallel engine core {rank}: {e}") from e
        except BaseException:
            self.shutdown(timeout_s=0.0)
            raise
        self.num_blocks = min(c.num_blocks for c in self.clients)
        phases: dict[str, float] = {}
        for c in self.clients:                  # the cores start side by side: the slowest
            for name, seconds in c.startup_phases.items():
                phases[name] = max(phases.get(name, 0.0), seconds)
        self.startup_phases = phases
        self._ready = True
        logger.info("data parallelism: %d engine cores ready (pids %s), %d KV blocks each "
                    "(smallest)", len(self.clients), self.core_pids, self.num_blocks)

    @property
    def core_pids(self) -> list[int | None]:
        return [c.core_pid for c in self.clients]

    # ------------------------------------------------------------------ requests
    def load(self, core: int) -> CoreLoad:
        """Core ``core``'s load (see ``dp_router``)."""
        s = self.clients[core].scheduler_snapshot()
        reported = s.num_running_reqs + s.num_waiting_reqs
        return CoreLoad(max(reported, self.router.live_on(core)), s.kv_cache_usage)

    def add_request(self, request: Request) -> None:
        """Route ``request`` and send it to its core. ValueError (nothing queued) when the
        front end refuses it; EngineDeadError when a core is gone."""
        self._check()
        loads = [self.load(i) for i in range(len(self.clients))]
        core = self.router.assign(request.request_id, request.parent_id, loads)
        try:
            self.clients[core].add_request(request)
        except BaseException:
            self.router.release(request.request_id)
            raise

    def finish_requests(self, request_ids: list[str], status: RequestStatus) -> None:
        by_core: dict[int, list[str]] = {}
        for rid in request_ids:
            core = self.router.core_of(rid)
            if core is not None:
                by_core.setdefault(core, []).append(rid)
                self.router.release(rid)
        for core, ids in by_core.items():
            self.clients[core].finish_requests(ids, status)

    def has_unfinished_requests(self) -> bool:
        return any(c.has_unfinished_requests() for c in self.clients)

    # ------------------------------------------------------------------ LoRA adapters
    def add_lora(self, lora_id: int, name: str, path: str) -> None:
        """Load an adapter in every core (a request using it may go to any); ValueError, with
        the adapter unloaded again where it was loaded, if a core refuses it."""
        self._check()
        loaded: list[EngineCoreClient] = []
        try:
            for client in self.clients:
                client.add_lora(lora_id, name, path)
                loaded.append(client)
        except ValueError:
            for client in loaded:
                client.remove_lora(lora_id)
            raise
        finally:
            self._last_liveness_check = 0.0    # outputs kept during the calls: next step

    def remove_lora(self, lora_id: int) -> None:
        """Unload an adapter from every core."""
        self._check()
        try:
            for client in self.clients:
                client.remove_lora(lora_id)
        finally:
            self._last_liveness_check = 0.0

    # ------------------------------------------------------------------ outputs
    def notify(self) -> None:
        """Wake a ``step`` waiting on another thread. Thread-safe."""
        try:
            os.write(self._wake_w, b"\0")
        except (BlockingIOError, OSError):
            pass

    def step(self, wait_s: float = STEP_WAIT_S) -> CoreStep:
        """Everything any core has sent since the last call, as one ``CoreStep`` (empty when
        nothing came within ``wait_s`` or ``notify`` was called). Raises EngineDeadError."""
        self._check()
        events = dict(self._poller.poll(int(wait_s * 1000)))
        if self._wake_r in events:
            drain(self._wake_r)
        result = CoreStep()
        stats: list[CoreStepStats] = []
        now = time.monotonic()
        if not events or now - self._last_liveness_check >= STEP_WAIT_S:
            # A busy core's outputs must not hide a dead one: every core is looked at (and its
            # process checked when it sent nothing) at least once a second.
            self._last_liveness_check = now
            events = {}
        for rank, client in enumerate(self.clients):
            if events and client.output_socket not in events:
                continue
            try:
                # Nothing waits here: the poll above did. A core whose socket has nothing has
                # its process checked (``EngineCoreClient.step`` does when its poll is empty).
                part = client.step(wait_s=0.0)
            except EngineDeadError as e:
                self._dead = f"data-parallel engine core {rank}: {e}"
                raise EngineDeadError(self._dead) from e
            for out in part.outputs:
                if out.finish_reason is not None:
                    self.router.release(out.req_id)
            result.outputs.extend(part.outputs)
            if part.stats is not None:
                stats.append(part.stats)
        if stats:
            result.stats = self._engine_stats(stats)
        return result

    def _engine_stats(self, stats: list[CoreStepStats]) -> CoreStepStats:
        """The cores' step stats as one engine's: the gauges of every core's latest state, the
        counters (prefix cache, preemptions, speculative decoding, prompt tokens, expert load)
        summed, the step time the longest (the cores run side by side)."""
        from vllm_core.engine.core import _accumulate

        merged = CoreStepStats(None, 0, 0.0)
        for s in stats:
            step_time = max(merged.step_time, s.step_time)
            _accumulate(merged, CoreStepStats(copy.copy(s.scheduler_stats), s.num_prompt_tokens,
                                              s.step_time, s.expert_load))
            merged.step_time = step_time
        if merged.scheduler_stats is not None:
            counters = merged.scheduler_stats
            engine = aggregate_snapshots([c.scheduler_snapshot() for c in self.clients])
            engine.prefix_cache_queries = counters.prefix_cache_queries
            engine.prefix_cache_hits = counters.prefix_cache_hits
            engine.num_preemptions = counters.num_preemptions
            engine.spec_decoding = counters.spec_decoding
            merged.scheduler_stats = engine
        return merged

    def scheduler_snapshot(self) -> SchedulerStats:
        """The engine-wide state after the latest steps (``aggregate_snapshots``)."""
        return aggregate_snapshots([c.scheduler_snapshot() for c in self.clients])

    # ------------------------------------------------------------------ health
    @property
    def is_dead(self) -> bool:
        return self._dead is not None

    def check_alive(self) -> None:
        """Raise EngineDeadError when any core has exited or failed (cheap; no wait)."""
        self._check()
        for rank, client in enumerate(self.clients):
            try:
                client.check_alive()
            except EngineDeadError as e:
                self._dead = f"data-parallel engine core {rank}: {e}"
                raise EngineDeadError(self._dead) from e

    def _check(self) -> None:
        if self._dead is not None:
            raise EngineDeadError(self._dead)

    # ------------------------------------------------------------------ end
    def shutdown(self, timeout_s: float = 10.0) -> None:
        """Ask every core to stop, then join each (terminate, then kill, after
        ``timeout_s``) and close the sockets. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for client, address in zip(self.clients, self.addresses, strict=True):
            if client.process is not None and client.process.is_alive():
                try:
                    send_shutdown(address)
                except Exception:  # noqa: BLE001 - the process is stopped below anyway
                    pass
        deadline = time.monotonic() + timeout_s
        for client in self.clients:
            client.shutdown(timeout_s=max(0.0, deadline - time.monotonic()))
        if self._finalizer is not None:
            self._finalizer.cancel()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass


def _stop_all(procs: list[Any], addresses: list[str], grace_s: float) -> None:
    for proc, address in zip(procs, addresses, strict=False):
        if proc.is_alive():
            try:
                send_shutdown(address)
            except Exception:  # noqa: BLE001
                pass
    for proc in procs:
        stop_process(proc, grace_s=grace_s)
