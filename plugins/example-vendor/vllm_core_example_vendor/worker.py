"""The example worker and runner: the core's ``TorchWorker`` and ``ModelRunner`` with the
platform hooks a real device fills in.

The core runner already gives a plugin the persistent request table, the step plan, staging
buffers, sampling-metadata reuse and the async step pipeline (launch step N+1, collect step N,
tokens in flight fed on the device). A device plugin overrides only the hooks below (platform
API 2.0, see ``docs/plugin-author-guide.md``); this stand-in device computes on the host, so
each hook keeps the core's behaviour and says what a real device would do instead.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from vllm_core.worker.model_runner import ModelRunner, StepShape
from vllm_core.worker.step_plan import StepPlan
from vllm_core.worker.torch_worker import TorchWorker


class ExampleModelRunner(ModelRunner):
    # A device with its own memory stages inputs in pinned host memory: set this True.
    pin_memory: ClassVar[bool] = False

    def new_step_event(self) -> Any | None:
        # A device that runs asynchronously returns its event type here (``record()`` /
        # ``synchronize()``), so the host prepares step N+1 while the device runs step N.
        return None

    def padded_shape(self, plan: StepPlan) -> StepShape | None:
        # A device that replays captured graphs returns the graph's padded shape here (and
        # implements ``capture_graphs`` and ``run_forward``'s replay).
        return None


class ExampleWorker(TorchWorker):
    """Runs the example runner on the example device (``torch`` on the host here)."""

    def runner_class(self) -> type[ModelRunner]:
        return ExampleModelRunner

    def make_device(self) -> torch.device:
        return torch.device("cpu")      # a real plugin: torch.device(<its type>, local_rank)
