"""Host-side parts of the core model runner: the request table's bookkeeping, the step plan's
layout and the KV-waste counter (no model, no device)."""

from __future__ import annotations

import numpy as np
import pytest

from vllm_core.messages import SchedulerOutput
from vllm_core.worker.request_table import RequestTable
from vllm_core.worker.runner_stats import KVWasteStats
from vllm_core.worker.step_plan import plan_step


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


def test_kv_waste_stats():
    w = KVWasteStats(steps=2, allocated_slots=200, used_slots=190)
    assert w.mean_fraction == pytest.approx(0.05)
    assert KVWasteStats().mean_fraction == 0.0


def _table_with(requests: dict[str, tuple[int, int, list[int]]]) -> RequestTable:
    """``requests[id] = (num_tokens, num_computed, blocks)``; token ids are 100 * slot + i."""
    t = RequestTable(capacity=4, max_model_len=64, max_blocks=8)
    for req_id, (n, computed, blocks) in requests.items():
        t.add(req_id, [1000 + i for i in range(n)], blocks, computed)
    return t


def test_step_plan_orders_decodes_first_and_takes_logits_rows_from_sampling_ids():
    t = _table_with({"p": (10, 0, [1]), "d1": (21, 20, [2, 3]), "c": (40, 16, [4, 5, 6]),
                     "d2": (5, 4, [7])})
    so = SchedulerOutput([], [], {"p": 10, "d1": 1, "c": 8, "d2": 1}, 20,
                         sampling_req_ids=frozenset({"p", "d1", "d2"}))   # c: a middle chunk
    plan = plan_step(so, t, block_size=16)
    assert plan.order == ["d1", "d2", "p", "c"] and plan.num_decodes == 2
    assert plan.query_start_loc.tolist() == [0, 1, 2, 12, 20]
    assert plan.positions.tolist() == [20, 4, *range(10), *range(16, 24)]
    assert plan.seq_lens.tolist() == [21, 5, 10, 24]
    # slot = block * 16 + offset: d1's position 20 is in its second block (3)
    assert plan.slot_mapping[:2].tolist() == [3 * 16 + 4, 7 * 16 + 4]
    assert plan.slot_mapping[12:].tolist() == [5 * 16 + i for i in range(8)]
    assert plan.sampling_ids() == ["d1", "d2", "p"]
    assert plan.logits_indices.tolist() == [0, 1, 11]
    assert plan.token_lora_ids(t).tolist() == [0] * 20


def test_step_plan_several_logits_rows_per_request():
    """Speculative verification: a request scoring k + 1 tokens gets its last k + 1 rows."""
    t = _table_with({"a": (30, 25, [1, 2]), "b": (9, 8, [3])})
    so = SchedulerOutput([], [], {"a": 4, "b": 1}, 5, sampling_req_ids=frozenset({"a", "b"}))
    plan = plan_step(so, t, block_size=16, logits_per_request={"a": 4})
    assert plan.order == ["b", "a"]
    assert plan.logits_request.tolist() == [0, 1, 1, 1, 1]
    assert plan.logits_indices.tolist() == [0, 1, 2, 3, 4]
    assert plan.sampling_ids() == ["b", "a", "a", "a", "a"]


def test_plan_for_lengths_matches_the_scheduled_layout():
    """Hand-described batches (profiling, warm-up, tests) use the runner's own arithmetic: the
    same positions and slots as ``plan_step`` for the same requests."""
    from vllm_core.worker.step_plan import plan_for_lengths

    t = _table_with({"d": (21, 20, [2, 3]), "c": (40, 16, [4, 5, 6])})
    so = SchedulerOutput([], [], {"d": 1, "c": 8}, 9, sampling_req_ids=frozenset({"d"}))
    ref = plan_step(so, t, block_size=16)
    table = np.array([[2, 3, 0], [4, 5, 6]])
    plan = plan_for_lengths([20, 16], [1, 8], table, block_size=16)
    assert plan.num_decodes == 1 and plan.num_tokens == 9
    for field in ("query_start_loc", "positions", "slot_mapping", "seq_lens"):
        assert getattr(plan, field).tolist() == getattr(ref, field).tolist()
    md = plan.host_metadata(table, 16)
    assert md.max_query_len == 8 and md.max_seq_len == 24 and md.num_decodes == 1
    # a prompt longer than one block with no context: a prefill spanning several blocks
    long = plan_for_lengths([0], [40], np.array([[7, 8, 9]]), block_size=16)
    assert long.num_decodes == 0 and long.slot_mapping[[0, 16, 39]].tolist() == [112, 128, 151]
