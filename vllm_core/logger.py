"""Logging set-up for the ``vllm_core`` logger hierarchy."""

from __future__ import annotations

import logging
import sys

from vllm_core import envs

_configured = False


def init_logger(name: str) -> logging.Logger:
    """Return a logger under ``vllm_core``; the first call installs one stderr handler."""
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
    return logging.getLogger(name)
