"""Static-shape buckets: XLA compiles one graph per distinct input shape, so every step is
padded up to a bucket and the number of graphs stays bounded.

A step with ``T`` scheduled tokens and ``R`` requests that sample runs the graph of
``(token_bucket(T), request_bucket(R))``. Token buckets are the powers of two from
``MIN_TOKEN_BUCKET`` up to ``max_num_batched_tokens`` (which is always the last bucket, even
when it is not a power of two); request buckets are the powers of two up to ``max_num_seqs``
(again always included). A request bucket larger than the token bucket can never occur (a
step cannot sample more rows than it has tokens), so the graph set is

    {(t, r) : t in token_buckets, r in request_buckets, r <= t}

and its size is the bound on XLA compilations of a run (``max_graphs``).
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass

MIN_TOKEN_BUCKET = 16


def power_of_two_buckets(start: int, limit: int) -> list[int]:
    """``start, 2*start, 4*start, ...`` below ``limit``, then ``limit`` itself."""
    if start < 1 or limit < 1:
        raise ValueError(f"bucket bounds must be >= 1, got start={start}, limit={limit}")
    buckets = []
    size = start
    while size < limit:
        buckets.append(size)
        size *= 2
    buckets.append(limit)
    return buckets


def pick_bucket(n: int, buckets: list[int]) -> int:
    """The smallest bucket >= ``n``; ``ValueError`` when ``n`` exceeds the largest."""
    i = bisect_left(buckets, n)
    if i == len(buckets):
        raise ValueError(f"{n} exceeds the largest bucket {buckets[-1]}")
    return buckets[i]


@dataclass(frozen=True, slots=True)
class Buckets:
    """The padded shapes of one engine: ``tokens`` and ``requests`` are sorted ascending."""

    tokens: tuple[int, ...]
    requests: tuple[int, ...]

    @classmethod
    def for_limits(cls, max_num_batched_tokens: int, max_num_seqs: int,
                   min_tokens: int = MIN_TOKEN_BUCKET) -> Buckets:
        if max_num_batched_tokens < 1:
            raise ValueError(f"max_num_batched_tokens must be >= 1, got {max_num_batched_tokens}")
        if max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be >= 1, got {max_num_seqs}")
        tokens = power_of_two_buckets(min(min_tokens, max_num_batched_tokens),
                                      max_num_batched_tokens)
        requests = power_of_two_buckets(1, min(max_num_seqs, max_num_batched_tokens))
        return cls(tuple(tokens), tuple(requests))

    def token_bucket(self, num_tokens: int) -> int:
        return pick_bucket(num_tokens, list(self.tokens))

    def request_bucket(self, num_reqs: int) -> int:
        return pick_bucket(max(num_reqs, 1), list(self.requests))

    def graphs(self) -> list[tuple[int, int]]:
        """Every (token bucket, request bucket) a step can use, smallest first."""
        return [(t, r) for t in self.tokens for r in self.requests if r <= t]

    @property
    def max_graphs(self) -> int:
        return len(self.graphs())

    def describe(self) -> str:
        return (f"token buckets {list(self.tokens)}, request buckets {list(self.requests)} "
                f"({self.max_graphs} graphs at most)")
