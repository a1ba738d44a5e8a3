"""``InFlightRequests``: which requests have a step in flight, for pipeline micro-batching.

Torch-free scheduler bookkeeping. With ``max_concurrent_batches = depth > 1`` (pipeline
parallelism, see ``engine/batch_queue.py``) the engine calls ``Scheduler.schedule`` while up
to ``depth - 1`` earlier steps are still running on the pipeline stages. The scheduler then
keeps this invariant:

    **a request appears in at most one unfinished step.**

A request enters the set when a step that schedules it is submitted (``add_step``) and leaves
it when that step's output has been applied (``finish_step``). ``schedule`` skips running
requests in the set, never picks one as a preemption victim, and gives one step at most
``seat_cap(num_running)`` of the running requests, so that ``depth`` consecutive steps split
the running requests into ``depth`` groups of nearly equal size instead of the first step
taking them all and the others nothing.

Consequences the rest of the system relies on: every token of a scheduled request is known
to the scheduler (no output placeholders are ever scheduled over), so the workers can take
the tokens from the ``SchedulerOutput`` instead of a world broadcast of the sampled ids; steps
with disjoint requests never wait for each other's sampled ids.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vllm_core.messages import SchedulerOutput


@dataclass(slots=True)
class InFlightRequests:
    """The request ids scheduled in unfinished steps (``depth``: steps in flight at most)."""

    depth: int
    _ids: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        if self.depth < 2:
            raise ValueError(f"InFlightRequests needs depth >= 2, got {self.depth}")

    def holds(self, req_id: str) -> bool:
        return req_id in self._ids

    def add_step(self, scheduler_output: SchedulerOutput) -> None:
        """The step was submitted: its requests are in flight until ``finish_step``."""
        ids = scheduler_output.num_scheduled_tokens.keys()
        if not self._ids.isdisjoint(ids):
            raise RuntimeError(f"requests {sorted(self._ids.intersection(ids))} scheduled "
                               "while a step holding them is in flight")
        self._ids.update(ids)

    def finish_step(self, scheduler_output: SchedulerOutput) -> None:
        """The step's output was applied: its requests may be scheduled again."""
        self._ids.difference_update(scheduler_output.num_scheduled_tokens.keys())

    def seat_cap(self, num_running: int) -> int:
        """Running requests one step may schedule: ``ceil(num_running / depth)``."""
        return max(1, -(-num_running // self.depth))

    def __len__(self) -> int:
        return len(self._ids)
