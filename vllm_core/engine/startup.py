"""Start-up phases: each that takes over a second says so in one log line (and is recorded
in a ``record`` dict when given: the engine reports every phase when it is ready), and the
tokenizer loads on a background thread while the weights load (``in_background``; converting a
GGUF vocabulary takes seconds). Modules a background task needs are imported by its caller
before the thread starts: two threads importing one namespace package at once can fail.

Compiled kernels persist across starts: ``persist_compile_caches`` points Triton's and
inductor's caches into the vllm-core cache root (``VLLM_CACHE_ROOT``), once, before the workers
start, unless the user set them. A second start with the same cache root then loads its
kernels instead of compiling them again.

When start-up is over, ``freeze_heap`` moves every object then alive out of the garbage
collector's reach (``gc.freeze``): a full collection while serving then walks only what was
made since, not the modules, the model and the compiled kernels' launchers. ``thaw_heap``
undoes it when the engine shuts down or another one starts.
"""

from __future__ import annotations

import contextlib
import gc
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from vllm_core.logger import init_logger

logger = init_logger(__name__)
T = TypeVar("T")

REPORT_AFTER_S = 1.0


# Compile caches moved under the cache root: environment variable -> sub-folder.
COMPILE_CACHE_DIRS = {"TRITON_CACHE_DIR": "triton", "TORCHINDUCTOR_CACHE_DIR": "inductor"}


@contextlib.contextmanager
def phase(name: str, threshold: float = REPORT_AFTER_S,
          record: dict[str, float] | None = None) -> Iterator[None]:
    """Log ``start-up: <name> took X s`` when the block takes longer than ``threshold``;
    ``record[name]`` gets the seconds either way."""
    t0 = time.perf_counter()
    yield
    elapsed = time.perf_counter() - t0
    if record is not None:
        record[name] = elapsed
    if elapsed > threshold:
        logger.info("start-up: %s took %.1f s", name, elapsed)


def persist_compile_caches(cache_root: str) -> dict[str, str]:
    """Set each of ``COMPILE_CACHE_DIRS`` the environment does not set to a folder under
    ``cache_root`` (created); worker processes started later inherit them. Returns the
    folders in use, by variable."""
    used = {}
    for var, sub in COMPILE_CACHE_DIRS.items():
        if not os.environ.get(var):
            path = os.path.join(cache_root, sub)
            os.makedirs(path, exist_ok=True)
            os.environ[var] = path
        used[var] = os.environ[var]
    return used


def describe_phases(phases: dict[str, float]) -> str:
    """``"model load 3.1 s, warm-up 0.4 s"`` in the order they ran."""
    return ", ".join(f"{name} {seconds:.1f} s" for name, seconds in phases.items())


def in_background(name: str, fn: Callable[..., T], *args: Any) -> Future[T]:
    """Run ``fn(*args)`` on a one-shot thread (timed as phase ``name``); ``.result()`` joins it
    and re-raises its exception."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vllm-core-startup")

    def timed() -> T:
        with phase(name):
            return fn(*args)

    future = pool.submit(timed)
    pool.shutdown(wait=False)
    return future


def freeze_heap() -> float:
    """Collect, then move every object alive now to the permanent generation (``gc.freeze``);
    returns the seconds it took. Call it when a process's start-up is over.

    Why: a busy engine makes objects fast enough to trigger Python's oldest-generation
    collection every few seconds, and each walked the whole start-up heap: on the 8B shape on
    an H200 host two of them left the GPU idle 0.3 s each in a 7 s ``gpu-8b`` run.

    Invariants: frozen objects are never collected (reference counting still frees them), so
    an engine dropped without ``shutdown`` keeps its reference cycles until the next
    ``freeze_heap`` or ``thaw_heap``; each of those first unfreezes everything, so at most one
    start-up heap is frozen at a time and explicit ``gc.collect()`` after ``thaw_heap`` frees
    all garbage again."""
    t0 = time.perf_counter()
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    return time.perf_counter() - t0


def thaw_heap() -> None:
    """Undo ``freeze_heap`` (an engine shuts down, or a new one starts in this process), and
    collect what that made garbage when anything was frozen."""
    if gc.get_freeze_count():
        gc.unfreeze()
        gc.collect()
