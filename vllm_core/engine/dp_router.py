"""Which data-parallel engine core serves a request: the least-loaded policy and the routing
table (torch-free, zmq-free; ``DPEngineCoreClient`` drives it).

Policy (``pick_core``): the core with the fewest requests (waiting + running), then the lowest
KV-cache usage, then the lowest index. A core's load (``CoreLoad``) is the larger of what the
core last reported with a step's outputs and the requests this front end has live on it, so
requests sent since the last report count at once (many requests added before the first step
spread evenly) and requests of other front ends count as soon as the core reports them.

Invariants of ``DPRouter``: a request id maps to one core from ``assign`` until ``release``
(every later message about it, such as an abort, goes to that core); the children of one
parent (``n > 1``: ids ``"{i}_{parent}"`` with ``parent_id`` set) go to the core of the first
child while any child of that parent is live, so they share the prompt's cached KV blocks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CoreLoad:
    """One core's load as the router sees it."""

    num_requests: int            # waiting + running
    kv_cache_usage: float        # 0..1, the tie-break


def pick_core(loads: Sequence[CoreLoad]) -> int:
    """Index of the least-loaded core (fewest requests, then lowest KV usage, then index)."""
    if not loads:
        raise ValueError("no engine cores to route to")
    return min(range(len(loads)),
               key=lambda i: (loads[i].num_requests, loads[i].kv_cache_usage, i))


class DPRouter:
    """The routing table of one front end over ``num_cores`` cores (see the module docstring).
    Not thread-safe: the engine thread calls it."""

    def __init__(self, num_cores: int) -> None:
        if num_cores < 1:
            raise ValueError(f"num_cores must be >= 1, got {num_cores}")
        self.num_cores = num_cores
        self._core: dict[str, int] = {}                   # request id -> core
        self._parent: dict[str, str] = {}                 # child id -> parent id
        self._groups: dict[str, list[int]] = {}           # parent id -> [core, live children]
        self._live = [0] * num_cores
        self.total_assigned = [0] * num_cores             # requests ever routed to each core

    def assign(self, request_id: str, parent_id: str | None,
               loads: Sequence[CoreLoad]) -> int:
        """Route ``request_id`` (a child of ``parent_id`` when not None); its core. Raises
        ValueError for an id that is already routed."""
        if request_id in self._core:
            raise ValueError(f"request id {request_id!r} is already routed to engine core "
                             f"{self._core[request_id]}")
        group = self._groups.get(parent_id) if parent_id is not None else None
        if group is not None:
            core = group[0]
            group[1] += 1
        else:
            if len(loads) != self.num_cores:
                raise ValueError(f"got {len(loads)} loads for {self.num_cores} cores")
            core = pick_core(loads)
            if parent_id is not None:
                self._groups[parent_id] = [core, 1]
        if parent_id is not None:
            self._parent[request_id] = parent_id
        self._core[request_id] = core
        self._live[core] += 1
        self.total_assigned[core] += 1
        return core

    def core_of(self, request_id: str) -> int | None:
        """The core serving ``request_id``; None when it is not live."""
        return self._core.get(request_id)

    def release(self, request_id: str) -> None:
        """``request_id`` finished or was aborted (unknown ids are ignored)."""
        core = self._core.pop(request_id, None)
        if core is None:
            return
        self._live[core] -= 1
        parent = self._parent.pop(request_id, None)
        if parent is not None:
            group = self._groups[parent]
            group[1] -= 1
            if group[1] == 0:
                del self._groups[parent]

    def live_on(self, core: int) -> int:
        """Requests of this front end live on ``core``."""
        return self._live[core]
