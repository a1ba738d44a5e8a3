"""Start-up phases: each that takes over a second says so in one log line, and the tokenizer
loads on a background thread while the weights load (both are seconds on a small CPU; the
tokenizer's cost is mostly importing transformers, which overlaps the numpy/torch work).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from vllm_core.logger import init_logger

logger = init_logger(__name__)
T = TypeVar("T")

REPORT_AFTER_S = 1.0


@contextlib.contextmanager
def phase(name: str, threshold: float = REPORT_AFTER_S) -> Iterator[None]:
    """Log ``start-up: <name> took X s`` when the block takes longer than ``threshold``."""
    t0 = time.perf_counter()
    yield
    elapsed = time.perf_counter() - t0
    if elapsed > threshold:
        logger.info("start-up: %s took %.1f s", name, elapsed)


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
