"""What platform plugins share to JIT-build their C++ / CUDA kernels with torch's extension
builder into the cache directory: the build folder (``build_dir``: named by the torch version,
the plugin's machine key and a hash of the sources), and a lock that serialises concurrent
builds.

``build_lock(build_dir)`` holds an ``fcntl`` lock on ``build_dir/build.flock`` (the kernel
releases it when its holder dies, so a killed build never blocks the next one) and, once held,
removes the plain ``lock`` file torch's builder leaves behind when a build is killed (after
which every later build would wait for it forever): under our lock any such file is stale.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from collections.abc import Iterator

from vllm_core import envs
from vllm_core.logger import init_logger

logger = init_logger(__name__)


def sources_key(paths: list[str]) -> str:
    """A short hash of the kernel sources: checkouts with different sources sharing one cache
    root build into different folders instead of rebuilding over each other."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            digest.update(f.read())
    return digest.hexdigest()[:10]


def build_dir(name: str, machine_key: str, sources: list[str]) -> str:
    """``<cache root>/torch_extensions/<name>_torch<version>_<machine_key>_<sources key>``: a
    build never loads code made for another torch, machine (``machine_key``: the CPU's ISA,
    the GPU's architecture) or version of the sources (every file that goes into it)."""
    import torch

    return os.path.join(envs.cache_root(), "torch_extensions",
                        f"{name}_torch{torch.__version__.replace('+', '_')}_{machine_key}"
                        f"_{sources_key(sources)}")


@contextlib.contextmanager
def build_lock(build_dir: str) -> Iterator[None]:
    """Hold the build folder's lock (creating the folder); see the module docstring."""
    os.makedirs(build_dir, exist_ok=True)
    with open(os.path.join(build_dir, "build.flock"), "w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        stale = os.path.join(build_dir, "lock")
        if os.path.exists(stale):
            logger.warning("removing a stale kernel build lock left by a killed build: %s",
                           stale)
            os.remove(stale)
        yield
