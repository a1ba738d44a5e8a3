"""Executors: create the platform's worker(s) and drive their lifecycle.

``create_executor`` picks one from ``config.parallel.distributed_executor_backend``: ``uni``
(one worker in this process, tensor_parallel_size = pipeline_parallel_size = 1) or ``mp`` (one
spawned process per rank on this host; ``vllm_core.engine.mp_executor``). Every executor has
the same contract: ``determine_num_blocks``, ``initialize_cache``, ``execute_model``,
``execute_model_async``, ``shutdown``; one that sets ``supports_deferred_sampling`` also has
``sample_tokens`` (the second phase of a step launched with ``defer_sampling``).
"""

from __future__ import annotations

import importlib
from typing import Any

from vllm_core.config import EngineConfig
from vllm_core.logger import init_logger
from vllm_core.messages import ModelRunnerOutput, SchedulerOutput
from vllm_core.worker.worker_base import PendingOutput, Worker

logger = init_logger(__name__)


def _import_class(path: str) -> type:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


EXECUTOR_BACKENDS = ("uni", "mp", "ray")


def create_executor(config: EngineConfig, platform: Any) -> Any:
    """The executor ``config.parallel.distributed_executor_backend`` names."""
    backend = config.parallel.distributed_executor_backend
    if backend == "uni":
        return UniProcExecutor(config, platform)
    if backend == "mp":
        from vllm_core.engine.mp_executor import MultiprocExecutor

        return MultiprocExecutor(config, platform)
    if backend == "ray":
        from vllm_core.engine.ray_executor import RayExecutor

        return RayExecutor(config, platform)
    raise ValueError(f"distributed_executor_backend must be one of "
                     f"{', '.join(EXECUTOR_BACKENDS)}, got {backend!r}")


class UniProcExecutor:
    """Runs one worker in this process."""

    def __init__(self, config: EngineConfig, platform: Any) -> None:
        if config.parallel.world_size != 1:
            raise ValueError(
                f"the 'uni' executor runs one rank; tensor_parallel_size="
                f"{config.parallel.tensor_parallel_size} x pipeline_parallel_size="
                f"{config.parallel.pipeline_parallel_size} needs "
                "--distributed-executor-backend mp")
        self.config = config
        worker_cls = _import_class(platform.worker_class())
        self.worker: Worker = worker_cls(config, 0, 0, platform=platform)
        self.worker.init_device()
        self.worker.load_model()

    def determine_num_blocks(self) -> int:
        """KV blocks that fit the worker's memory budget (overridable by the user)."""
        cache = self.config.cache
        per_block = self.worker.kv_cache_bytes_per_block()
        if cache.num_blocks_override is not None:
            return cache.num_blocks_override
        available = self.worker.determine_available_memory()
        return available // per_block

    def initialize_cache(self, num_blocks: int) -> None:
        self.worker.initialize_cache(num_blocks)
        self.worker.compile_or_warm_up_model()

    def execute_model(self, scheduler_output: SchedulerOutput) -> ModelRunnerOutput:
        return self.worker.execute_model(scheduler_output)

    def execute_model_async(self, scheduler_output: SchedulerOutput) -> PendingOutput | None:
        return self.worker.execute_model_async(scheduler_output)

    @property
    def supports_deferred_sampling(self) -> bool:
        return bool(getattr(self.worker, "supports_deferred_sampling", False))

    def sample_tokens(self, scheduler_output: SchedulerOutput) -> PendingOutput:
        return self.worker.sample_tokens(scheduler_output)

    def add_lora(self, lora_id: int, path: str) -> None:
        """Load a LoRA adapter in the worker (ValueError when it does not fit)."""
        self.worker.add_lora(lora_id, path)

    def remove_lora(self, lora_id: int) -> None:
        self.worker.remove_lora(lora_id)

    def shutdown(self) -> None:
        self.worker.shutdown()
