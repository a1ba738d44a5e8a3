"""``TpuWorker``: the core TorchWorker on torch_xla's device with the bucketed runner.

Memory: the KV budget is ``cache.cache_space_bytes`` when given; on a TPU, the device's free
memory after a profiling forward of the largest bucket, times ``gpu_memory_utilization``; on
an XLA device without allocator statistics (XLA's CPU device) a quarter of the host's
available RAM, at most 4 GiB. Warm-up compiles every bucket graph unless
``config.extra["tpu_precompile"]`` is False; the bucket list and compile count are logged.
"""

from __future__ import annotations

from typing import Any

import torch

from vllm_core.logger import init_logger
from vllm_core.worker.torch_worker import TorchWorker
from vllm_core_tpu import runtime
from vllm_core_tpu.model_runner import TpuModelRunner

logger = init_logger(__name__)

HOST_KV_FRACTION = 0.25
HOST_KV_CAP_BYTES = 4 << 30


def host_available_bytes() -> int:
    import psutil

    return int(psutil.virtual_memory().available)


class TpuWorker(TorchWorker):
    runner: TpuModelRunner | None

    def make_device(self) -> torch.device:
        return torch.device(runtime.xla_device())

    def runner_class(self) -> type[TpuModelRunner]:
        return TpuModelRunner

    def load_model(self) -> None:
        super().load_model()
        runtime.sync()

    def determine_available_memory(self) -> int:
        cache = self.config.cache
        if cache.cache_space_bytes is not None:
            return int(cache.cache_space_bytes)
        if not runtime.on_real_tpu():
            budget = int(min(host_available_bytes() * HOST_KV_FRACTION, HOST_KV_CAP_BYTES))
            logger.info("XLA device %s has no allocator statistics: KV cache budget %.2f GiB "
                        "of host memory", runtime.pjrt_device_type(), budget / 2**30)
            return budget
        self.runner.profile_run()
        runtime.wait_device_ops()
        free, total = runtime.memory_info()
        budget = int(total * cache.gpu_memory_utilization) - (total - free)
        if budget <= 0:
            raise ValueError(
                f"no TPU memory left for the KV cache: {(total - free) / 2**30:.1f} GiB of "
                f"{total / 2**30:.1f} GiB in use after profiling; raise "
                f"--gpu-memory-utilization (now {cache.gpu_memory_utilization})")
        return budget

    def initialize_cache(self, num_blocks: int) -> None:
        super().initialize_cache(num_blocks)
        runtime.sync()

    def compile_or_warm_up_model(self) -> None:
        precompile = bool(self.config.extra.get("tpu_precompile", True))
        self.runner.compile_or_warm_up(precompile)

    def startup_report(self) -> dict[str, Any]:
        """Buckets and compile numbers (what the start-up log line says), for tools/tests."""
        runner = self.runner
        return {"token_buckets": list(runner.buckets.tokens),
                "request_buckets": list(runner.buckets.requests),
                "max_graphs": runner.buckets.max_graphs,
                "warmup_compiles": runner.warmup_compiles,
                "warmup_seconds": runner.warmup_seconds,
                "compile_count": runtime.compile_count()}
