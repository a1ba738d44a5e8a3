"""``BatchQueue``: the engine step with several steps in flight (pipeline micro-batching).

With pipeline parallelism one step passes the stages one after the other; keeping one step in
flight leaves every stage but one idle. ``EngineCore.step`` hands over to ``BatchQueue.step``
when ``ParallelConfig.max_concurrent_batches = depth > 1`` (``pipeline_parallel_size`` with
micro-batching on), which keeps up to ``depth`` submitted steps in a FIFO:

1. while the FIFO is not full, ``Scheduler.schedule`` plans a step from the requests that are
   not in flight (``engine/in_flight.py``: a request is in at most one unfinished step; one
   step takes ``ceil(running / depth)`` running requests; the step carries the tokens its
   requests sampled since their previous step, ``CachedRequestData.new_token_ids``), and
   ``execute_model_async`` submits it without waiting: the ``mp`` executor writes it to the
   workers' ring, and stage 0 starts it while the later stages still run the earlier steps;
2. when the FIFO is full, or nothing new could be scheduled, the oldest step is collected and
   its output applied (``update_from_output``, output processing): outputs are applied in
   submission order, exactly once per step.

A call adds the outputs and stats of the step it collected to the core's ``CoreStep`` (none
when it only submitted). A step that
schedules no tokens but carries finished request ids is submitted like any other when the
FIFO is empty; while steps are in flight its ids go back to the scheduler and ride with the
next step (a worker drops them before that step runs, which is all the contract asks).
Aborts and stop strings finish a request in the scheduler at once; a step in flight still
computes it and its output for the request is dropped (the request is gone). Speculative
decoding is not combined with it (the engine keeps the one-step loop then).

``stats`` counts what happened, so tests and benchmarks can tell that the stages overlapped.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from vllm_core.engine.in_flight import InFlightRequests
from vllm_core.messages import SchedulerOutput


@dataclass(slots=True)
class BatchQueueStats:
    """``num_steps``: steps submitted; ``num_overlapped_steps``: of which submitted while
    another step was in flight; ``max_in_flight``: the most steps in flight at once."""

    num_steps: int = 0
    num_overlapped_steps: int = 0
    max_in_flight: int = 0


@dataclass(slots=True)
class _Submitted:
    scheduler_output: SchedulerOutput
    pending: Any            # the executor's handle; ``result()`` is the ModelRunnerOutput
    t0: float


def make_batch_queue(config: Any, scheduler: Any) -> BatchQueue | None:
    """The engine's batch queue when ``config.parallel.max_concurrent_batches > 1``, else None
    (the engine's one-step loop, with or without async scheduling)."""
    depth = config.parallel.max_concurrent_batches
    return BatchQueue(depth, scheduler) if depth > 1 else None


class BatchQueue:
    """Up to ``depth`` steps in flight; see the module docstring for the contract."""

    def __init__(self, depth: int, scheduler: Any) -> None:
        self.depth = depth
        self.in_flight = InFlightRequests(depth)
        scheduler.in_flight = self.in_flight
        self._queue: deque[_Submitted] = deque()
        self.stats = BatchQueueStats()

    def __len__(self) -> int:
        return len(self._queue)

    def step(self, core: Any, result: Any) -> None:
        """One core step: submit a step if the FIFO has room, collect the oldest when it is
        full or nothing was submitted; what was collected goes into ``result`` (a
        ``CoreStep``)."""
        t0 = time.perf_counter()
        submitted = False
        if len(self._queue) < self.depth:
            scheduler_output = core.scheduler.schedule()
            result.outputs.extend(core.scheduler.pop_failed_outputs())
            submitted = self._submit(core, scheduler_output, t0)
            if not submitted and not self._queue and scheduler_output.is_empty:
                core._wait_for_grammars()
        if self._queue and (len(self._queue) >= self.depth or not submitted):
            self._collect_oldest(core, result)

    def _submit(self, core: Any, scheduler_output: SchedulerOutput, t0: float) -> bool:
        scheduler = core.scheduler
        if scheduler_output.is_empty:
            if scheduler_output.finished_req_ids:
                if self._queue:               # they ride with the next step
                    scheduler.finished_req_ids |= scheduler_output.finished_req_ids
                else:
                    core.executor.execute_model(scheduler_output)
            return False
        core._attach_bitmask(scheduler_output)
        pending = core.executor.execute_model_async(scheduler_output)
        self.in_flight.add_step(scheduler_output)
        stats = self.stats
        stats.num_steps += 1
        if self._queue:
            stats.num_overlapped_steps += 1
        self._queue.append(_Submitted(scheduler_output, pending, t0))
        stats.max_in_flight = max(stats.max_in_flight, len(self._queue))
        return True

    def _collect_oldest(self, core: Any, result: Any) -> None:
        step = self._queue.popleft()
        runner_output = step.pending.result()
        self.in_flight.finish_step(step.scheduler_output)
        core._collect(result, step.scheduler_output, runner_output, step.t0)
