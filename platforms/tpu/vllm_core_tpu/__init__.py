"""vllm-core platform plugin for Google TPUs (torch_xla).

Entry point: ``detect`` (group ``vllm.platform_plugins``). Detection never starts the XLA
runtime: it checks that torch_xla or libtpu is importable and that TPU chips are present.
"""

from __future__ import annotations

from typing import Any


def detect() -> Any:
    from vllm_core_tpu.detection import detect_tpu

    return detect_tpu()
