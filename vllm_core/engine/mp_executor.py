"""MultiprocExecutor: one spawned process per rank on this host (``--distributed-executor-
backend mp``).

Every call is broadcast once through a shared-memory ring (``ShmRing``: the pickled
``SchedulerOutput`` is written once, read by every rank); replies come back on one pipe per
rank: ``execute_model`` from the sampling rank only (last pipeline stage, TP rank 0), other
calls from every rank. The engine process holds no model.

Faults: waiting for a reply watches every worker's process sentinel; a worker that exits makes
the call raise ``RuntimeError`` naming its rank, pid and exit code at once, and one that sends
nothing for ``VLLM_WORKER_STEP_TIMEOUT_S`` is declared hung. Either way every worker is
killed before the error propagates, so the engine fails loudly and never hangs. ``shutdown``
(also run by a finalizer at interpreter exit) stops the workers (politely, then SIGTERM, then
SIGKILL) and unlinks the shared memory: nothing is left behind.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import socket
import time
import weakref
from multiprocessing.connection import Connection, wait
from typing import Any

from vllm_core import envs
from vllm_core.config import EngineConfig
from vllm_core.distributed.parallel_context import sampling_rank
from vllm_core.distributed.shm_ring import ShmRing
from vllm_core.engine.ranked_executor import RankedExecutor
from vllm_core.logger import init_logger
from vllm_core.messages import ModelRunnerOutput, SchedulerOutput

# how long a worker's error report waits for its peers' deaths to become visible
# (_let_dying_ranks_exit), so that the failure names the rank that died first
PEER_DEATH_GRACE_S = 1.0

logger = init_logger(__name__)


class WorkerFailure(RuntimeError):
    """A worker process died, hung or raised; the engine cannot continue."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop_processes(procs: list[Any], ring: ShmRing | None, grace_s: float = 5.0) -> None:
    """Join, then terminate, then kill every process; close and unlink the ring."""
    deadline = time.monotonic() + grace_s
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(2.0)
        if p.is_alive():
            p.kill()
            p.join(2.0)
    if ring is not None:
        ring.close()


class _PendingReply:
    """``execute_model_async``'s handle: the sampling rank's reply to message ``seq``."""

    __slots__ = ("executor", "seq", "output")

    def __init__(self, executor: MultiprocExecutor, seq: int) -> None:
        self.executor = executor
        self.seq = seq
        self.output: ModelRunnerOutput | None = None

    def result(self) -> ModelRunnerOutput:
        if self.output is None:
            self.output = self.executor._reply_of(self.executor.output_rank, self.seq)
        return self.output


class MultiprocExecutor(RankedExecutor):
    """Drives ``tensor_parallel_size * pipeline_parallel_size`` worker processes."""

    def __init__(self, config: EngineConfig, platform: Any) -> None:
        from vllm_core.engine.executor import _import_class
        from vllm_core.worker.worker_process import worker_main

        par = config.parallel
        self.config = config
        self.world_size = par.world_size
        self.output_rank = sampling_rank(par.tensor_parallel_size, par.pipeline_parallel_size)
        self.step_timeout_s = envs.worker_step_timeout_s()
        self._seq = 0
        self._replies: dict[tuple[int, int], Any] = {}
        self._failed: str | None = None
        self.procs: list[Any] = []
        self.pipes: list[Connection] = []
        self.ring = ShmRing.create(self.world_size)
        self._finalizer = weakref.finalize(self, _stop_processes, self.procs, self.ring, 0.0)
        worker_cls = _import_class(platform.worker_class())
        init_method = f"tcp://127.0.0.1:{_free_port()}"
        ctx = multiprocessing.get_context("spawn")
        for rank in range(self.world_size):
            recv_end, send_end = ctx.Pipe(duplex=False)
            proc = ctx.Process(
                target=worker_main, name=f"vllm-core-worker-{rank}", daemon=True,
                args=(config, platform, worker_cls, rank, rank, init_method, self.ring.spec,
                      send_end, rank == self.output_rank))
            proc.start()
            send_end.close()
            self.procs.append(proc)
            self.pipes.append(recv_end)
        try:
            pids = [self._reply_of(r, -1, envs.worker_start_timeout_s())
                    for r in range(self.world_size)]
        except WorkerFailure as e:
            if "died with exit code 1" in str(e) and "Traceback" not in str(e):
                raise WorkerFailure(
                    f"{e} while starting, before reporting an error: workers are spawned, so a "
                    "script that builds the engine needs an `if __name__ == \"__main__\":` "
                    "guard") from None
            raise
        except BaseException:
            self._abort()
            raise
        logger.info("mp executor: %d workers ready (pids %s), tp=%d pp=%d", self.world_size,
                    pids, par.tensor_parallel_size, par.pipeline_parallel_size)

    # ------------------------------------------------------------------ messaging
    def _broadcast(self, method: str, *args: Any) -> int:
        if self._failed is not None:
            raise WorkerFailure(self._failed)
        seq = self._seq
        self._seq += 1
        payload = pickle.dumps((seq, method, args), protocol=pickle.HIGHEST_PROTOCOL)
        try:
            self.ring.write(payload, timeout_s=self.step_timeout_s, check=self._check_alive)
        except TimeoutError as e:
            self._fail(f"a worker stopped reading its messages ({e})")
        return seq

    def _check_alive(self) -> None:
        for rank, p in enumerate(self.procs):
            if not p.is_alive():
                self._fail(f"worker rank {rank} (pid {p.pid}) died with exit code "
                           f"{p.exitcode}")

    def _reply_of(self, rank: int, seq: int, timeout_s: float | None = None) -> Any:
        """Wait for ``rank``'s reply to message ``seq`` (replies arrive in order)."""
        key = (rank, seq)
        timeout_s = self.step_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        pipe, proc = self.pipes[rank], self.procs[rank]
        while key not in self._replies:
            if self._failed is not None:
                raise WorkerFailure(self._failed)
            left = deadline - time.monotonic()
            if left <= 0:
                self._fail(f"no reply from worker rank {rank} (pid {proc.pid}) for "
                           f"{timeout_s:.0f} s: a worker hung (set VLLM_WORKER_STEP_TIMEOUT_S "
                           "to wait longer)")
            sentinels = [p.sentinel for p in self.procs]
            ready = wait([pipe, *sentinels], timeout=min(left, 1.0))
            if pipe in ready:
                try:
                    got_seq, status, value = pipe.recv()
                except (EOFError, OSError):
                    proc.join(1.0)
                    self._fail(f"worker rank {rank} (pid {proc.pid}) died with exit code "
                               f"{proc.exitcode}")
                if status == "error":
                    self._worker_error(value)
                self._replies[(rank, got_seq)] = value
                continue
            if ready:
                # a process ended: give its last words (an error report) a moment to arrive
                for r, p in enumerate(self.procs):
                    if not p.is_alive() and self.pipes[r].poll(0.2):
                        try:
                            _, status, value = self.pipes[r].recv()
                        except (EOFError, OSError):
                            continue
                        if status == "error":
                            self._worker_error(value)
                self._check_alive()
        return self._replies.pop(key)

    def _fail(self, why: str) -> None:
        dead = self._dead_ranks()
        if dead and not why.startswith("worker rank"):
            why = f"{dead}; then {why}"          # the root cause first
        self._failed = f"distributed engine stopped: {why}"
        logger.error("%s", self._failed)
        self._abort()
        raise WorkerFailure(self._failed)

    def _worker_error(self, report: Any) -> None:
        """Fail with a worker's error report, once the ranks that are dying have exited."""
        self._let_dying_ranks_exit()
        self._fail(f"worker failed: {report}")

    def _let_dying_ranks_exit(self) -> None:
        """Wait up to ``PEER_DEATH_GRACE_S`` for worker processes to end. A rank's error is
        often a peer's death seen through a collective (its connection reset): the kernel
        closes a killed process's sockets before it marks the process exited, so without this
        the failure would name the rank that noticed instead of the one that died."""
        deadline = time.monotonic() + PEER_DEATH_GRACE_S
        running = [p for p in self.procs if p.is_alive()]
        while running and (left := deadline - time.monotonic()) > 0:
            ended = wait([p.sentinel for p in running], timeout=left)
            if not ended:
                break
            running = [p for p in running if p.sentinel not in ended]

    def _dead_ranks(self) -> str:
        """'worker rank R (pid P) died with exit code C' for each process that ended."""
        for p in self.procs:
            p.join(0.05 if p.exitcode is None and not p.is_alive() else 0)
        return "; ".join(f"worker rank {r} (pid {p.pid}) died with exit code {p.exitcode}"
                         for r, p in enumerate(self.procs) if not p.is_alive())

    def check_health(self) -> None:
        """Raise ``WorkerFailure`` when the executor has failed or a worker process has ended.
        Read-only (it polls the process sentinels and reaps nothing), so another thread may
        call it while a step runs: the server's health probe does."""
        if self._failed is not None:
            raise WorkerFailure(self._failed)
        ended = wait([p.sentinel for p in self.procs], timeout=0)
        if ended:
            ranks = [r for r, p in enumerate(self.procs) if p.sentinel in ended]
            raise WorkerFailure(
                "distributed engine stopped: " + "; ".join(
                    f"worker rank {r} (pid {self.procs[r].pid}) exited" for r in ranks))

    def _abort(self) -> None:
        _stop_processes(self.procs, self.ring, grace_s=0.0)

    def collective_rpc(self, method: str, *args: Any) -> list[Any]:
        """Call ``method(*args)`` on every rank's worker; their results in rank order."""
        seq = self._broadcast(method, *args)
        return [self._reply_of(r, seq) for r in range(self.world_size)]

    # ------------------------------------------------------------------ executor contract
    def execute_model_async(self, scheduler_output: SchedulerOutput) -> _PendingReply:
        return _PendingReply(self, self._broadcast("execute_model", scheduler_output))

    def shutdown(self) -> None:
        """Stop every worker and unlink the shared memory (idempotent)."""
        if not self._finalizer.alive:
            return
        if self._failed is None and all(p.is_alive() for p in self.procs):
            try:
                seq = self._broadcast("shutdown")
                for r in range(self.world_size):
                    self._reply_of(r, seq, timeout_s=10.0)
            except Exception as e:  # noqa: BLE001 - stopping them anyway
                logger.warning("workers did not shut down cleanly: %s", e)
        _stop_processes(self.procs, None, grace_s=5.0)
        self._finalizer()                 # closes and unlinks the ring

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def __repr__(self) -> str:
        return f"MultiprocExecutor(world_size={self.world_size}, pid={os.getpid()})"
