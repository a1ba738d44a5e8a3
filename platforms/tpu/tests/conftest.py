"""Registers the marker of tests that need a real TPU (deselected by the hardware-free nox
session, which prints them as not run). Tests that run torch_xla use XLA's CPU device unless
``PJRT_DEVICE`` says otherwise (set before torch_xla starts its runtime)."""

from __future__ import annotations

import os

os.environ.setdefault("PJRT_DEVICE", "CPU")


def pytest_configure(config):
    config.addinivalue_line("markers", "tpu_device: needs a real tpu device")
