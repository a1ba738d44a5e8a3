"""The CUDA-trace gap analysis of ``gpu_timeline.py`` on hand-made traces (no GPU needed)."""

import pytest
from gpu_timeline import analyse, device_intervals, top_kernels


def _trace(*events):
    return {"traceEvents": [
        {"ph": "X", "cat": cat, "ts": ts, "dur": dur, "name": name}
        for cat, ts, dur, name in events] + [
        {"ph": "X", "cat": "cpu_op", "ts": 0, "dur": 10**6, "name": "aten::mm"}]}


def test_overlaps_merge_and_gaps_fall_in_their_length_buckets():
    # times in microseconds: [0,100] and [50,120] overlap; gaps of 5 us, 500 us and 2 ms
    tr = _trace(("kernel", 0, 100, "a"), ("kernel", 50, 70, "b"), ("gpu_memcpy", 125, 75, "c"),
                ("kernel", 700, 300, "d"), ("gpu_memset", 3000, 1000, "e"))
    iv = device_intervals(tr)
    assert [n for *_, n in iv] == ["a", "b", "c", "d", "e"]     # the cpu op is not device time
    res = analyse(iv)
    assert res["timeline_span_s"] == pytest.approx(4000e-6)
    assert res["timeline_busy_s"] == pytest.approx((120 + 75 + 300 + 1000) * 1e-6)
    assert res["timeline_busy_frac"] == pytest.approx(1495 / 4000, abs=1e-4)
    gaps = res["timeline_gap_s"]
    assert gaps["<10us"] == {"count": 1, "s": pytest.approx(5e-6)}
    assert gaps["10-100us"]["count"] == 0
    assert gaps["0.1-1ms"] == {"count": 1, "s": pytest.approx(500e-6)}
    assert gaps[">1ms"] == {"count": 1, "s": pytest.approx(2000e-6)}
    longest = res["_longest_gaps"][0]
    assert longest[0] == pytest.approx(2000e-6) and longest[2:] == ("d", "e")
    # tenths of a 4 ms span: the first 0.4 ms holds a, b, c (195 us busy), e is 3-4 ms
    tenths = res["timeline_busy_by_tenth"]
    assert tenths[0] == pytest.approx(195 / 400, abs=1e-3)
    assert tenths[7:] == [0.5, pytest.approx(1.0), pytest.approx(1.0)] and tenths[5] == 0.0
    assert sum(t * 400e-6 for t in tenths) == pytest.approx(res["timeline_busy_s"], abs=1e-6)


def test_empty_trace():
    assert analyse(device_intervals({"traceEvents": []})) == {"timeline_busy_s": 0.0}


def test_top_kernels_rank_names_by_device_time():
    iv = [(0.0, 1.0, "a"), (1.0, 1.5, "b"), (2.0, 2.75, "b"), (3.0, 3.1, "c")]
    assert top_kernels(iv, 2) == [("b", 1.25, 2), ("a", 1.0, 1)]
