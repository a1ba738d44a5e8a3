"""ROCm plugin tests: the device marker, and the CUDA plugin's Triton test set-up (the ROCm
plugin runs the same portable Triton kernels; without a GPU they run under
``TRITON_INTERPRET=1``, with the interpreter fix the CUDA tests apply)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

_CUDA_CONFTEST = Path(__file__).resolve().parents[2] / "cuda" / "tests" / "conftest.py"
_spec = importlib.util.spec_from_file_location("_vllm_core_cuda_test_setup", _CUDA_CONFTEST)
_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_module)


def pytest_configure(config):
    config.addinivalue_line("markers", "rocm_device: needs a real rocm device")
