"""Build (once, cached) and load the CPU plugin's C++ kernels.

The sources in ``csrc/`` are compiled on first use with torch's JIT extension builder into
``envs.cache_root()/torch_extensions`` and registered as ``torch.ops.vllm_core_cpu.*``. When no
compiler is available the build fails, ``load_kernels`` returns False with the reason logged, and
the backend falls back to its SDPA path.
"""

from __future__ import annotations

import functools
import os

from vllm_core import envs
from vllm_core.logger import init_logger

logger = init_logger(__name__)
_SOURCES = ("paged_attention.cpp",)


@functools.cache
def load_kernels() -> bool:
    import torch
    from torch.utils import cpp_extension

    here = os.path.join(os.path.dirname(__file__), "csrc")
    build_dir = os.path.join(envs.cache_root(), "torch_extensions",
                             f"cpu_kernels_torch{torch.__version__.replace('+', '_')}")
    os.makedirs(build_dir, exist_ok=True)
    try:
        cpp_extension.load(
            name="vllm_core_cpu_kernels", sources=[os.path.join(here, s) for s in _SOURCES],
            extra_cflags=["-O3", "-march=native", "-fopenmp"], extra_ldflags=["-fopenmp"],
            build_directory=build_dir, is_python_module=False, verbose=False)
    except Exception as e:  # noqa: BLE001 - any build failure means "use the fallback"
        logger.warning("CPU paged-attention kernel unavailable (%s); using the SDPA path", e)
        return False
    return hasattr(torch.ops.vllm_core_cpu, "paged_attention")
