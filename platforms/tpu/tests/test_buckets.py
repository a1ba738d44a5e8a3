"""Bucket arithmetic: the bounded set of padded shapes (one XLA graph each)."""

from __future__ import annotations

import pytest

from vllm_core_tpu.buckets import Buckets, pick_bucket, power_of_two_buckets


def test_power_of_two_buckets_end_at_the_limit():
    assert power_of_two_buckets(16, 512) == [16, 32, 64, 128, 256, 512]
    assert power_of_two_buckets(16, 100) == [16, 32, 64, 100]
    assert power_of_two_buckets(1, 1) == [1]
    with pytest.raises(ValueError, match="bucket bounds"):
        power_of_two_buckets(0, 8)


def test_pick_bucket():
    buckets = [16, 32, 64]
    assert [pick_bucket(n, buckets) for n in (1, 16, 17, 64)] == [16, 16, 32, 64]
    with pytest.raises(ValueError, match="exceeds the largest bucket 64"):
        pick_bucket(65, buckets)


def test_graph_set_and_bound():
    b = Buckets.for_limits(max_num_batched_tokens=64, max_num_seqs=6)
    assert b.tokens == (16, 32, 64) and b.requests == (1, 2, 4, 6)
    assert b.graphs()[0] == (16, 1) and b.graphs()[-1] == (64, 6)
    assert b.max_graphs == 12
    assert b.token_bucket(33) == 64 and b.request_bucket(5) == 6 and b.request_bucket(0) == 1
    assert "12 graphs at most" in b.describe()


def test_small_budgets():
    b = Buckets.for_limits(max_num_batched_tokens=8, max_num_seqs=256)
    assert b.tokens == (8,) and b.requests == (1, 2, 4, 8)      # never more rows than tokens
    assert all(r <= t for t, r in b.graphs())
    with pytest.raises(ValueError, match="max_num_seqs"):
        Buckets.for_limits(16, 0)
