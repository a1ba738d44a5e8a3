"""Vocabulary-parallel embedding and LM head.

The vocabulary is split in ``tp`` equal ranges of ``ceil(vocab / tp)`` rows (the last one
padded with zero rows). The embedding looks up the ids of its range, zeroes the others, and
all-reduces; the LM head computes the logits of its range and gathers them on TP rank 0 (the
sampling rank of its stage), dropping the padding columns. With one rank both are the plain
layers (``F.embedding`` and ``LayerOps.linear``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vllm_core.distributed.communicator import Communicator, SingleRankCommunicator
from vllm_core.model_executor.layers.ops import LayerOps, TorchLayerOps
from vllm_core.model_executor.weight_source import WeightSource, read_slice, source_shape


class VocabParallelEmbedding(nn.Module):
    """Token embedding with the vocabulary split over the TP group; ``weight`` is this rank's
    ``[ceil(vocab / tp), hidden]`` rows, rows ``vocab_start`` onwards of the full table."""

    def __init__(self, num_embeddings: int, embedding_dim: int,
                 tp: Communicator | None = None) -> None:
        super().__init__()
        self.tp = tp or SingleRankCommunicator()
        self.num_embeddings = num_embeddings
        self.per_rank = -(-num_embeddings // self.tp.world_size)
        self.vocab_start = self.tp.rank * self.per_rank
        self.vocab_end = min(self.vocab_start + self.per_rank, num_embeddings)
        self.weight = nn.Parameter(torch.empty(self.per_rank, embedding_dim),
                                   requires_grad=False)

    def load(self, source: WeightSource) -> None:
        """Read this rank's rows of the ``[vocab, hidden]`` checkpoint table."""
        shape = source_shape(source)
        if tuple(shape) != (self.num_embeddings, self.weight.shape[1]):
            raise ValueError(f"has shape {tuple(shape)}, expected "
                             f"{(self.num_embeddings, self.weight.shape[1])} (config and "
                             f"weights disagree)")
        rows = self.vocab_end - self.vocab_start
        self.weight.data[rows:].zero_()
        self.weight.data[:rows].copy_(read_slice(source, 0, self.vocab_start, rows))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.tp.world_size == 1:
            return F.embedding(ids, self.weight)
        mask = (ids >= self.vocab_start) & (ids < self.vocab_end)
        local = torch.where(mask, ids - self.vocab_start, torch.zeros_like(ids))
        out = F.embedding(local, self.weight) * mask.unsqueeze(-1).to(self.weight.dtype)
        return self.tp.all_reduce(out)


class ParallelLMHead(VocabParallelEmbedding):
    """The output projection over a split vocabulary (its own weight, or an embedding's when
    tied: pass ``tied``)."""

    def __init__(self, num_embeddings: int, embedding_dim: int,
                 tp: Communicator | None = None, ops: LayerOps | None = None) -> None:
        super().__init__(num_embeddings, embedding_dim, tp)
        self.ops = ops or TorchLayerOps()


def compute_parallel_logits(hidden: torch.Tensor, table: VocabParallelEmbedding,
                            ops: LayerOps) -> torch.Tensor | None:
    """Float32 logits ``[N, vocab]`` of ``hidden [N, hidden]`` against a vocab-parallel
    ``table`` on TP rank 0; None on the other TP ranks (each computes and sends its range)."""
    return gather_logits(local_logits(hidden, table, ops), table)


def local_logits(hidden: torch.Tensor, table: VocabParallelEmbedding,
                 ops: LayerOps) -> torch.Tensor:
    """This rank's float32 logits ``[N, ceil(vocab / tp)]`` (its vocabulary range, padding
    columns included): no communication, so a device graph can capture it."""
    return ops.linear(hidden, table.weight).float()


def gather_logits(local: torch.Tensor, table: VocabParallelEmbedding) -> torch.Tensor | None:
    """Every rank's ``local_logits`` gathered on TP rank 0 as ``[N, vocab]`` (padding
    dropped); None on the other TP ranks; the identity with one rank."""
    tp = table.tp
    if tp.world_size == 1:
        return local
    full = tp.gather(local, dst=0, dim=-1)
    return None if full is None else full[..., :table.num_embeddings]
