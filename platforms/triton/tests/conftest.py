"""Test set-up for the portable Triton kernels (shared by the CUDA, ROCm and XPU plugins' tests):
run them under the interpreter when no GPU.

``TRITON_INTERPRET`` must be set before Triton is first imported, so it is set here, at
collection time, when ``torch.cuda.is_available()`` is false. The plugin's source folder is put
on ``sys.path`` so the tests run from a checkout without installing the plugin.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

_PLUGIN_ROOT = Path(__file__).resolve().parents[1]
_REPO_ROOT = _PLUGIN_ROOT.parents[1]
for _p in (str(_PLUGIN_ROOT), str(_REPO_ROOT)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _fix_interpreter_index_for_numpy_2_4() -> None:
    """Triton <= 3.6's interpreter turns a scalar tensor into an int with ``int(ndarray)``,
    which NumPy >= 2.4 refuses for 1-element arrays, so ``range(tensor_a, tensor_b)`` in a
    kernel fails under the interpreter (triton-lang/triton#9171, fixed upstream by #9172).
    Re-register ``__index__`` the way the upstream fix does; a no-op on fixed versions."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        return
    import triton.runtime.interpreter as interp

    original = getattr(interp, "_patch_lang_tensor", None)
    if original is None or getattr(original, "_vllm_core_fixed", False):
        return

    def patched(tensor, scope):  # noqa: ANN001 - mirrors the interpreter's private helper
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    patched._vllm_core_fixed = True
    interp._patch_lang_tensor = patched


_fix_interpreter_index_for_numpy_2_4()
