"""Host-side parts of the CUDA runner that need no device: the request table's bookkeeping
and the graph size lookup (runs everywhere, CI included)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vllm_core_cuda.graphs import DecodeGraphs
from vllm_core_cuda.model_runner import KVWasteStats, RequestTable


def test_request_table_add_extend_append_remove():
    t = RequestTable(capacity=2, max_model_len=64, max_blocks=4)
    a = t.add("a", [5, 6, 7], [3], num_computed=0)
    b = t.add("b", list(range(20)), [1, 2], num_computed=16)
    assert a != b and t.slot_of == {"a": a, "b": b}
    assert t.token_ids[b, :20].tolist() == list(range(20)) and t.num_blocks[b] == 2
    t.extend_blocks(a, [9])
    assert t.block_table[a, :2].tolist() == [3, 9] and t.num_blocks[a] == 2
    t.append_tokens(np.array([a, b]), np.array([11, 12]))
    assert t.num_tokens[[a, b]].tolist() == [4, 21]
    assert t.token_ids[a, 3] == 11 and t.token_ids[b, 20] == 12
    c = t.add("c", [1], [5], 0)                    # grows past the capacity of 2
    assert c not in (a, b) and t.token_ids.shape[0] >= 3
    t.remove("a")
    d = t.add("d", [2, 3], [6], 0)
    assert d == a                                  # the freed row is reused
    with pytest.raises(ValueError, match="max_model_len"):
        t.extend_blocks(d, [1, 2, 3, 4])


def test_request_table_append_at_limit_is_guarded():
    t = RequestTable(capacity=1, max_model_len=4, max_blocks=1)
    s = t.add("x", [1, 2, 3, 4, 5], [1], 0)        # max_model_len + 1 columns
    t.append_tokens(np.array([s]), np.array([9]))  # past the end: counted, not written
    assert t.num_tokens[s] == 6


def test_graph_padded_size():
    g = DecodeGraphs([8, 1, 2, 4, 16, 8], vocab_size=3, device=torch.device("cpu"))
    assert g.sizes == [1, 2, 4, 8, 16] and g.logits.shape == (16, 3)
    assert [g.padded_size(n) for n in (1, 3, 5, 8, 9, 16, 17)] == [1, 4, 8, 8, 16, 16, None]
    with pytest.raises(ValueError, match="graph batch sizes"):
        DecodeGraphs([], vocab_size=3, device=torch.device("cpu"))


def test_kv_waste_stats():
    w = KVWasteStats(steps=2, allocated_slots=200, used_slots=190)
    assert w.mean_fraction == pytest.approx(0.05)
    assert KVWasteStats().mean_fraction == 0.0
