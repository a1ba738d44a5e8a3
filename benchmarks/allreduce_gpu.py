"""All-reduce latency on two GPUs: NCCL (eager) against the CUDA plugin's graph-safe
all-reduce (``CudaCommunicator``: symmetric-memory one-shot / two-shot), eager and replayed
from a CUDA graph, same processes, same run. One JSON line per message size (rank 0)::

    {"bench": "all_reduce", "bytes": 8192, "route": "one_shot", "nccl_eager_us": 39.1,
     "fast_eager_us": 12.0, "fast_graph_us": 4.1, "nccl_over_fast_graph": 9.5, ...}

    python benchmarks/allreduce_gpu.py [--sizes 8192,65536,...] [--dtype bfloat16]

NCCL is not timed inside a graph (it hung there on the two-H200 host, hardware-notes.md).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import socket

MIB = 2**20
DEFAULT_SIZES = [8 * 1024, 32 * 1024, 128 * 1024, 512 * 1024, MIB, 2 * MIB, 4 * MIB, 8 * MIB]


def _time_us(fn, iters: int) -> float:
    import torch

    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) * 1000.0 / iters


def _rank(rank: int, port: int, sizes: list[int], dtype_name: str, iters: int) -> None:
    os.environ.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")
    import torch
    import torch.distributed as dist

    from vllm_core_cuda import envs
    from vllm_core_cuda.communicator import CudaCommunicator

    torch.cuda.set_device(rank)
    device = torch.device("cuda", rank)
    dtype = getattr(torch, dtype_name)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", world_size=2,
                            rank=rank, device_id=device)
    comm = CudaCommunicator(dist.group.WORLD, rank, [0, 1])
    capacity = max(envs.symm_mem_buffer_bytes(), max(sizes))
    enabled = comm.enable_fast_all_reduce(device, dtype, capacity, envs.one_shot_max_bytes())
    for nbytes in sizes:
        x = torch.randn(nbytes // dtype.itemsize, device=device).to(dtype)
        nccl = _time_us(lambda x=x: dist.all_reduce(x), iters)
        row = {"bench": "all_reduce", "bytes": nbytes, "dtype": dtype_name,
               "world_size": 2, "nccl_eager_us": round(nccl, 2), "fast_enabled": enabled}
        if enabled:
            route = comm.policy.choose(x.nbytes)
            row["route"] = route
            fast = _time_us(lambda x=x: comm.all_reduce(x), iters)
            row["fast_eager_us"] = round(fast, 2)
            if route != "nccl":
                per_graph = 20
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                    y = x
                    for _ in range(per_graph):
                        y = comm.all_reduce(y)
                graph_us = _time_us(graph.replay, max(iters // per_graph, 5)) / per_graph
                row["fast_graph_us"] = round(graph_us, 2)
                row["nccl_over_fast_graph"] = round(nccl / graph_us, 2)
                del graph
            row["nccl_over_fast_eager"] = round(nccl / fast, 2)
        if rank == 0:
            print(json.dumps(row), flush=True)
        dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)),
                        help="message sizes in bytes, comma separated")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--iters", type=int, default=200)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_rank, args=(r, port, sizes, args.dtype, args.iters))
             for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    if any(p.exitcode != 0 for p in procs):
        raise SystemExit(f"a rank failed: exit codes {[p.exitcode for p in procs]}")


if __name__ == "__main__":
    main()
