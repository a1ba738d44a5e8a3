"""The executor contract shared by the executors that drive one worker per rank (``mp``,
``ray``): everything that is "the same call on every rank" is written once here, on top of the
two transport-specific methods a subclass provides.

Subclass contract: ``collective_rpc(method, *args)`` calls ``method(*args)`` on every rank's
worker and returns the results in rank order (raising ``WorkerFailure`` when a rank fails);
``execute_model_async(scheduler_output)`` launches a step on every rank and returns a pending
output whose ``result()`` is the sampling rank's ``ModelRunnerOutput``; ``self.config`` is the
``EngineConfig``.
"""

from __future__ import annotations

from typing import Any

from vllm_core.config import EngineConfig
from vllm_core.messages import ModelRunnerOutput, SchedulerOutput


class RankedExecutor:
    """Executor methods derived from ``collective_rpc`` / ``execute_model_async``."""

    config: EngineConfig

    def collective_rpc(self, method: str, *args: Any) -> list[Any]:
        raise NotImplementedError

    def execute_model_async(self, scheduler_output: SchedulerOutput) -> Any:
        raise NotImplementedError

    def determine_num_blocks(self) -> int:
        """The fewest KV blocks any rank's memory holds (every rank allocates that many)."""
        return min(self.collective_rpc("num_blocks"))

    def initialize_cache(self, num_blocks: int) -> None:
        self.collective_rpc("initialize_cache", num_blocks)
        self.collective_rpc("compile_or_warm_up_model")

    def execute_model(self, scheduler_output: SchedulerOutput) -> ModelRunnerOutput:
        return self.execute_model_async(scheduler_output).result()

    def add_lora(self, lora_id: int, path: str) -> None:
        """Check the adapter here first (a worker's error would stop the engine), then load
        it on every rank."""
        from vllm_core.lora.peft_adapter import load_peft_adapter

        lora = self.config.lora
        if lora is None:
            raise ValueError("LoRA adapters need an engine started with enable_lora")
        load_peft_adapter(lora_id, path, self.config.model.arch, lora.max_lora_rank)
        self.collective_rpc("add_lora", lora_id, path)

    def remove_lora(self, lora_id: int) -> None:
        self.collective_rpc("remove_lora", lora_id)
