"""The main loop of one worker process of the multiprocess executor.

The process is spawned (never forked) by ``MultiprocExecutor``. It builds the platform's
worker for its rank, joins the process groups, loads its shard of the model, reports ready,
then serves messages from the shared-memory ring: ``(seq, method, args)`` pickled once by the
executor and read by every rank.

Replies go back on this rank's pipe as ``(seq, "ok" | "error", value)``. ``execute_model`` is
answered by the sampling rank only (its ``ModelRunnerOutput``); every other call by every rank.
Steps pipeline: a step is launched as soon as its message arrives. On a host device (no step
event: the step is computed when the launch returns) it is answered at once. On an
accelerator the worker waits for whichever comes first, the next message or the step's
completion (``_await_message_or_step``): a next message is launched before the step is
collected, so the device never waits for the answer to go out; a completed step with nothing
queued is answered then.

Lifetime: SIGINT is ignored (Ctrl-C belongs to the engine process, which shuts the workers
down); the loop exits on ``shutdown``, when the parent process disappears, or on an error
(reported first). The process never outlives its parent by more than ``_PARENT_CHECK_S``.
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
import time
import traceback
from multiprocessing.connection import Connection
from typing import Any

from vllm_core import envs
from vllm_core.distributed.shm_ring import ShmRing
from vllm_core.engine.startup import freeze_heap

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
        if pending is not None:
            step = pending[1]
            if getattr(step, "done", None) is None:
                finish()                  # computed already (a host device): answer at once
            else:
                _await_message_or_step(ring, step, check_parent)
                if not ring.poll():
                    finish()              # nothing queued: deliver the step now
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
            if method == "compile_or_warm_up_model" and envs.freeze_gc_heap():
                freeze_heap()             # this rank's start-up is over (startup.freeze_heap)
            reply.send((seq, "ok", value))
        except Exception:  # noqa: BLE001 - engine-fatal: report and stop
            reply.send((seq, "error", f"rank {worker.rank}: {traceback.format_exc()}"))
            raise


def _await_message_or_step(ring: ShmRing, step: Any, check_parent: Any,
                           max_pause_s: float = 5e-5) -> None:
    """Wait until the next message is in the ring or ``step``'s device work has completed,
    whichever comes first (returns at once when the step event has no ``query()``).

    The order of the loop in ``_serve`` follows from it: a message that arrives while the
    device still runs the step is launched *before* the step is collected and answered, so
    the device gets the next step without a gap (async scheduling writes step N+1 before it
    waits for step N; pipeline micro-batching writes the next micro-batch). Blocking in the
    step's ``synchronize()`` instead would leave the device idle for the answer, the next
    read and the next launch, every step."""
    query = getattr(step.done, "query", None)      # optional on a step event
    if query is None:
        return
    pause = 0.0
    checks = 0
    while not ring.poll() and not query():
        time.sleep(pause)
        pause = min(2 * pause or 1e-6, max_pause_s)
        checks += 1
        if checks % 4096 == 0:
            check_parent()


def _num_blocks(worker: Any) -> int:
    """KV blocks this rank's memory budget holds (the executor takes the minimum)."""
    cache = worker.config.cache
    if cache.num_blocks_override is not None:
        return int(cache.num_blocks_override)
    return int(worker.determine_available_memory() // worker.kv_cache_bytes_per_block())
