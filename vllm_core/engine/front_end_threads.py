"""The front end's torch threads while the engine core runs in another process.

With the core in its own process (``engine_core_process``), the front end (HTTP, tokenization,
detokenization, output processing) does no tensor math, but torch's intra-op pool would still
be sized for every core of the host. On a small CPU host the core's workers already use those
cores for the model: an OpenMP region opened in the front end then competes with them, and
each preempted OpenMP thread stalls the whole parallel region it belongs to. So the front end
keeps one intra-op thread while it talks to a core elsewhere, and gives back the previous
count when its engine shuts down (an ``LLM`` may live in a user's process that does its own
math afterwards).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

FRONT_END_THREADS = 1


@dataclass(slots=True)
class FrontEndThreads:
    """The torch intra-op thread count the front end had before ``limit``; ``restore`` puts
    it back (idempotent)."""

    previous: int
    restored: bool = False

    @classmethod
    def limit(cls, threads: int = FRONT_END_THREADS) -> FrontEndThreads:
        """Set this process's torch intra-op threads to ``threads``; the handle restores."""
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        return cls(previous)

    def restore(self) -> None:
        if not self.restored:
            self.restored = True
            torch.set_num_threads(self.previous)
