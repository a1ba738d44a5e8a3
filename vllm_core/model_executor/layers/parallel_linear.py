"""Tensor-parallel linear layers: column-parallel (outputs split; fused QKV and gate-up) and
row-parallel (inputs split, outputs all-reduced).

Sharding is described by ``OutputShard``: a logical part of the output (``q``, ``k``, ``v``,
``gate``, ``up``, or the whole output) with its rank-local size and the rows of the checkpoint
tensor this rank reads. The layer owns the sharding; its ``LinearMethod`` (unquantized or a
quantization method) creates, loads and applies the rank-local weight, and its ``ParamSpec``
per parameter says which dimension holds output / input features and how many one element
covers, so packed and grouped formats shard too. With one rank every layer is the plain linear
it replaces (same parameters, same numbers).

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
from vllm_core.model_executor.weight_source import (
    WeightSource,
    read_full,
    read_slice,
    source_shape,
)


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
        """Read this rank's part of shard ``name`` from a checkpoint tensor into
        ``param_name`` (cut along the dimension the method's ``ParamSpec`` names as the output
        one, in packed units). ValueError when the checkpoint's size is not the shard's."""
        s = self.shards[name]
        spec = self.method.param_spec(self, param_name)
        if spec.output_dim is None:      # not split by output (g_idx): every shard the same
            self.method.load_rows(self, param_name, None, read_full(source))
            return
        if spec.broadcast:               # one value for the whole shard
            rows = self._rows[name]
            self.method.load_rows(self, param_name, rows, read_full(source))
            return
        dim, pack = spec.output_dim, spec.output_pack
        shape = source_shape(source)
        if len(shape) <= dim or shape[dim] * pack != s.full_size:
            raise ValueError(f"has shape {shape}, expected {s.full_size} output features "
                             f"(in dim {dim}, {pack} per element) for the {name} projection "
                             f"(config and weights disagree)")
        if s.source_start % pack or s.local_size % pack:
            raise ValueError(f"cannot be split: the {name} projection's rank-local part "
                             f"({s.local_size} outputs from {s.source_start}) is not a "
                             f"multiple of the {pack} outputs packed per element")
        rows = self._rows[name]
        self.method.load_rows(self, param_name, slice(rows.start // pack, rows.stop // pack),
                              read_slice(source, dim, s.source_start // pack,
                                         s.local_size // pack))

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
        """Read this rank's input columns of a checkpoint tensor (cut along the method's
        ``ParamSpec.input_dim`` in packed units; a tensor without one, such as the bias or a
        per-channel scale, is read whole)."""
        spec = self.method.param_spec(self, param_name)
        shape = source_shape(source)
        if spec.input_dim is None:
            self.method.load_rows(self, param_name, None, read_full(source))
            return
        dim, pack = spec.input_dim, spec.input_pack
        if len(shape) <= dim or shape[dim] * pack < self.in_features or \
                (shape[dim] - 1) * pack >= self.in_features:
            raise ValueError(f"has shape {shape}, expected {self.in_features} input features "
                             f"(in dim {dim}, {pack} per element) (config and weights "
                             f"disagree)")
        if self.tp.world_size == 1:
            self.method.load_rows(self, param_name, None, read_full(source))
            return
        if self.in_start % pack or self.local_in % pack:
            raise ValueError(f"cannot be split over tensor_parallel_size="
                             f"{self.tp.world_size}: each rank's {self.local_in} input "
                             f"features are not a multiple of the {pack} per element "
                             f"(quantization group or packing)")
        self.method.load_rows(self, param_name, None,
                              read_slice(source, dim, self.in_start // pack,
                                         self.local_in // pack))

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
