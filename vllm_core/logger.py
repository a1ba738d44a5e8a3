"""Logging set-up for the ``vllm_core`` logger hierarchy."""

from __future__ import annotations

import logging
import sys

from vllm_core import envs

_configured = False


def init_logger(name: str) -> logging.Logger:
    """Return a logger under ``vllm_core``; the first call installs one stderr handler. A
    name outside that hierarchy (a plugin's module, e.g. ``vllm_core_cpu.kernels``) is
    nested under it (``vllm_core.vllm_core_cpu.kernels``), so plugins log through the same
    handler and level (``logging.getLogger`` nests by dotted prefix only)."""
    global _configured
    if not _configured:
        root = logging.getLogger("vllm_core")
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(
            "%(levelname)s %(asctime)s [%(filename)s:%(lineno)d] %(message)s", "%m-%d %H:%M:%S"))
        root.addHandler(handler)
        root.setLevel(envs.logging_level())
        root.propagate = False
        _configured = True
    if name != "vllm_core" and not name.startswith("vllm_core."):
        name = f"vllm_core.{name}"
    return logging.getLogger(name)
