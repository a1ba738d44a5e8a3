"""The Worker contract: one per device rank, driven by the executor.

Call order: ``init_device`` -> ``load_model`` -> ``determine_available_memory`` ->
``initialize_cache(num_blocks)`` -> ``compile_or_warm_up_model`` -> ``execute_model`` (every
step) -> ``shutdown``. A plugin usually subclasses ``TorchWorker`` and overrides only the device
pieces; the generic ``ModelRunner`` in the core does batching, attention metadata and sampling.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # pragma: no cover
    from vllm_core.config import EngineConfig
    from vllm_core.messages import ModelRunnerOutput, SchedulerOutput


class PendingOutput(Protocol):
    """A launched step. ``result()`` waits for it (once or many times: same object back)."""

    def result(self) -> ModelRunnerOutput: ...


@dataclass(slots=True)
class ReadyOutput:
    """A step that already finished."""

    output: ModelRunnerOutput

    def result(self) -> ModelRunnerOutput:
        return self.output


class Worker(ABC):
    def __init__(self, config: EngineConfig, rank: int = 0, local_rank: int = 0) -> None:
        self.config = config
        self.rank = rank
        self.local_rank = local_rank

    @abstractmethod
    def init_device(self) -> None:
        """Select and initialise this rank's device; set threads/seeds. Called first."""

    @abstractmethod
    def load_model(self) -> None:
        """Build the model and load (or randomly initialise) its weights on the device."""

    @abstractmethod
    def determine_available_memory(self) -> int:
        """Bytes the KV cache may use, measured after loading weights and profiling a maximal
        batch (peak activations included). The engine divides it by the per-block size."""

    @abstractmethod
    def kv_cache_bytes_per_block(self) -> int:
        """Bytes one KV block takes across all layers (K and V)."""

    @abstractmethod
    def initialize_cache(self, num_blocks: int) -> None:
        """Allocate ``num_blocks`` KV blocks per layer. Block 0 is the null block."""

    def compile_or_warm_up_model(self) -> None:
        """Warm up kernels and capture graphs if the platform supports it. Optional."""

    @abstractmethod
    def execute_model(self, scheduler_output: SchedulerOutput) -> ModelRunnerOutput:
        """Run one step: update persistent request state, forward, sample. Never raises for
        a single bad request; errors here are engine-fatal."""

    def execute_model_async(self, scheduler_output: SchedulerOutput) -> PendingOutput:
        """Launch one step and return before the device finishes it (async scheduling).

        The engine then schedules the next step before it has this one's sampled ids; the
        worker must feed the tokens still in flight itself (see ``SchedulerOutput``). The
        default runs ``execute_model`` to completion, which satisfies the contract without
        overlap: the next step's inputs are already in the worker's request state."""
        return ReadyOutput(self.execute_model(scheduler_output))

    def sample_tokens(self, scheduler_output: SchedulerOutput) -> PendingOutput:
        """Finish a step launched with ``scheduler_output.defer_sampling`` (its
        ``execute_model_async`` returned None): apply the grammar bitmask attached since and
        sample. Only called when ``supports_deferred_sampling``."""
        raise NotImplementedError("this worker does not split a step into forward and sampling")

    supports_deferred_sampling: bool = False

    def add_lora(self, lora_id: int, path: str) -> None:
        raise NotImplementedError("LoRA adapters are not supported by this worker")

    def remove_lora(self, lora_id: int) -> None:
        raise NotImplementedError("LoRA adapters are not supported by this worker")

    def shutdown(self) -> None:
        """Release device resources. Idempotent."""
