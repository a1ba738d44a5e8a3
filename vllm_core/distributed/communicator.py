"""The collectives a parallel model and runner use, behind one replaceable interface.

A platform supplies the class (``Platform.communicator_class()``, API 2.1), so a vendor ships
its own (HCCL-style, or a custom small-message all-reduce) without patching the core. The
default, ``TorchDistributedCommunicator``, calls ``torch.distributed`` on one process group;
``SingleRankCommunicator`` is the identity for a group of one rank (no torch.distributed).

Contract for every implementation: each method is a collective over the group (every rank of
the group calls it, in the same order, with tensors of the same shape and dtype) except
``send`` / ``recv``, which pair one rank with another. Ranks passed in and out are *group*
ranks (0 .. world_size - 1). Methods may return a new tensor or reuse the input's storage;
callers use the returned value.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch


class Communicator(ABC):
    """Collectives over one group of ranks. ``rank`` / ``world_size`` are within the group;
    ``ranks`` are the global ranks of its members, in group-rank order."""

    def __init__(self, group: Any, rank: int, ranks: list[int]) -> None:
        self.group = group
        self.rank = rank
        self.ranks = list(ranks)
        self.world_size = len(self.ranks)

    @abstractmethod
    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """The elementwise sum of ``x`` over the group, on every rank."""

    @abstractmethod
    def all_gather(self, x: torch.Tensor, dim: int = -1) -> torch.Tensor:
        """Every rank's ``x`` concatenated along ``dim`` in group-rank order, on every rank."""

    @abstractmethod
    def reduce_scatter(self, x: torch.Tensor, dim: int = 0) -> torch.Tensor:
        """The sum over the group of ``x``, split in ``world_size`` equal chunks along
        ``dim``; rank r receives chunk r."""

    @abstractmethod
    def gather(self, x: torch.Tensor, dst: int = 0, dim: int = -1) -> torch.Tensor | None:
        """Every rank's ``x`` concatenated along ``dim`` on rank ``dst``; None elsewhere."""

    @abstractmethod
    def broadcast(self, x: torch.Tensor, src: int = 0) -> torch.Tensor:
        """``src``'s ``x`` on every rank (others pass a tensor of the same shape and dtype)."""

    @abstractmethod
    def send(self, x: torch.Tensor, dst: int) -> None:
        """Send ``x`` to group rank ``dst`` (which calls ``recv`` with the same shape/dtype)."""

    @abstractmethod
    def recv(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device,
             src: int) -> torch.Tensor:
        """Receive a tensor of ``shape`` / ``dtype`` from group rank ``src``."""

    def barrier(self) -> None:
        """Wait until every rank of the group reaches this call."""


class SingleRankCommunicator(Communicator):
    """A group of one: every collective is the identity; send/recv have no peer."""

    def __init__(self, group: Any = None, rank: int = 0, ranks: list[int] | None = None) -> None:
        super().__init__(group, rank, ranks if ranks is not None else [0])

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def all_gather(self, x: torch.Tensor, dim: int = -1) -> torch.Tensor:
        return x

    def reduce_scatter(self, x: torch.Tensor, dim: int = 0) -> torch.Tensor:
        return x

    def gather(self, x: torch.Tensor, dst: int = 0, dim: int = -1) -> torch.Tensor | None:
        return x

    def broadcast(self, x: torch.Tensor, src: int = 0) -> torch.Tensor:
        return x

    def send(self, x: torch.Tensor, dst: int) -> None:
        raise RuntimeError("send in a group of one rank: there is no peer")

    def recv(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device,
             src: int) -> torch.Tensor:
        raise RuntimeError("recv in a group of one rank: there is no peer")


class TorchDistributedCommunicator(Communicator):
    """``torch.distributed`` collectives on ``group`` (any backend: gloo, nccl, xccl...).

    Where a backend lacks a collective, it is composed of others: ``reduce_scatter`` as an
    all-reduce keeping this rank's chunk when the native call is unsupported (gloo), ``gather``
    as an all-gather when the native call is unsupported (nccl)."""

    def __init__(self, group: Any, rank: int, ranks: list[int]) -> None:
        super().__init__(group, rank, ranks)
        self._native_reduce_scatter = True
        self._native_gather = True

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        if self.world_size == 1:
            return x
        import torch.distributed as dist

        dist.all_reduce(x, group=self.group)
        return x

    def all_gather(self, x: torch.Tensor, dim: int = -1) -> torch.Tensor:
        if self.world_size == 1:
            return x
        import torch.distributed as dist

        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(self.world_size)]
        dist.all_gather(parts, x, group=self.group)
        return torch.cat(parts, dim=dim)

    def reduce_scatter(self, x: torch.Tensor, dim: int = 0) -> torch.Tensor:
        if self.world_size == 1:
            return x
        import torch.distributed as dist

        if self._native_reduce_scatter:
            chunks = [c.contiguous() for c in x.chunk(self.world_size, dim=dim)]
            out = torch.empty_like(chunks[self.rank])
            try:
                dist.reduce_scatter(out, chunks, group=self.group)
                return out
            except (RuntimeError, NotImplementedError):
                self._native_reduce_scatter = False     # e.g. gloo: compose it
        dist.all_reduce(x, group=self.group)
        return x.chunk(self.world_size, dim=dim)[self.rank].contiguous()

    def gather(self, x: torch.Tensor, dst: int = 0, dim: int = -1) -> torch.Tensor | None:
        if self.world_size == 1:
            return x
        import torch.distributed as dist

        x = x.contiguous()
        if self._native_gather:
            parts = ([torch.empty_like(x) for _ in range(self.world_size)]
                     if self.rank == dst else None)
            try:
                dist.gather(x, parts, dst=self.ranks[dst], group=self.group)
                return torch.cat(parts, dim=dim) if parts is not None else None
            except (RuntimeError, NotImplementedError):
                self._native_gather = False             # compose it of an all-gather
        out = self.all_gather(x, dim)
        return out if self.rank == dst else None

    def broadcast(self, x: torch.Tensor, src: int = 0) -> torch.Tensor:
        if self.world_size == 1:
            return x
        import torch.distributed as dist

        dist.broadcast(x, src=self.ranks[src], group=self.group)
        return x

    def send(self, x: torch.Tensor, dst: int) -> None:
        import torch.distributed as dist

        dist.send(x.contiguous(), dst=self.ranks[dst], group=self.group)

    def recv(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device,
             src: int) -> torch.Tensor:
        import torch.distributed as dist

        out = torch.empty(shape, dtype=dtype, device=device)
        dist.recv(out, src=self.ranks[src], group=self.group)
        return out

    def barrier(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier(group=self.group)
