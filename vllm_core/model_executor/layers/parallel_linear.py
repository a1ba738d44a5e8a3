"""Tensor-parallel linear layers: column-parallel (outputs split; fused QKV and gate-up) and
row-parallel (inputs split, outputs all-reduced).

Sharding is described by ``OutputShard``: a logical part of the output (``q``, ``k``, ``v``,
``gate``, ``up``, or the whole output) with its rank-local size and the rows of the checkpoint
tensor this rank reads. The layer owns the sharding; its ``LinearMethod`` (unquantized today)
creates, loads and applies the rank-local weight. With one rank every layer is the plain
linear it replaces (same parameters, same numbers).

Invariants: ``weight`` is ``[sum(local sizes), in_features / tp]`` (row-parallel) or
``[sum(local sizes), in_features]`` (column-parallel); the rows of shard *i* follow those of
shards ``< i``; a row-parallel bias is added once, after the all-reduce.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vllm_core.distributed.communicator import Communicator, SingleRankCommunicator
from vllm_core.model_executor.layers.ops import LayerOps, TorchLayerOps
from vllm_core.model_executor.layers.weight_method import LinearMethod, UnquantizedLinearMethod
from vllm_core.model_executor.weight_source import WeightSource, read_slice, source_shape


@dataclass(frozen=True, slots=True)
class OutputShard:
    """Part ``name`` of a column-parallel output: ``local_size`` rows on this rank, read from
    checkpoint rows ``[source_start, source_start + local_size)`` of a tensor whose full size
    is ``full_size``."""

    name: str
    full_size: int
    local_size: int
    source_start: int


def even_shard(name: str, full_size: int, tp: Communicator, what: str) -> OutputShard:
    """``full_size`` split evenly over the TP ranks; ValueError naming ``what`` otherwise."""
    if full_size % tp.world_size:
        raise ValueError(f"{what} ({full_size}) is not divisible by "
                         f"tensor_parallel_size={tp.world_size}")
    local = full_size // tp.world_size
    return OutputShard(name, full_size, local, tp.rank * local)


def qkv_shards(num_heads: int, num_kv_heads: int, head_dim: int,
               tp: Communicator) -> tuple[OutputShard, OutputShard, OutputShard, int, int]:
    """The q / k / v shards of a fused QKV projection and the per-rank head counts.

    Query heads split evenly (ValueError naming the counts otherwise). KV heads split evenly
    when ``tp <= num_kv_heads``; when ``tp > num_kv_heads`` each rank holds one KV head,
    replicated on ``tp / num_kv_heads`` consecutive ranks (``tp`` must be a multiple).
    Returns ``(q, k, v, heads_per_rank, kv_heads_per_rank)``.
    """
    tp_size, rank = tp.world_size, tp.rank
    if num_heads % tp_size:
        raise ValueError(
            f"the model's {num_heads} attention heads are not divisible by "
            f"tensor_parallel_size={tp_size}; use a tensor_parallel_size that divides "
            f"{num_heads}")
    if tp_size <= num_kv_heads:
        if num_kv_heads % tp_size:
            raise ValueError(
                f"the model's {num_kv_heads} key/value heads are not divisible by "
                f"tensor_parallel_size={tp_size}")
        kv_local, kv_head0 = num_kv_heads // tp_size, rank * (num_kv_heads // tp_size)
    else:
        if tp_size % num_kv_heads:
            raise ValueError(
                f"tensor_parallel_size={tp_size} exceeds the model's {num_kv_heads} key/value "
                f"heads and is not a multiple of it (each KV head must be replicated on a "
                f"whole number of ranks)")
        kv_local, kv_head0 = 1, rank // (tp_size // num_kv_heads)
    q_local = num_heads // tp_size
    q = OutputShard("q", num_heads * head_dim, q_local * head_dim, rank * q_local * head_dim)
    kv = kv_local * head_dim
    k = OutputShard("k", num_kv_heads * head_dim, kv, kv_head0 * head_dim)
    v = OutputShard("v", num_kv_heads * head_dim, kv, kv_head0 * head_dim)
    return q, k, v, q_local, kv_local


def kv_heads_per_rank(num_heads: int, num_kv_heads: int, tp_size: int) -> int:
    """KV heads each TP rank holds (and caches); the checks of ``qkv_shards``."""
    from vllm_core.distributed.communicator import SingleRankCommunicator

    probe = SingleRankCommunicator(ranks=list(range(tp_size)))
    return qkv_shards(num_heads, num_kv_heads, 1, probe)[4]


class ColumnParallelLinear(nn.Module):
    """``y_local = x @ W_local.T (+ b_local)``; the output rows are ``shards`` (in order), each
    this rank's part of the full projection. The output stays split (the next row-parallel
    layer consumes it), so no communication happens here."""

    def __init__(self, in_features: int, shards: list[OutputShard], bias: bool = False,
                 ops: LayerOps | None = None, method: LinearMethod | None = None) -> None:
        super().__init__()
        self.ops = ops or TorchLayerOps()
        self.method = method or UnquantizedLinearMethod()
        self.in_features = in_features
        self.shards = {s.name: s for s in shards}
        self._rows: dict[str, slice] = {}
        start = 0
        for s in shards:
            self._rows[s.name] = slice(start, start + s.local_size)
            start += s.local_size
        self.out_features = start
        self.method.create_weights(self, in_features, start, bias)

    def shard_rows(self, name: str) -> slice:
        """The rows of the local weight holding shard ``name``."""
        return self._rows[name]

    def load_shard(self, param_name: str, source: WeightSource, name: str) -> None:
        """Read this rank's rows of shard ``name`` from a checkpoint tensor (weight or bias)
        into ``param_name``. ValueError when the checkpoint's size is not the shard's."""
        s = self.shards[name]
        if source_shape(source)[0] != s.full_size:
            raise ValueError(f"has shape {source_shape(source)}, expected {s.full_size} rows "
                             f"for the {name} projection (config and weights disagree)")
        self.method.load_rows(self, param_name, self._rows[name],
                              read_slice(source, 0, s.source_start, s.local_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.method.apply(self, x, self.bias)

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features} (local), "
                f"shards={list(self.shards)}, bias={self.bias is not None}")


class RowParallelLinear(nn.Module):
    """``y = all_reduce(x_local @ W_local.T) (+ b)``: the input features are split over the
    TP ranks (``x_local`` is the previous column-parallel layer's local output)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False,
                 ops: LayerOps | None = None, tp: Communicator | None = None,
                 method: LinearMethod | None = None) -> None:
        super().__init__()
        self.ops = ops or TorchLayerOps()
        self.tp = tp or SingleRankCommunicator()
        self.method = method or UnquantizedLinearMethod()
        shard = even_shard("in", in_features, self.tp, "the input size of a row-parallel layer")
        self.in_features, self.out_features = in_features, out_features
        self.local_in, self.in_start = shard.local_size, shard.source_start
        self.method.create_weights(self, self.local_in, out_features, bias)

    def load(self, param_name: str, source: WeightSource) -> None:
        """Read this rank's columns of the weight (the bias is not split)."""
        if param_name == "bias":
            self.method.load_rows(self, "bias", None, read_slice(source, 0, 0,
                                                                 source_shape(source)[0]))
            return
        shape = source_shape(source)
        if len(shape) != 2 or shape[1] != self.in_features:
            raise ValueError(f"has shape {shape}, expected {self.in_features} input features "
                             f"(config and weights disagree)")
        self.method.load_rows(self, "weight", None,
                              read_slice(source, 1, self.in_start, self.local_in))

    def _reduce(self, y: torch.Tensor) -> torch.Tensor:
        if self.tp.world_size > 1:
            y = self.tp.all_reduce(y)
            if self.bias is not None:
                y = y + self.bias
        return y

    def _bias_inside(self) -> torch.Tensor | None:
        return self.bias if self.tp.world_size == 1 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._reduce(self.method.apply(self, x, self._bias_inside()))

    def forward_silu_and_mul(self, x: torch.Tensor) -> torch.Tensor:
        """``forward(silu_and_mul(x))`` with the activation fused where the kernels allow."""
        return self._reduce(self.method.apply_silu_and_mul(self, x, self._bias_inside()))

    def extra_repr(self) -> str:
        return (f"in={self.in_features} (local {self.local_in}), out={self.out_features}, "
                f"tp={self.tp.world_size}, bias={self.bias is not None}")
