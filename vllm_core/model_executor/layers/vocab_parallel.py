"""Vocabulary-parallel embedding and LM head.

The vocabulary is split in ``tp`` equal ranges of ``ceil(vocab / tp)`` rows (the last one
padded with zero rows). The embedding looks up the ids of its range, zeroes the others, and
all-reduces; the LM head computes the logits of its range and gathers them on TP rank 0 (the
sampling rank of its stage), dropping the padding columns. With one rank both are the plain
layers (``F.embedding`` and ``LayerOps.linear``).

A table whose checkpoint source offers its rows kept quantized (``QuantizedLazyTensor``: a
GGUF Q8_0 / Q6_K... table under ``--quantization gguf``) keeps them as ``qweights`` (a
``WNA16Weight``, this rank's rows as output features) and drops the float ``weight`` (left
as an empty ``[0, hidden]`` parameter): the lookup de-quantizes only the looked-up rows and
the logits run ``LayerOps.wna16_linear`` (``quantized_vocab.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vllm_core.distributed.communicator import Communicator, SingleRankCommunicator
from vllm_core.model_executor.layers.ops import LayerOps, TorchLayerOps
from vllm_core.model_executor.layers.quantized_vocab import pad_outputs, wna16_rows
from vllm_core.model_executor.quantization.quantized_weights import WNA16Weight
from vllm_core.model_executor.weight_source import (
    QuantizedLazyTensor,
    WeightSource,
    read_slice,
    source_shape,
)


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
        self.qweights: WNA16Weight | None = None

    def load(self, source: WeightSource) -> None:
        """Read this rank's rows of the ``[vocab, hidden]`` checkpoint table."""
        shape = source_shape(source)
        if tuple(shape) != (self.num_embeddings, self.weight.shape[1]):
            raise ValueError(f"has shape {tuple(shape)}, expected "
                             f"{(self.num_embeddings, self.weight.shape[1])} (config and "
                             f"weights disagree)")
        rows = self.vocab_end - self.vocab_start
        if isinstance(source, QuantizedLazyTensor):
            self.load_quantized(source.read_quantized(self.vocab_start, rows))
            return
        self.weight.data[rows:].zero_()
        self.weight.data[:rows].copy_(read_slice(source, 0, self.vocab_start, rows))

    def load_quantized(self, w: WNA16Weight) -> None:
        """Keep this rank's rows quantized (``w``: their ``WNA16Weight``, scales in any float
        dtype): padded to ``per_rank`` outputs, scales and zero points cast to the table's
        dtype, and the float ``weight`` emptied."""
        dtype, dev = self.weight.dtype, self.weight.device
        w = pad_outputs(w, self.per_rank)
        self.qweights = WNA16Weight(w.qweight.to(dev), w.scales.to(dev, dtype),
                                    w.zeros.to(dev, dtype), None, w.bits, w.group_size,
                                    w.in_features, w.out_features)
        self.weight = nn.Parameter(self.weight.new_empty(0, self.weight.shape[1]),
                                   requires_grad=False)

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """Rows ``ids`` (local, in ``[0, per_rank)``) of this rank's table."""
        if self.qweights is not None:
            return wna16_rows(self.qweights, ids.reshape(-1), self.weight.dtype).reshape(
                *ids.shape, -1)
        return F.embedding(ids, self.weight)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.tp.world_size == 1:
            return self.lookup(ids)
        mask = (ids >= self.vocab_start) & (ids < self.vocab_end)
        local = torch.where(mask, ids - self.vocab_start, torch.zeros_like(ids))
        out = self.lookup(local) * mask.unsqueeze(-1).to(self.weight.dtype)
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
    if table.qweights is not None:
        return ops.wna16_linear(hidden, table.qweights).float()
    return ops.linear(hidden, table.weight).float()


def gather_logits(local: torch.Tensor, table: VocabParallelEmbedding) -> torch.Tensor | None:
    """Every rank's ``local_logits`` gathered on TP rank 0 as ``[N, vocab]`` (padding
    dropped); None on the other TP ranks; the identity with one rank."""
    tp = table.tp
    if tp.world_size == 1:
        return local
    full = tp.gather(local, dst=0, dim=-1)
    return None if full is None else full[..., :table.num_embeddings]
