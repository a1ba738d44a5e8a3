"""Registers the marker of tests that need a real device of this platform (deselected by the
hardware-free nox session, which prints them as not run)."""

from __future__ import annotations


def pytest_configure(config):
    config.addinivalue_line("markers", "xpu_device: needs a real xpu device")
