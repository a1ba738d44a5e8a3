"""Building a runner's ``LoRAManager`` (one call from ``ModelRunner.load_model``)."""

from __future__ import annotations

from typing import Any

from vllm_core.devices import HOST
from vllm_core.lora.manager import LoRAManager


def lora_manager_for_runner(runner: Any) -> LoRAManager:
    """Wrap ``runner.model`` for ``runner.config.lora``. Host devices use the ``segment``
    torch path; accelerators the graph-safe ``dense`` one (see ``lora.batch``)."""
    mode = "segment" if runner.device == HOST else "dense"
    return LoRAManager.for_model(runner.model, runner.config.lora, runner.arch, runner.dtype,
                                 runner.device, runner.max_num_tokens, mode,
                                 pin_memory=runner.pin_memory)
