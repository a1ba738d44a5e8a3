"""Small-message all-reduce over torch's symmetric memory: one-shot and two-shot kernels.

``torch.distributed._symmetric_memory`` allocates a buffer that every rank of a group maps
(peer memory over NVLink / PCIe P2P) and ships kernels that synchronise through signal pads
in that memory, not through NCCL: one launch, no host round trip, and nothing a CUDA graph
cannot capture.

* ``one_shot``: every rank copies its message into its buffer, then reads all peers' buffers
  and sums them (``symm_mem.one_shot_all_reduce_out``). Lowest latency for small messages.
* ``two_shot``: reduce-scatter then all-gather inside the symmetric buffers
  (``symm_mem.two_shot_all_reduce_out``): each rank sums ``1 / world`` of the message, so it
  moves less data per rank than one-shot on larger messages.

Invariants: every rank calls ``run`` with the same algorithm, shape and dtype, in the same
order (like any collective); ``x.nbytes <= capacity_bytes``; a call's result is a fresh tensor,
so the buffer is free again when the next call stages into it (the kernels end with a barrier:
no rank still reads a peer's buffer when that peer overwrites it).

NVLink multicast (``multimem_*`` kernels) is never used: the hosts this runs on keep it off,
and ``TORCH_SYMM_MEM_DISABLE_MULTICAST=1`` is set (unless the user set it) before the first
allocation so torch does not create multicast objects it would not use.
"""

from __future__ import annotations

import os
from typing import Any

import torch

ALGORITHMS = ("one_shot", "two_shot")


class SymmMemAllReduce:
    """One symmetric buffer of ``capacity_bytes`` on ``device``, rendezvoused over ``group``
    (a ``torch.distributed`` process group). Construction is collective."""

    def __init__(self, group: Any, device: torch.device, capacity_bytes: int) -> None:
        os.environ.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")
        import torch.distributed._symmetric_memory as symm_mem

        self.device = device
        self.group_name = group.group_name
        self.capacity_bytes = int(capacity_bytes) // 16 * 16
        enable = getattr(symm_mem, "enable_symm_mem_for_group", None)
        if enable is not None:              # required before rendezvous in older torch
            enable(self.group_name)
        self.buffer = symm_mem.empty(self.capacity_bytes, dtype=torch.uint8, device=device)
        self.handle = symm_mem.rendezvous(self.buffer, self.group_name)
        self._graphs: dict[tuple[str, torch.dtype, int], tuple[Any, torch.Tensor,
                                                               torch.Tensor]] = {}

    def _stage(self, x: torch.Tensor) -> torch.Tensor:
        staged = self.buffer.view(x.dtype)[:x.numel()]
        staged.copy_(x.reshape(-1))
        return staged

    def run(self, algorithm: str, x: torch.Tensor) -> torch.Tensor:
        """The sum of ``x`` over the group through ``algorithm`` (a new tensor shaped like x)."""
        if x.nbytes > self.capacity_bytes:
            raise ValueError(f"{x.nbytes} bytes exceed the symmetric buffer "
                             f"({self.capacity_bytes} bytes)")
        out = torch.empty_like(x, memory_format=torch.contiguous_format)
        staged = self._stage(x)
        ops = torch.ops.symm_mem
        if algorithm == "one_shot":
            ops.one_shot_all_reduce_out(staged, "sum", self.group_name, out.view(-1))
        elif algorithm == "two_shot":
            ops.two_shot_all_reduce_out(staged, "sum", self.group_name, out.view(-1))
        else:
            raise ValueError(f"unknown all-reduce algorithm {algorithm!r}; "
                             f"known: {', '.join(ALGORITHMS)}")
        return out

    def run_in_graph(self, algorithm: str, x: torch.Tensor) -> torch.Tensor:
        """``run`` captured once in a CUDA graph per (algorithm, dtype, numel), then replayed
        with ``x`` copied into the graph's static input: the start-up check that the kernels
        really capture and replay on this host (collective, like ``run``)."""
        key = (algorithm, x.dtype, x.numel())
        entry = self._graphs.get(key)
        if entry is None:
            static_in = torch.empty_like(x)
            static_in.copy_(x)
            self.run(algorithm, static_in)                  # warm-up outside the capture
            torch.cuda.synchronize(self.device)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                static_out = self.run(algorithm, static_in)
            entry = self._graphs[key] = (graph, static_in, static_out)
        graph, static_in, static_out = entry
        static_in.copy_(x)
        graph.replay()
        return static_out.clone()

    def close(self) -> None:
        self._graphs.clear()
