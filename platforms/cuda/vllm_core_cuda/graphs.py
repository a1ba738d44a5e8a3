"""CUDA graphs of a step (model forward + logits) at padded batch sizes.

Decode graphs (``query_len`` 1): a decode-only step of ``n`` requests replays the graph of the
smallest captured size ``G >= n``; rows ``n..G-1`` are padding (token 0 at position 0, KV slot
-1 so nothing is written, one-token context read from the null block 0) and their logits are
ignored. Verification graphs (``query_len`` q = k + 1, speculative decoding): a step whose
every token is a logits row and whose requests have at most ``q`` tokens each replays the graph
of ``G >= n`` requests and ``G * q`` tokens (the padding layout is
``StepBuffers.pad_token_batch``). Every graph reads its inputs from the runner's persistent
device buffers (fixed addresses) and writes its logits into one static buffer
``logits[:G * query_len]`` of its set. A pipeline stage other than the last has no logits
(``vocab_size`` None): its ``forward`` writes the stage's outputs into static buffers itself
(``stage_buffers.StageGraphBuffers``) and returns None, and ``replay`` returns None.

All graphs are captured into one memory pool (``torch.cuda.graph_pool_handle``, shared by the
decode and verification sets), largest first, so the intermediate activations of every size
reuse the same memory. Replays are sequential and each step consumes ``logits`` before the next
replay, so sharing the pool and the output buffer is safe.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable

import torch

from vllm_core.logger import init_logger

logger = init_logger(__name__)


class DecodeGraphs:
    """Captured graphs keyed by batch size (requests), ``query_len`` tokens per request.

    ``sizes``: the batch sizes to capture (sorted, unique, >= 1). ``logits``: float32
    ``[max(sizes) * query_len, vocab_size]``, the static output every graph writes its first
    ``G * query_len`` rows of; None when ``vocab_size`` is None (a pipeline stage other than
    the last, whose graphs write their own static outputs). ``capture_seconds``: wall time of
    the last ``capture`` (warm-up runs included).
    """

    def __init__(self, sizes: list[int], vocab_size: int | None, device: torch.device,
                 query_len: int = 1) -> None:
        if not sizes or min(sizes) < 1:
            raise ValueError(f"graph batch sizes must be a non-empty list of ints >= 1, "
                             f"got {sizes!r}")
        if query_len < 1:
            raise ValueError(f"query_len must be >= 1, got {query_len}")
        self.sizes = sorted(set(sizes))
        self.device = device
        self.query_len = query_len
        self.logits = (None if vocab_size is None else
                       torch.empty(self.sizes[-1] * query_len, vocab_size, dtype=torch.float32,
                                   device=device))
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.pool = None
        self.capture_seconds = 0.0

    @property
    def max_size(self) -> int:
        return self.sizes[-1]

    def padded_size(self, num_reqs: int) -> int | None:
        """The smallest captured size >= ``num_reqs``; None when the batch is too large."""
        i = bisect.bisect_left(self.sizes, num_reqs)
        return self.sizes[i] if i < len(self.sizes) else None

    @torch.inference_mode()
    def capture(self, prepare: Callable[[int], None],
                forward: Callable[[int], torch.Tensor | None],
                warmup_runs: int = 2, capture_error_mode: str = "global",
                pool: object | None = None) -> float:
        """Capture one graph per size, largest first, into ``pool`` (a new pool when None;
        pass another set's ``pool`` to share its memory).

        ``prepare(G)`` fills the persistent input buffers for a dummy decode batch of ``G``
        requests; it runs outside the capture, so no host->device copy becomes part of a graph
        (a replay must read exactly what the runner put in the buffers for that step, including
        tokens it wrote there on the device). ``forward(G)`` returns the logits ``[G, vocab]``
        from those buffers (None when the set has no ``logits``: it wrote its static
        outputs); it is run ``warmup_runs`` times eagerly first (Triton JIT, cuBLAS handles),
        then once under capture. ``capture_error_mode`` is
        ``torch.cuda.graph``'s: with several ranks the runner passes ``"thread_local"``, so the
        CUDA calls of NCCL's watchdog thread cannot invalidate the capture. Returns seconds.
        """
        start = time.perf_counter()
        self.pool = pool if pool is not None else torch.cuda.graph_pool_handle()
        for size in reversed(self.sizes):
            prepare(size)
            for _ in range(warmup_runs):
                forward(size)
            torch.cuda.synchronize(self.device)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool,
                                  capture_error_mode=capture_error_mode):
                out = forward(size)
                if self.logits is not None:
                    self.logits[:size * self.query_len].copy_(out)
            del out
            self.graphs[size] = graph
        torch.cuda.synchronize(self.device)
        self.capture_seconds = time.perf_counter() - start
        kind = ("decode" if self.query_len == 1
                else f"verification, {self.query_len} tokens per request,")
        logger.info("captured %d CUDA graphs (%s batch sizes %d..%d) in %.2f s",
                    len(self.graphs), kind, self.sizes[0], self.sizes[-1], self.capture_seconds)
        return self.capture_seconds

    def replay(self, size: int) -> torch.Tensor | None:
        """Replay the graph of ``size`` (inputs already in the buffers); returns
        ``logits[:size * query_len]`` (None without ``logits``)."""
        self.graphs[size].replay()
        return None if self.logits is None else self.logits[:size * self.query_len]

    def clear(self) -> None:
        self.graphs.clear()
        self.pool = None
