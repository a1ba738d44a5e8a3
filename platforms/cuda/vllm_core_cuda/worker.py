"""``CudaWorker``: the core ``TorchWorker`` on one NVIDIA GPU.

Differences: Triton layer kernels (``CudaLayerOps``: ``TritonLayerOps`` plus, opt-in, this
plugin's CUDA W4A16 decode GEMV), the ``CudaModelRunner`` (persistent inputs, CUDA graphs,
sync-free sampling), and KV sizing from a profiled peak:

    kv_budget = total * gpu_memory_utilization - non_torch - peak_torch - graph_reserve

``non_torch`` is device memory used outside torch's allocator (CUDA context, cuBLAS, other
processes) measured before profiling; ``peak_torch`` the allocator's peak over loading the
weights and a maximal forward + sampling (``CudaModelRunner.profile_run``); ``graph_reserve``
the static logits of the decode graphs plus a margin for the graph pool. A budget that cannot
hold one request of ``max_model_len`` tokens raises ``ValueError`` with the numbers.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from vllm_core.logger import init_logger
from vllm_core.worker.torch_worker import TorchWorker
from vllm_core_cuda.model_runner import CudaModelRunner

logger = init_logger(__name__)

GRAPH_POOL_MARGIN_BYTES = 256 * 2**20
GIB = 2**30


class CudaWorker(TorchWorker):
    """One GPU (``cuda:local_rank``). See the module docstring for memory sizing."""

    runner: CudaModelRunner | None

    def __init__(self, config: Any, rank: int = 0, local_rank: int = 0,
                 platform: Any = None, **kwargs: Any) -> None:
        super().__init__(config, rank, local_rank, platform, **kwargs)
        self.memory_report: dict[str, float] = {}

    def make_device(self) -> torch.device:
        return torch.device("cuda", self.local_rank)

    def init_device(self) -> None:
        """The core's set-up, then, with tensor parallelism, the TP group's graph-safe
        all-reduce (``CudaCommunicator.enable_fast_all_reduce``), its buffer large enough for
        the all-reduces of the largest captured decode batch. Without it the TP ranks run
        eager (no decode graphs): NCCL inside a captured graph is not safe. With pipeline
        parallelism too, the stages agree (a world all-reduce): graphs on every stage or none."""
        super().init_device()
        tp = self.parallel.tp
        if self.parallel.tp_size == 1 or not hasattr(tp, "enable_fast_all_reduce"):
            return
        from vllm_core_cuda import envs

        runner = self.runner
        if not envs.fast_all_reduce():
            safe = False
            logger.info("VLLM_CUDA_FAST_ALL_REDUCE=0: tensor parallelism all-reduces through "
                        "NCCL")
        else:
            per_token = self.config.model.arch.hidden_size * runner.dtype.itemsize
            capacity = max(envs.symm_mem_buffer_bytes(),
                           max(runner.graph_sizes, default=0) * per_token)
            safe = tp.enable_fast_all_reduce(self.device, runner.dtype, capacity,
                                             envs.one_shot_max_bytes())
        if not safe and runner.graph_sizes:
            logger.info("decode graphs off: the TP all-reduce is not graph-safe")
            runner.graph_sizes = []
        if self.parallel.pp_size > 1:
            # every stage must pad a step alike (the rows one stage sends, the next receives):
            # graphs stay on only where every TP group kept them
            on = torch.tensor([1 if runner.graph_sizes else 0], device=self.device)
            if int(self.parallel.world.all_reduce(on).item()) < self.parallel.world_size:
                if runner.graph_sizes:
                    logger.info("decode graphs off: another pipeline stage runs eager")
                runner.graph_sizes = []

    def layer_ops(self) -> Any:
        from vllm_core_cuda import envs
        from vllm_core_cuda.layer_ops import CudaLayerOps

        return CudaLayerOps(gemv_max_rows=envs.cuda_gemv_max_rows(),
                            wna16_kernel=envs.cuda_wna16_kernel(),
                            wna16_pack=envs.cuda_wna16_pack())

    def runner_class(self) -> type[CudaModelRunner]:
        return CudaModelRunner

    def load_model(self) -> None:
        start = time.perf_counter()
        super().load_model()
        torch.cuda.synchronize(self.device)
        self.memory_report["weights_gib"] = torch.cuda.memory_allocated(self.device) / GIB
        self.memory_report["load_seconds"] = time.perf_counter() - start

    def determine_available_memory(self) -> int:
        cache = self.config.cache
        if cache.cache_space_bytes is not None:
            return int(cache.cache_space_bytes)
        dev = self.device
        torch.cuda.synchronize(dev)
        torch.cuda.empty_cache()
        free, total = torch.cuda.mem_get_info(dev)
        non_torch = total - free - torch.cuda.memory_reserved(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        with self.platform.inference_mode():
            self.runner.profile_run()
        torch.cuda.synchronize(dev)
        peak = torch.cuda.max_memory_allocated(dev)
        torch.cuda.empty_cache()
        runner = self.runner
        graph_reserve = 0
        if runner.graph_sizes:
            graph_reserve = (max(runner.graph_sizes) * runner.arch.vocab_size * 4
                             + GRAPH_POOL_MARGIN_BYTES)
        util = cache.gpu_memory_utilization
        budget = int(total * util) - non_torch - peak - graph_reserve
        per_block = runner.kv_cache_bytes_per_block()
        need_blocks = -(-int(self.config.model.max_model_len) // runner.block_size) + 1
        self.memory_report.update(
            total_gib=total / GIB, non_torch_gib=non_torch / GIB, peak_torch_gib=peak / GIB,
            graph_reserve_gib=graph_reserve / GIB, kv_budget_gib=max(budget, 0) / GIB)
        logger.info("memory: total %.1f GiB x %.2f; weights %.2f GiB; profiled peak %.2f GiB; "
                    "outside torch %.2f GiB; graphs %.2f GiB -> KV cache %.2f GiB",
                    total / GIB, util, self.memory_report.get("weights_gib", 0.0), peak / GIB,
                    non_torch / GIB, graph_reserve / GIB, max(budget, 0) / GIB)
        if budget < need_blocks * per_block:
            raise ValueError(
                f"not enough GPU memory for one request of max_model_len="
                f"{self.config.model.max_model_len} tokens: it needs "
                f"{need_blocks * per_block / GIB:.2f} GiB of KV cache, but only "
                f"{max(budget, 0) / GIB:.2f} GiB is left of {total / GIB:.1f} GiB x "
                f"gpu_memory_utilization {util} after the weights and peak activations "
                f"({peak / GIB:.2f} GiB), memory outside torch ({non_torch / GIB:.2f} GiB) and "
                f"CUDA graphs ({graph_reserve / GIB:.2f} GiB); raise --gpu-memory-utilization, "
                f"lower --max-model-len or --max-num-batched-tokens, or use --enforce-eager")
        return budget

    def initialize_cache(self, num_blocks: int) -> None:
        super().initialize_cache(num_blocks)
        self.memory_report["kv_cache_gib"] = (
            num_blocks * self.runner.kv_cache_bytes_per_block() / GIB)

    def graph_report(self) -> dict[str, Any]:
        """How this rank ran its steps (for tests and benchmarks, through the executor's
        ``collective_rpc``): graph sizes, graph / eager step counts, the TP all-reduce path."""
        runner = self.runner
        policy = getattr(self.parallel.tp, "policy", None) if self.parallel else None
        return {"rank": self.rank, "graph_sizes": list(runner.graph_sizes),
                "graph_steps": runner.num_graph_steps, "eager_steps": runner.num_eager_steps,
                "fast_all_reduce": sorted(policy.algorithms) if policy is not None else []}

    def shutdown(self) -> None:
        if self.runner is not None and self.runner.graphs is not None:
            self.runner.graphs.clear()
        super().shutdown()
