"""``CudaCommunicator``: NCCL collectives, with a graph-capturable all-reduce for small messages.

The CUDA platform names this class (``CudaPlatform.communicator_class``), so every group of a
CUDA rank (TP, PP, world) gets one. Every collective is NCCL's (the base class), except
``all_reduce`` once ``enable_fast_all_reduce`` has succeeded on the group: then a message is
routed by its size (``AllReducePolicy.choose``):

    nbytes <= one_shot_max_bytes            one-shot kernel over symmetric memory
    nbytes <= the symmetric buffer          two-shot kernel over symmetric memory
    larger                                  NCCL (eager only: refused inside a graph capture)

Why: NCCL inside a captured CUDA graph hung on the two-H200 host (hardware-notes.md), and an
eager NCCL all-reduce of one decode token costs ~39 us, 64 of them per token on the 8B shape.
The symmetric-memory kernels capture, and take a few microseconds over NVLink.

``enable_fast_all_reduce`` is collective and checks itself before anything depends on it:
each algorithm runs eagerly and replayed from a captured graph, on every rank, and must give
exactly NCCL's sum (small integers: the sum is exact in any dtype); an algorithm that fails or
raises on any rank is dropped on every rank (the ranks agree through an NCCL MIN). When none
survives, ``graph_safe`` stays False and the worker runs tensor parallelism eager.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from vllm_core.distributed.communicator import TorchDistributedCommunicator
from vllm_core.logger import init_logger

logger = init_logger(__name__)

NCCL = "nccl"


class FastAllReduce(Protocol):
    """A graph-capturable all-reduce backend (``SymmMemAllReduce`` on CUDA)."""

    device: torch.device
    capacity_bytes: int

    def run(self, algorithm: str, x: torch.Tensor) -> torch.Tensor: ...

    def run_in_graph(self, algorithm: str, x: torch.Tensor) -> torch.Tensor: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class AllReducePolicy:
    """Which algorithm an all-reduce of ``nbytes`` uses. ``algorithms``: those that passed the
    start-up check (a subset of ``("one_shot", "two_shot")``); ``capacity_bytes``: the
    symmetric buffer, the largest message the fast path takes."""

    one_shot_max_bytes: int
    capacity_bytes: int
    algorithms: frozenset[str]

    def choose(self, nbytes: int) -> str:
        """``"one_shot"``, ``"two_shot"`` or ``"nccl"``. A message within the buffer uses the
        one-shot kernel up to ``one_shot_max_bytes`` and two-shot above it; where only one of
        the two passed the check, it takes the whole buffer range."""
        if nbytes > self.capacity_bytes or not self.algorithms:
            return NCCL
        preferred = "one_shot" if nbytes <= self.one_shot_max_bytes else "two_shot"
        if preferred in self.algorithms:
            return preferred
        return next(iter(self.algorithms))


def _is_capturing(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


class CudaCommunicator(TorchDistributedCommunicator):
    """See the module docstring. ``policy`` is None until ``enable_fast_all_reduce``."""

    def __init__(self, group: Any, rank: int, ranks: list[int]) -> None:
        super().__init__(group, rank, ranks)
        self.fast: FastAllReduce | None = None
        self.policy: AllReducePolicy | None = None

    @property
    def graph_safe(self) -> bool:
        """Whether the all-reduces of a captured decode graph can run without NCCL."""
        return self.world_size == 1 or self.policy is not None

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        if self.world_size == 1:
            return x
        algorithm = NCCL
        if self.policy is not None and x.device == self.fast.device and x.is_contiguous():
            algorithm = self.policy.choose(x.nbytes)
        if algorithm != NCCL:
            return self.fast.run(algorithm, x)
        if _is_capturing(x.device):
            limit = 0 if self.policy is None else self.policy.capacity_bytes
            raise RuntimeError(
                f"all-reduce of {x.nbytes} bytes inside a CUDA graph capture: only the "
                f"symmetric-memory all-reduce is graph-safe, and it holds {limit} bytes "
                f"(raise VLLM_CUDA_SYMM_MEM_BYTES, or capture smaller batches)")
        return super().all_reduce(x)

    # ------------------------------------------------------------------ set-up (collective)
    def enable_fast_all_reduce(
            self, device: torch.device, dtype: torch.dtype, capacity_bytes: int,
            one_shot_max_bytes: int,
            factory: Callable[[Any, torch.device, int], FastAllReduce] | None = None,
            check_graphs: bool = True) -> bool:
        """Set up the symmetric buffer (``capacity_bytes``) and keep the algorithms that pass
        the start-up check on every rank (see the module docstring). ``dtype`` is the one the
        check uses (the model's). ``factory(group, device, capacity)`` builds the backend
        (default ``SymmMemAllReduce``); ``check_graphs`` also checks graph capture (needs
        CUDA). Returns ``graph_safe``. Every rank of the group calls it."""
        if self.world_size == 1:
            return True
        if factory is None:
            from vllm_core_cuda.symm_mem_all_reduce import SymmMemAllReduce

            factory = SymmMemAllReduce
        backend = None
        try:
            backend = factory(self.group, device, capacity_bytes)
        except Exception as e:  # noqa: BLE001 - any failure means: stay on NCCL
            logger.warning("symmetric-memory all-reduce unavailable (%s: %s); NCCL only",
                           type(e).__name__, e)
        if not self._agree(backend is not None, device):
            return self._give_up(backend)
        capacity = backend.capacity_bytes
        passed = []
        for algorithm in ("one_shot", "two_shot"):
            nbytes = (min(one_shot_max_bytes, capacity, 64 * 1024) if algorithm == "one_shot"
                      else min(capacity, max(one_shot_max_bytes * 2, 128 * 1024)))
            ok = self._check(backend, algorithm, nbytes, dtype, device, check_graphs)
            if self._agree(ok, device):
                passed.append(algorithm)
        if not passed:
            return self._give_up(backend)
        self.fast = backend
        self.policy = AllReducePolicy(one_shot_max_bytes, capacity, frozenset(passed))
        logger.info("graph-safe all-reduce over %d ranks: %s, symmetric buffer %d KiB "
                    "(one-shot up to %d KiB), NCCL above", self.world_size,
                    "+".join(passed), capacity // 1024, one_shot_max_bytes // 1024)
        return True

    def _check(self, backend: FastAllReduce, algorithm: str, nbytes: int,
               dtype: torch.dtype, device: torch.device, check_graphs: bool) -> bool:
        numel = max(nbytes // torch.empty((), dtype=dtype).element_size(), 1)
        try:
            for round_ in range(2):
                x = ((torch.arange(numel, device=device) + round_) % 7 + self.rank).to(dtype)
                want = super().all_reduce(x.clone())
                got = backend.run(algorithm, x)
                if check_graphs:
                    replayed = backend.run_in_graph(algorithm, x)
                    if not torch.equal(replayed, want):
                        logger.warning("%s all-reduce replayed from a CUDA graph differs from "
                                       "NCCL; not used", algorithm)
                        return False
                if not torch.equal(got, want):
                    logger.warning("%s all-reduce differs from NCCL; not used", algorithm)
                    return False
        except Exception as e:  # noqa: BLE001
            logger.warning("%s all-reduce failed its check (%s: %s); not used", algorithm,
                           type(e).__name__, e)
            return False
        return True

    def _agree(self, ok: bool, device: torch.device) -> bool:
        """True when ``ok`` on every rank of the group (an NCCL/gloo MIN)."""
        import torch.distributed as dist

        flag = torch.tensor([1 if ok else 0], dtype=torch.int32, device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN, group=self.group)
        return bool(flag.item())

    def _give_up(self, backend: FastAllReduce | None) -> bool:
        if backend is not None:
            backend.close()
        self.fast = self.policy = None
        logger.warning("tensor parallelism over %d ranks all-reduces through NCCL only "
                       "(decode graphs off)", self.world_size)
        return False
