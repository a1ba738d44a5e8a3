"""TorchWorker: the generic Worker over the core ModelRunner. Platforms subclass it and
override the device pieces (``make_device``, ``layer_ops``, memory measurement)."""

from __future__ import annotations

from typing import Any

import torch

from vllm_core.config import EngineConfig
from vllm_core.distributed.parallel_context import (
    ParallelContext,
    destroy_parallel_context,
    init_parallel_context,
)
from vllm_core.logger import init_logger
from vllm_core.messages import ModelRunnerOutput, SchedulerOutput
from vllm_core.worker.model_runner import ModelRunner
from vllm_core.worker.worker_base import PendingOutput, Worker

logger = init_logger(__name__)


class TorchWorker(Worker):
    """Runs the model with plain torch on ``platform.device_type``.

    ``platform`` is the active Platform class (passed by the executor, never looked up deep
    inside). ``distributed_init_method`` (a ``tcp://host:port`` the executor chose) is needed
    when ``tensor_parallel_size * pipeline_parallel_size > 1``: ``init_device`` joins the
    process groups and hands the runner its ``ParallelContext``. Memory: the KV budget is ``cache.cache_space_bytes`` when set, else the
    platform's free memory after a profiling forward times ``gpu_memory_utilization``.
    """

    def __init__(self, config: EngineConfig, rank: int = 0, local_rank: int = 0,
                 platform: Any = None, distributed_init_method: str | None = None) -> None:
        super().__init__(config, rank, local_rank)
        self.distributed_init_method = distributed_init_method
        self.parallel: ParallelContext | None = None
        if platform is None:
            from vllm_core.platforms import current_platform

            platform = current_platform
        self.platform = platform
        self.runner: ModelRunner | None = None
        self.graph_capture_seconds = 0.0

    # hooks for subclasses ------------------------------------------------------------
    def runner_class(self) -> type[ModelRunner]:
        """Hook (API 2.0): the ModelRunner subclass this platform runs (its hooks are the
        device-specific part of a step)."""
        return ModelRunner

    def make_device(self) -> torch.device:
        """This rank's device: ``platform.device_type`` at ``local_rank`` (a host-memory
        platform returns ``vllm_core.devices.HOST``)."""
        return torch.device(self.platform.device_type, self.local_rank)

    def layer_ops(self) -> Any | None:
        """The platform's LayerOps instance (None: the core's torch ops)."""
        return None

    def select_attention_backend(self) -> type:
        from vllm_core.attention.selector import select_attention_backend

        arch = self.config.model.arch
        return select_attention_backend(
            self.platform, head_size=arch.head_dim, dtype=self.config.model.dtype,
            kv_cache_dtype=self.config.cache.kv_cache_dtype,
            block_size=self.config.cache.block_size, sliding_window=arch.sliding_window,
            requested=self.config.attention_backend)

    # Worker contract -----------------------------------------------------------------
    def init_device(self) -> None:
        self.device = self.make_device()
        self.platform.set_device(self.local_rank)
        self.platform.seed_everything(self.config.model.seed)
        par = self.config.parallel
        self.parallel = init_parallel_context(
            self.platform, par.tensor_parallel_size, par.pipeline_parallel_size, self.rank,
            self.distributed_init_method, enable_expert_parallel=par.enable_expert_parallel)
        backend = self.select_attention_backend()
        logger.info("attention backend: %s", backend.name)
        extra = {} if self.parallel.world_size == 1 else {"parallel": self.parallel}
        self.runner = self.runner_class()(self.config, self.device, backend, self.layer_ops(),
                                          **extra)

    def load_model(self) -> None:
        self.runner.load_model()

    def kv_cache_bytes_per_block(self) -> int:
        return self.runner.kv_cache_bytes_per_block()

    def determine_available_memory(self) -> int:
        cache = self.config.cache
        if cache.cache_space_bytes is not None:
            return int(cache.cache_space_bytes)
        self.platform.empty_cache()
        with self.platform.inference_mode():
            self.runner.profile_run()
        self.platform.synchronize()
        free = self.platform.free_memory_bytes()
        total = self.platform.total_memory_bytes()
        used = total - free
        budget = int(total * cache.gpu_memory_utilization) - used
        if budget <= 0:
            raise ValueError(
                f"no memory left for the KV cache: {used / 2**30:.1f} GiB of "
                f"{total / 2**30:.1f} GiB in use after loading the model; raise "
                f"--gpu-memory-utilization (now {cache.gpu_memory_utilization})")
        return budget

    def initialize_cache(self, num_blocks: int) -> None:
        self.runner.initialize_cache(num_blocks)

    def compile_or_warm_up_model(self) -> None:
        """Capture the runner's graphs (none unless the platform and backend support them)."""
        with self.platform.inference_mode():
            self.graph_capture_seconds = self.runner.capture_graphs()
        if self.runner.graph_sizes:
            logger.info("graph capture: %d batch sizes in %.2f s", len(self.runner.graph_sizes),
                        self.graph_capture_seconds)

    def execute_model(self, scheduler_output: SchedulerOutput) -> ModelRunnerOutput:
        with self.platform.inference_mode():
            return self.runner.execute_model(scheduler_output)

    def execute_model_async(self, scheduler_output: SchedulerOutput) -> PendingOutput:
        """Launch the step; the runner feeds tokens still in flight (async scheduling)."""
        with self.platform.inference_mode():
            return self.runner.execute_model_async(scheduler_output)

    supports_deferred_sampling = True

    def sample_tokens(self, scheduler_output: SchedulerOutput) -> PendingOutput:
        """The sampling phase of a step launched with ``defer_sampling``."""
        with self.platform.inference_mode():
            return self.runner.sample_tokens(scheduler_output)

    def add_lora(self, lora_id: int, path: str) -> None:
        """Load a PEFT adapter into host memory (ValueError when it does not fit)."""
        if self.runner is None or self.runner.lora is None:
            raise ValueError("LoRA adapters need an engine started with enable_lora")
        self.runner.lora.add(lora_id, path)

    def remove_lora(self, lora_id: int) -> bool:
        if self.runner is None or self.runner.lora is None:
            return False
        return self.runner.lora.remove(lora_id)

    def shutdown(self) -> None:
        if self.runner is not None:
            self.runner.kv_caches = []
            self.runner.model = None
        if self.parallel is not None and self.parallel.world_size > 1:
            destroy_parallel_context()
            self.parallel = None
