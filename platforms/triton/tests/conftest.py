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


_FP8_MAX = {"fp8e4nv": 448.0, "fp8e5": 57344.0}


def _fix_interpreter_fp8_rounding() -> None:
    """Triton's interpreter narrows float32/16 to float8 by truncating the mantissa and adding
    the first dropped bit without carrying it into the exponent (``_convert_float``), so
    -1.96 becomes -1.0 instead of -2.0 (about 2% of random values, 40% more error than
    round-to-nearest). The GPU converts with ``cvt.rn.satfinite`` (round to nearest even,
    saturate to the largest finite value). Make the interpreter do what the GPU does for the
    two float8 formats our kernels write (``float8_e4m3fn`` and ``float8_e5m2`` KV caches and
    activations), through torch's correctly rounded cast after clamping; other conversions
    keep the interpreter's own path."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        return
    import numpy as np
    import triton.runtime.interpreter as interp

    builder = interp.InterpreterBuilder
    original = builder.create_fp_to_fp
    if getattr(original, "_vllm_core_fixed", False):
        return
    torch_dtypes = {"fp8e4nv": torch.float8_e4m3fn, "fp8e5": torch.float8_e5m2}

    def create_fp_to_fp(self, src, dst_type, rounding_mode):  # noqa: ANN001 - interpreter API
        name = dst_type.scalar.name
        if name not in torch_dtypes or src.dtype.scalar.primitive_bitwidth <= 8:
            return original(self, src, dst_type, rounding_mode)
        data = np.ascontiguousarray(src.data)
        if src.dtype.scalar.name == "bf16":        # held as its raw 16 bits
            data = (data.astype(np.uint32) << 16).view(np.float32)
        wide = torch.from_numpy(data.astype(np.float32))
        limit = _FP8_MAX[name]
        narrow = wide.clamp(-limit, limit).to(torch_dtypes[name])
        data = narrow.view(torch.uint8).numpy().reshape(src.data.shape)
        return interp.TensorHandle(data, dst_type.scalar)

    create_fp_to_fp._vllm_core_fixed = True
    builder.create_fp_to_fp = create_fp_to_fp


_fix_interpreter_fp8_rounding()
