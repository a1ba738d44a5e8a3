"""vllm-core platform plugin for Intel GPUs (``torch.xpu``).

Entry point: ``detect`` (group ``vllm.platform_plugins``). It uses the core's portable
"reference" attention backend, so it registers no backends of its own.
"""

from __future__ import annotations

from typing import Any


def detect() -> Any:
    from vllm_core_xpu.detection import detect_xpu

    return detect_xpu()
