"""Every call into torch_xla's runtime, as tiny functions (tests fake them at this boundary).

Importing this module does not import torch_xla; each function imports it when called, which
starts the PJRT runtime on first use (``PJRT_DEVICE`` chooses TPU or CPU).
"""

from __future__ import annotations

import importlib.util
from typing import Any


def xla_device() -> Any:
    """The XLA device of this process (``xla:0``)."""
    import torch_xla

    return torch_xla.device()


def pjrt_device_type() -> str:
    """The PJRT device type the runtime uses: "TPU", "CPU", "CUDA" ... ("" when unknown)."""
    import torch_xla.runtime as xr

    return str(xr.device_type() or "")


def on_real_tpu() -> bool:
    return pjrt_device_type() == "TPU"


def pallas_available() -> bool:
    """The Pallas kernels need JAX next to torch_xla (``pip install 'torch_xla[pallas]'``)."""
    return importlib.util.find_spec("jax") is not None


def sync() -> None:
    """Cut the lazy trace here: compile (or fetch from the cache) and run the pending graph."""
    import torch_xla

    torch_xla.sync()


def wait_device_ops() -> None:
    import torch_xla.core.xla_model as xm

    xm.wait_device_ops()


def compile_count() -> int:
    """Graphs XLA compiled in this process so far (samples of the ``CompileTime`` metric)."""
    import torch_xla.debug.metrics as met

    data = met.metric_data("CompileTime")
    return int(data[0]) if data else 0


def memory_info() -> tuple[int, int]:
    """(free, total) bytes of the device, across torch_xla's two report formats.

    Raises ``RuntimeError`` where the runtime has no allocator statistics (the CPU device).
    """
    import torch_xla.core.xla_model as xm

    info = xm.get_memory_info(xla_device())
    if "bytes_limit" in info:
        total = int(info["bytes_limit"])
        return total - int(info.get("bytes_used", 0)), total
    return int(info["kb_free"]) * 1024, int(info["kb_total"]) * 1024


def set_rng_state(seed: int) -> None:
    import torch_xla.core.xla_model as xm

    xm.set_rng_state(seed)


def runtime_version() -> str:
    import torch_xla

    return str(getattr(torch_xla, "__version__", ""))
