"""CUDA plugin tests: the portable Triton kernels' test set-up (``platforms/triton/tests/
conftest.py``: without a GPU they run under ``TRITON_INTERPRET=1``, with its interpreter fix)
and this plugin's source folder on ``sys.path``."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_TRITON_CONFTEST = Path(__file__).resolve().parents[2] / "triton" / "tests" / "conftest.py"
_spec = importlib.util.spec_from_file_location("_vllm_core_triton_test_setup", _TRITON_CONFTEST)
_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_module)
_PLUGIN_ROOT = str(Path(__file__).resolve().parents[1])
if _PLUGIN_ROOT not in sys.path:
    sys.path.insert(0, _PLUGIN_ROOT)
