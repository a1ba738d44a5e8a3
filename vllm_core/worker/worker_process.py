"""The main loop of one worker process of the multiprocess executor.

The process is spawned (never forked) by ``MultiprocExecutor``. It builds the platform's
worker for its rank, joins the process groups, loads its shard of the model, reports ready,
then serves messages from the shared-memory ring: ``(seq, method, args)`` pickled once by the
executor and read by every rank.

Replies go back on this rank's pipe as ``(seq, "ok" | "error", value)``. ``execute_model`` is
answered by the sampling rank only (its ``ModelRunnerOutput``); every other call by every rank.
Steps pipeline: a step is launched as soon as its message arrives and collected when the next
message arrives, when no message is waiting, or at once when its result is already there (a
host device computes while launching), so the engine's next ``SchedulerOutput`` can be read
while the device runs this one.

Lifetime: SIGINT is ignored (Ctrl-C belongs to the engine process, which shuts the workers
down); the loop exits on ``shutdown``, when the parent process disappears, or on an error
(reported first). The process never outlives its parent by more than ``_PARENT_CHECK_S``.
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
import traceback
from multiprocessing.connection import Connection
from typing import Any

from vllm_core.distributed.shm_ring import ShmRing

_PARENT_CHECK_S = 1.0


class ParentGone(RuntimeError):
    pass


def worker_main(config: Any, platform: Any, worker_cls: type, rank: int, local_rank: int,
                init_method: str, ring_spec: tuple[str, int, int, int], reply: Connection,
                replies_steps: bool) -> None:
    """Entry point of a spawned worker process (see the module docstring)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = os.getppid()

    def check_parent() -> None:
        if os.getppid() != parent:
            raise ParentGone("the engine process exited")

    ring = None
    worker = None
    try:
        from vllm_core.plugins import load_general_plugins

        load_general_plugins()
        worker = worker_cls(config, rank, local_rank, platform=platform,
                            distributed_init_method=init_method)
        worker.init_device()
        worker.load_model()
        ring = ShmRing.attach(ring_spec, rank)
        reply.send((-1, "ok", os.getpid()))
        _serve(worker, ring, reply, replies_steps, check_parent)
    except ParentGone:
        pass
    except BaseException:  # noqa: BLE001 - reported to the executor, then exit non-zero
        try:
            reply.send((-1, "error", f"rank {rank}: {traceback.format_exc()}"))
        except (OSError, EOFError):
            pass
        sys.exit(1)
    finally:
        if worker is not None:
            try:
                worker.shutdown()
            except Exception:  # noqa: BLE001 - exiting anyway
                pass
        if ring is not None:
            ring.close()


def _serve(worker: Any, ring: ShmRing, reply: Connection, replies_steps: bool,
           check_parent: Any) -> None:
    pending: tuple[int, Any] | None = None

    def finish() -> None:
        nonlocal pending
        if pending is None:
            return
        seq, step = pending
        pending = None
        out = step.result()
        if replies_steps:
            reply.send((seq, "ok", out))

    while True:
        if pending is not None and (not ring.poll() or _finished(pending[1])):
            finish()                      # nothing queued, or already computed: deliver it now
        seq, method, args = pickle.loads(ring.read(check=check_parent))
        try:
            if method == "execute_model":
                step = worker.execute_model_async(args[0])
                finish()
                pending = (seq, step)
                continue
            finish()
            if method == "shutdown":
                reply.send((seq, "ok", None))
                return
            value = getattr(worker, method)(*args) if method != "num_blocks" else (
                _num_blocks(worker))
            reply.send((seq, "ok", value))
        except Exception:  # noqa: BLE001 - engine-fatal: report and stop
            reply.send((seq, "error", f"rank {worker.rank}: {traceback.format_exc()}"))
            raise


def _finished(step: Any) -> bool:
    """Whether a launched step's result is ready without waiting: always on a device that is
    synchronous with the host (no ``done`` event), else when its event has completed. Such a
    step is answered before the next message is read, so the engine gets it a whole forward
    sooner (pipeline micro-batching schedules the step's requests again only then)."""
    done = getattr(step, "done", None)
    if done is None:
        return True
    query = getattr(done, "query", None)          # optional on a step event
    return query is not None and bool(query())


def _num_blocks(worker: Any) -> int:
    """KV blocks this rank's memory budget holds (the executor takes the minimum)."""
    cache = worker.config.cache
    if cache.num_blocks_override is not None:
        return int(cache.num_blocks_override)
    return int(worker.determine_available_memory() // worker.kv_cache_bytes_per_block())
