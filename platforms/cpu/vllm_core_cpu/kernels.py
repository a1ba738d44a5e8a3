"""Build (once, cached) and load the CPU plugin's C++ kernels.

The sources in ``csrc/`` are compiled on first use with torch's JIT extension builder into
``<cache root>/torch_extensions/cpu_kernels_torch<version>_<ISA key>_<sources key>``
(``kernel_build.build_dir``; ``-march=native`` code, so the folder is keyed by the CPU's
instruction-set flags: a cache shared between machines never loads code built for another
processor; and by a hash of the sources, so checkouts of different versions sharing a cache do
not rebuild over each other) and registered as
``torch.ops.vllm_core_cpu.*``. When no compiler is available the build fails,
``load_kernels`` returns False with the reason logged, and the backend falls back to its SDPA
path.

Concurrent builds (several engines starting at once) are serialised by the core's
``vllm_core/platforms/kernel_build.build_lock`` (an ``fcntl`` lock the kernel releases when its
holder dies; holding it, the plain lock file a killed torch build leaves behind is removed).
"""

from __future__ import annotations

import functools
import hashlib
import os

from vllm_core.logger import init_logger
from vllm_core.platforms import kernel_build
from vllm_core.platforms.kernel_build import build_lock

logger = init_logger(__name__)
_SOURCES = ("paged_attention.cpp", "wna16_gemm.cpp", "int8_gemm.cpp", "rms_norm.cpp",
            "activation.cpp", "decode_stack.cpp")
# included by the sources; part of the build-folder key
_HEADERS = ("wna16_avx2.h", "int8_amx.h", "int8_vnni.h", "cpu_vec.h", "kernels.h")


@functools.cache
def load_kernels() -> bool:
    import torch
    from torch.utils import cpp_extension

    here = os.path.join(os.path.dirname(__file__), "csrc")
    sources = [os.path.join(here, s) for s in _SOURCES]
    build_dir = kernel_build.build_dir(
        "cpu_kernels", isa_key(), sources + [os.path.join(here, h) for h in _HEADERS])
    try:
        with build_lock(build_dir):
            if not os.path.exists(os.path.join(build_dir, "vllm_core_cpu_kernels.so")):
                logger.info("building the CPU kernels for this CPU and torch (first start only; "
                            "a minute or two on a small machine), into %s", build_dir)
            cpp_extension.load(
                name="vllm_core_cpu_kernels", sources=sources,
                extra_cflags=["-O3", "-march=native", "-fopenmp"], extra_ldflags=["-fopenmp"],
                build_directory=build_dir, is_python_module=False, verbose=False)
    except Exception as e:  # noqa: BLE001 - any build failure means "use the fallback"
        logger.warning("CPU kernels unavailable (%s); using the torch fallbacks (SDPA attention, "
                       "reference quantized linears)", e)
        return False
    return hasattr(torch.ops.vllm_core_cpu, "paged_attention")


def isa_key() -> str:
    """A short hash of this CPU's model and instruction-set flags (``/proc/cpuinfo``)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            lines = [ln for ln in f if ln.startswith(("flags", "model name", "Features"))]
    except OSError:
        import platform

        lines = [platform.machine(), platform.processor()]
    return hashlib.sha256("".join(sorted(set(lines))).encode()).hexdigest()[:10]
