"""Process groups and the ``ParallelContext`` a model and its runner are built with.

Rank layout (every executor uses it): ``rank = pp_rank * tp_size + tp_rank``. TP groups are
the ``tp_size`` consecutive ranks of one pipeline stage; PP groups are the ranks with the same
``tp_rank`` across stages. The *sampling rank* is the last stage's TP rank 0: it alone
receives the gathered logits, samples, and broadcasts the sampled ids to every rank (so that
every rank's request table holds the same tokens).

Nothing here is global: the worker builds one context (``init_parallel_context``) and passes
it explicitly to the runner, which passes it to the model at construction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from vllm_core.distributed.communicator import Communicator, SingleRankCommunicator
from vllm_core.logger import init_logger

logger = init_logger(__name__)


@dataclass(slots=True)
class ParallelContext:
    """This rank's place in the TP x PP grid and the communicators of its groups."""

    tp_size: int
    tp_rank: int
    pp_size: int
    pp_rank: int
    tp: Communicator
    pp: Communicator
    world: Communicator
    enable_expert_parallel: bool = False   # MoE experts sharded over the TP group (EP = TP)

    @property
    def world_size(self) -> int:
        return self.tp_size * self.pp_size

    @property
    def rank(self) -> int:
        return self.pp_rank * self.tp_size + self.tp_rank

    @property
    def is_first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.pp_size - 1

    @property
    def is_sampling_rank(self) -> bool:
        """True on the one rank that samples (last stage, TP rank 0)."""
        return self.is_last_stage and self.tp_rank == 0

    @property
    def sampling_rank(self) -> int:
        """The global rank that samples."""
        return sampling_rank(self.tp_size, self.pp_size)

    def layer_range(self, num_layers: int) -> tuple[int, int]:
        """The [start, end) decoder layers of this pipeline stage."""
        return partition_layers(num_layers, self.pp_size)[self.pp_rank]


def single_rank_context() -> ParallelContext:
    """The context of an unsharded model (TP = PP = 1): collectives are the identity."""
    one = SingleRankCommunicator()
    return ParallelContext(tp_size=1, tp_rank=0, pp_size=1, pp_rank=0, tp=one, pp=one,
                           world=one)


def sampling_rank(tp_size: int, pp_size: int) -> int:
    """Global rank of the last stage's TP rank 0."""
    return (pp_size - 1) * tp_size


def partition_layers(num_layers: int, pp_size: int) -> list[tuple[int, int]]:
    """Split ``num_layers`` over ``pp_size`` stages as evenly as possible (the first
    ``num_layers % pp_size`` stages get one more). Raises ValueError when a stage would be
    empty."""
    if num_layers < pp_size:
        raise ValueError(f"pipeline_parallel_size={pp_size} exceeds the model's "
                         f"{num_layers} layers (each stage needs at least one)")
    base, extra = divmod(num_layers, pp_size)
    out, start = [], 0
    for stage in range(pp_size):
        end = start + base + (1 if stage < extra else 0)
        out.append((start, end))
        start = end
    return out


def init_parallel_context(platform: Any, tp_size: int, pp_size: int, rank: int,
                          init_method: str | None, timeout_s: float = 600.0,
                          enable_expert_parallel: bool = False) -> ParallelContext:
    """Join the world (``torch.distributed`` with ``platform.dist_backend``) and create the TP,
    PP and world groups; every rank calls it with the same sizes. World size 1 needs no
    ``init_method`` and starts nothing. Collectives come from ``platform.communicator_class()``.
    """
    world_size = tp_size * pp_size
    if world_size == 1:
        return single_rank_context()
    if init_method is None:
        raise ValueError("init_method is required when tp_size * pp_size > 1")
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend=platform.dist_backend, init_method=init_method,
                                world_size=world_size, rank=rank,
                                timeout=timedelta(seconds=timeout_s))
    comm_cls = _communicator_class(platform)
    tp_rank, pp_rank = rank % tp_size, rank // tp_size
    tp_comm = pp_comm = None
    for stage in range(pp_size):                  # every rank creates every group, same order
        ranks = [stage * tp_size + t for t in range(tp_size)]
        group = dist.new_group(ranks)
        if stage == pp_rank:
            tp_comm = comm_cls(group, tp_rank, ranks)
    for t in range(tp_size):
        ranks = [s * tp_size + t for s in range(pp_size)]
        group = dist.new_group(ranks)
        if t == tp_rank:
            pp_comm = comm_cls(group, pp_rank, ranks)
    world = comm_cls(dist.group.WORLD, rank, list(range(world_size)))
    logger.info("rank %d of %d: tp %d/%d, pp %d/%d, backend %s, %s", rank, world_size,
                tp_rank, tp_size, pp_rank, pp_size, platform.dist_backend, comm_cls.__name__)
    return ParallelContext(tp_size=tp_size, tp_rank=tp_rank, pp_size=pp_size, pp_rank=pp_rank,
                           tp=tp_comm, pp=pp_comm, world=world,
                           enable_expert_parallel=enable_expert_parallel)


def destroy_parallel_context() -> None:
    """Leave the process group (idempotent)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _communicator_class(platform: Any) -> type[Communicator]:
    hook = getattr(platform, "communicator_class", None)
    path = hook() if callable(hook) else (
        "vllm_core.distributed.communicator.TorchDistributedCommunicator")
    if isinstance(path, str):
        import importlib

        module, _, name = path.rpartition(".")
        return getattr(importlib.import_module(module), name)
    return path
