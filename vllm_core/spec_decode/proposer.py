"""Proposers: where draft tokens come from. Torch-free (they run in the engine process).

A ``Proposer`` sees one request's known tokens (prompt + output) and returns up to ``k`` draft
tokens to verify next step. ``NgramProposer`` is prompt lookup: the longest suffix n-gram
(``prompt_lookup_max`` down to ``prompt_lookup_min`` tokens) that occurred earlier in the
sequence proposes the tokens that followed its latest earlier occurrence. Vectorised with
numpy: one comparison over a sliding-window view per n, no Python loop over tokens.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from vllm_core.spec_decode.config import MODEL_METHODS, SpeculativeConfig


class Proposer(ABC):
    """Drafts for one request. Contract: the result holds at most ``max_tokens`` ids of the
    target's vocabulary (an empty array means "no proposal"), depends only on ``token_ids`` (so a request's drafts, and hence
    its seeded samples, are reproducible), and the call never mutates ``token_ids``.
    ``needs_token_ids`` False: the proposer ignores them (the drafter then passes an empty
    array instead of converting each request's tokens every step)."""

    needs_token_ids: bool = True

    @abstractmethod
    def propose(self, token_ids: np.ndarray, max_tokens: int) -> np.ndarray: ...


class NgramProposer(Proposer):
    def __init__(self, min_n: int, max_n: int) -> None:
        if not 1 <= min_n <= max_n:
            raise ValueError(f"need 1 <= prompt_lookup_min ({min_n}) <= prompt_lookup_max "
                             f"({max_n})")
        self.min_n = min_n
        self.max_n = max_n

    def propose(self, token_ids: np.ndarray, max_tokens: int) -> np.ndarray:
        """The tokens after the latest earlier occurrence of the longest matching suffix."""
        length = len(token_ids)
        empty = token_ids[:0]
        if max_tokens <= 0:
            return empty
        for n in range(min(self.max_n, length - 1), self.min_n - 1, -1):
            # windows start at 0 .. length - n - 1: each is followed by at least one token,
            # and the suffix itself (start length - n) is excluded
            windows = sliding_window_view(token_ids[:length - 1], n)
            hits = np.flatnonzero((windows == token_ids[length - n:]).all(axis=1))
            if hits.size:
                start = int(hits[-1]) + n
                return token_ids[start:start + max_tokens]
        return empty


class WorkerDraftSlots(Proposer):
    """The engine's side of a proposer that runs in the worker (a draft model, an EAGLE
    head): it reserves ``max_tokens`` draft positions (placeholder ids -1) so that the
    scheduler budgets and allocates them; the worker's proposer writes the real drafts in
    before the verification forward (``spec_decode/worker_proposer.py``)."""

    needs_token_ids = False

    def propose(self, token_ids: np.ndarray, max_tokens: int) -> np.ndarray:
        return np.full(max(max_tokens, 0), -1, dtype=np.int64)


def make_proposer(config: SpeculativeConfig) -> Proposer:
    """The proposer ``config.method`` names (the config has validated it)."""
    if config.method == "ngram":
        return NgramProposer(config.prompt_lookup_min, config.prompt_lookup_max)
    if config.method in MODEL_METHODS:
        return WorkerDraftSlots()
    raise ValueError(f"no proposer for speculative method {config.method!r}")
