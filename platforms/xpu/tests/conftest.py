"""XPU plugin tests: the device marker, and the portable Triton kernels' test set-up
(``platforms/triton/tests/conftest.py``: without a GPU the kernels run under
``TRITON_INTERPRET=1``, with its interpreter fix)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

_TRITON_CONFTEST = Path(__file__).resolve().parents[2] / "triton" / "tests" / "conftest.py"
_spec = importlib.util.spec_from_file_location("_vllm_core_triton_test_setup", _TRITON_CONFTEST)
_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_module)


def pytest_configure(config):
    config.addinivalue_line("markers", "xpu_device: needs a real xpu device")
