"""Build (once, cached) and load the CUDA plugin's own CUDA C++ kernels (``csrc/``).

The sources are compiled on first use with torch's JIT extension builder (nvcc) for the
current GPU's architecture only (``sm_<major><minor>``; these kernels need 8.0 or newer) into
``<cache root>/torch_extensions/cuda_kernels_torch<version>_sm<cc>_<sources key>``
(``kernel_build.build_dir``) and registered as ``torch.ops.vllm_core_cuda.*``. The folder is keyed by torch's version, the
architecture and a hash of the sources, so checkouts or GPUs sharing a cache never load each
other's builds. Concurrent builds (several engines or ranks starting at once) are serialised
by the core's ``kernel_build.build_lock``, as the CPU plugin's (``vllm_core_cpu/kernels.py``).

``build_error()`` builds and loads once per process and returns None, or why the kernels are
not available (no CUDA device, an older GPU, no nvcc, a compile error): callers fall back.
"""

from __future__ import annotations

import functools
import os

from vllm_core.logger import init_logger
from vllm_core.platforms import kernel_build
from vllm_core.platforms.kernel_build import build_lock

logger = init_logger(__name__)
_SOURCES = ("wna16_mma.cu",)
MIN_CAPABILITY = (8, 0)     # mma.sync m16n8k16 with bf16 operands


@functools.cache
def build_error() -> str | None:
    """None once the kernels are loaded (built first if this cache has no build for this torch,
    GPU architecture and source), else the reason they are not (logged once, as a warning)."""
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device"
    major, minor = torch.cuda.get_device_capability()
    if (major, minor) < MIN_CAPABILITY:
        return f"compute capability {major}.{minor} < 8.0 (no bf16 mma.sync)"
    from torch.utils import cpp_extension

    here = os.path.join(os.path.dirname(__file__), "csrc")
    sources = [os.path.join(here, s) for s in _SOURCES]
    arch = f"{major}{minor}"
    build_dir = kernel_build.build_dir("cuda_kernels", f"sm{arch}", sources)
    try:
        with build_lock(build_dir):
            if not os.path.exists(os.path.join(build_dir, "vllm_core_cuda_kernels.so")):
                logger.info("building the CUDA plugin's kernels for sm_%s (first start only, "
                            "about a minute), into %s", arch, build_dir)
            # an explicit -gencode: torch then adds no architecture flags of its own
            cpp_extension.load(
                name="vllm_core_cuda_kernels", sources=sources, extra_cflags=["-O3"],
                extra_cuda_cflags=["-O3", f"-gencode=arch=compute_{arch},code=sm_{arch}"],
                build_directory=build_dir, is_python_module=False, verbose=False)
    except Exception as e:  # noqa: BLE001 - any build failure means "use the fallback"
        reason = f"CUDA kernels could not be built or loaded ({type(e).__name__}: {e})"
        logger.warning("%s; using the Triton kernels", reason)
        return reason
    if not hasattr(torch.ops.vllm_core_cuda, "wna16_mma_gemv"):
        return "CUDA kernels loaded without wna16_mma_gemv"
    return None
