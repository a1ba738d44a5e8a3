"""The platform's communicator class carries every collective (Platform.communicator_class,
API 2.1); each collective of the default one does what the interface says on gloo (reduce-
scatter, all-gather, broadcast, send/recv); the parallel layers over 2 gloo ranks compute the
unsharded result: a
row-parallel linear all-reduces once, a vocab-parallel embedding returns the full rows, the LM
head's logits are gathered on TP rank 0 only."""

from __future__ import annotations

import multiprocessing
import socket

import torch

from vllm_core.distributed.communicator import TorchDistributedCommunicator


class CountingCommunicator(TorchDistributedCommunicator):
    calls: list[str] = []

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        CountingCommunicator.calls.append("all_reduce")
        return super().all_reduce(x)

    def gather(self, x: torch.Tensor, dst: int = 0, dim: int = -1) -> torch.Tensor | None:
        CountingCommunicator.calls.append("gather")
        return super().gather(x, dst, dim)


class FakePlatform:
    dist_backend = "gloo"

    @classmethod
    def communicator_class(cls) -> str:
        return f"{__name__}.CountingCommunicator"


def _rank(rank: int, port: int, queue) -> None:
    from vllm_core.distributed.parallel_context import (
        destroy_parallel_context,
        init_parallel_context,
    )
    from vllm_core.model_executor.layers.ops import TorchLayerOps
    from vllm_core.model_executor.layers.parallel_linear import RowParallelLinear
    from vllm_core.model_executor.layers.vocab_parallel import (
        VocabParallelEmbedding,
        compute_parallel_logits,
        gather_logits,
        local_logits,
    )

    torch.set_num_threads(1)
    par = init_parallel_context(FakePlatform, 2, 1, rank, f"tcp://127.0.0.1:{port}")
    gen = torch.Generator().manual_seed(0)
    w, x = torch.randn(6, 8, generator=gen), torch.randn(3, 8, generator=gen)
    bias = torch.randn(6, generator=gen)
    row = RowParallelLinear(8, 6, bias=True, tp=par.tp)
    row.load("weight", w)
    row.load("bias", bias)
    y = row(x[:, rank * 4:(rank + 1) * 4])
    table = torch.randn(7, 8, generator=gen)
    emb = VocabParallelEmbedding(7, 8, par.tp)
    emb.load(table)
    ids = torch.tensor([0, 3, 4, 6])
    rows = emb(ids)
    logits = compute_parallel_logits(x, emb, TorchLayerOps())
    calls = list(CountingCommunicator.calls)
    # what a captured TP decode graph holds (no communication), gathered after the replay
    local = local_logits(x, emb, TorchLayerOps())
    split = gather_logits(local, emb)
    split_ok = (local.shape == (3, 4) and (split is None) == (logits is None)
                and (split is None or torch.equal(split, logits)))
    tp = par.tp
    others = [tp.reduce_scatter(torch.arange(4.0) * (rank + 1)).tolist(),
              tp.all_gather(torch.tensor([rank, 10 + rank]), dim=0).tolist(),
              tp.broadcast(torch.tensor([rank + 5]), src=1).tolist()]
    if rank == 0:
        tp.send(torch.tensor([42.0, 43.0]), dst=1)
    else:
        others.append(tp.recv((2,), torch.float32, torch.device("cpu"), src=0).tolist())
    queue.put((rank, type(tp).__name__, calls, others,
               torch.allclose(y, x @ w.T + bias, atol=1e-5), torch.equal(rows, table[ids]),
               None if logits is None else torch.allclose(logits, x @ table.T, atol=1e-5),
               split_ok))
    destroy_parallel_context()


def test_platform_communicator_carries_the_collectives():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_rank, args=(r, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = sorted(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(30)
    assert [p.exitcode for p in procs] == [0, 0]
    for rank, cls, calls, others, row_ok, emb_ok, logits_ok, split_ok in results:
        assert cls == "CountingCommunicator"
        assert others[0] == [[0.0, 3.0], [6.0, 9.0]][rank]         # sum (x3), this rank's half
        assert others[1] == [0, 10, 1, 11] and others[2] == [6]
        assert others[3:] == ([] if rank == 0 else [[42.0, 43.0]])
        assert calls == ["all_reduce", "all_reduce", "gather"]   # row, embedding, LM head
        assert row_ok and emb_ok
        assert logits_ok is (True if rank == 0 else None)
        assert split_ok          # local logits + gather == compute_parallel_logits
