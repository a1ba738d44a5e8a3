"""Building a runner's ``LoRAManager`` (one call from ``ModelRunner.load_model``)."""

from __future__ import annotations

from typing import Any

from vllm_core.devices import HOST
from vllm_core.lora.manager import LoRAManager


def lora_manager_for_runner(runner: Any) -> LoRAManager:
    """Wrap ``runner.model`` for ``runner.config.lora``. The platform's LoRA kernels
    (``LayerOps.lora_kernels()``) when it has them ("sgmv"), else the torch ``segment`` path
    on host devices and the graph-safe ``dense`` one on accelerators (see ``lora.batch``)."""
    config = runner.config.lora
    kernels = runner.ops.lora_kernels() if runner.ops is not None else None
    mode = config.kernel
    if mode == "auto":
        mode = "sgmv" if kernels is not None else (
            "segment" if runner.device == HOST else "dense")
    if mode == "sgmv" and kernels is None:
        raise ValueError("lora kernel 'sgmv' needs a platform with LoRA kernels (Triton)")
    if mode == "segment" and runner.graph_sizes:
        raise ValueError("lora kernel 'segment' cannot run in captured graphs; use dense, "
                         "sgmv or --enforce-eager")
    return LoRAManager.for_model(runner.model, config, runner.arch, runner.dtype,
                                 runner.device, runner.max_num_tokens, mode,
                                 pin_memory=runner.pin_memory, kernels=kernels)
