"""The CUDA communicator's graph-safe all-reduce, its routing and its start-up check, on the
CPU: two gloo processes stand in for two GPUs, and the symmetric-memory backend is replaced by
one that sums through gloo (``GlooSum``), or one that sums wrongly (``WrongTwoShot``), or one
that cannot be built on one rank (``FailsOnRank1``). The real kernels are checked on two GPUs
by ``test_fast_all_reduce_gpu.py``."""

from __future__ import annotations

import multiprocessing
import socket

import pytest
import torch

from vllm_core.config import EngineConfig, ModelConfig, ParallelConfig
from vllm_core_cuda import platform as cuda_platform
from vllm_core_cuda.communicator import NCCL, AllReducePolicy
from vllm_core_cuda.platform import CudaPlatform, default_graph_batch_sizes

KIB = 1024


def test_policy_routes_by_size():
    both = AllReducePolicy(one_shot_max_bytes=64 * KIB, capacity_bytes=1024 * KIB,
                           algorithms=frozenset({"one_shot", "two_shot"}))
    assert both.choose(8 * KIB) == "one_shot"
    assert both.choose(64 * KIB) == "one_shot"
    assert both.choose(64 * KIB + 2) == "two_shot"
    assert both.choose(1024 * KIB) == "two_shot"
    assert both.choose(1024 * KIB + 2) == NCCL
    only_one = AllReducePolicy(64 * KIB, 1024 * KIB, frozenset({"one_shot"}))
    assert only_one.choose(512 * KIB) == "one_shot"       # takes the whole buffer range
    only_two = AllReducePolicy(64 * KIB, 1024 * KIB, frozenset({"two_shot"}))
    assert only_two.choose(8 * KIB) == "two_shot"
    assert AllReducePolicy(64 * KIB, 1024 * KIB, frozenset()).choose(8) == NCCL


def test_tensor_and_pipeline_parallel_keep_graphs(monkeypatch):
    monkeypatch.setattr(cuda_platform, "device_capability", lambda index=0: (9, 0))
    tp = EngineConfig(model=ModelConfig(model="m"),
                      parallel=ParallelConfig(tensor_parallel_size=2))
    CudaPlatform.check_and_update_config(tp)
    assert tp.graph_batch_sizes == default_graph_batch_sizes(256)
    pp = EngineConfig(model=ModelConfig(model="m"),
                      parallel=ParallelConfig(tensor_parallel_size=2, pipeline_parallel_size=2))
    CudaPlatform.check_and_update_config(pp)
    assert pp.graph_batch_sizes == default_graph_batch_sizes(256)   # stage graphs


class GlooSum:
    """Stands in for ``SymmMemAllReduce``: the right sum (through gloo), counting its calls."""

    def __init__(self, group, device, capacity_bytes):
        self.group, self.device, self.capacity_bytes = group, device, capacity_bytes
        self.calls: list[tuple[str, int]] = []
        self.closed = False

    def run(self, algorithm, x):
        import torch.distributed as dist

        self.calls.append((algorithm, x.nbytes))
        out = x.clone()
        dist.all_reduce(out, group=self.group)
        return self.wrong(algorithm, out)

    def wrong(self, algorithm, out):
        return out

    run_in_graph = run

    def close(self):
        self.closed = True


class WrongTwoShot(GlooSum):
    def wrong(self, algorithm, out):
        return out + 1 if algorithm == "two_shot" else out


class FailsOnRank1(GlooSum):
    def __init__(self, group, device, capacity_bytes):
        import torch.distributed as dist

        if dist.get_rank() == 1:
            raise RuntimeError("no peer access")
        super().__init__(group, device, capacity_bytes)


def _rank(rank: int, port: int, case: str, queue) -> None:
    import torch.distributed as dist

    from vllm_core_cuda.communicator import CudaCommunicator

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", world_size=2,
                            rank=rank)
    try:
        comm = CudaCommunicator(dist.group.WORLD, rank, [0, 1])
        factory = {"good": GlooSum, "wrong_two_shot": WrongTwoShot,
                   "fails": FailsOnRank1}[case]
        safe = comm.enable_fast_all_reduce(torch.device("cpu"), torch.float32, 64 * KIB,
                                           4 * KIB, factory=factory, check_graphs=False)
        if comm.fast is not None:
            comm.fast.calls.clear()
        results = []
        for numel in (16, 2048, 32 * 1024):          # 64 B, 8 KiB, 128 KiB of float32
            x = torch.arange(numel, dtype=torch.float32) * (rank + 1)
            out = comm.all_reduce(x)
            results.append(torch.equal(out, torch.arange(numel, dtype=torch.float32) * 3))
        calls = [] if comm.fast is None else list(comm.fast.calls)
        algorithms = None if comm.policy is None else sorted(comm.policy.algorithms)
        queue.put((rank, safe, comm.graph_safe, algorithms, calls, results))
    finally:
        dist.destroy_process_group()


def _run(case: str) -> dict[int, tuple]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_rank, args=(r, port, case, queue)) for r in range(2)]
    for p in procs:
        p.start()
    out = dict((item[0], item[1:]) for item in (queue.get(timeout=120) for _ in procs))
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    return out


@pytest.mark.parametrize("case", ["good", "wrong_two_shot", "fails"])
def test_fast_all_reduce_check_and_routing(case):
    out = _run(case)
    for rank in (0, 1):
        safe, graph_safe, algorithms, calls, results = out[rank]
        assert results == [True, True, True]               # every path sums right
        if case == "good":
            assert safe and graph_safe and algorithms == ["one_shot", "two_shot"]
            # 64 B and 8 KiB... 8 KiB > 4 KiB one-shot limit -> two-shot; 128 KiB > buffer: NCCL
            assert calls == [("one_shot", 64), ("two_shot", 8192)]
        elif case == "wrong_two_shot":
            # the wrong kernel is dropped on both ranks; one-shot takes the whole buffer
            assert safe and algorithms == ["one_shot"]
            assert calls == [("one_shot", 64), ("one_shot", 8192)]
        else:
            # rank 1 could not build it: both ranks stay on NCCL, graphs off
            assert not safe and not graph_safe and algorithms is None and calls == []
