"""How busy the GPU is during an engine run, and where it waits: a CUDA-only trace's gaps.

``timeline(llm, prompts, params, out_path)`` runs ``llm.generate`` once under
``torch.profiler`` with CUDA activity only (no CPU op tracing, so the host runs at nearly its
normal speed), then merges every kernel / memcpy / memset interval into busy time and reports:

* ``timeline_wall_s``: the generate call's wall time;
* ``timeline_busy_s`` / ``timeline_busy_frac``: the union of device activity, and its share of
  the first-to-last activity span;
* ``timeline_gap_s``: idle time inside that span, split by gap length (``<10us``, ``10-100us``,
  ``0.1-1ms``, ``>1ms``: launch gaps inside a step against host bubbles between steps);
* ``timeline_busy_by_tenth``: busy share in each tenth of the span (the prefill-heavy start
  against the decode tail).

``timeline_top`` lists the kernels with the most device time (name, seconds, launches). The
25 longest gaps (with the kernels on either side and their offset into the run) go to
``out_path`` as text. Use it on fresh prompts after the timed run: the trace costs a pass.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

_BUCKETS = ((10e-6, "<10us"), (100e-6, "10-100us"), (1e-3, "0.1-1ms"), (float("inf"), ">1ms"))
_DEVICE_CATS = {"kernel", "gpu_memcpy", "gpu_memset"}


def device_intervals(trace: dict) -> list[tuple[float, float, str]]:
    """(start_s, end_s, name) of every device activity in a chrome trace, sorted by start."""
    out = []
    for ev in trace.get("traceEvents", []):
        if ev.get("ph") == "X" and ev.get("cat") in _DEVICE_CATS:
            start = float(ev["ts"]) * 1e-6
            out.append((start, start + float(ev.get("dur", 0.0)) * 1e-6, ev.get("name", "?")))
    out.sort()
    return out


def analyse(intervals: list[tuple[float, float, str]], tenths: int = 10) -> dict[str, Any]:
    """Busy time, gaps by length and busy share per tenth of the span (module docstring)."""
    if not intervals:
        return {"timeline_busy_s": 0.0}
    t0 = intervals[0][0]
    span = max(e for _, e, _ in intervals) - t0
    busy, gaps, slices = 0.0, [], [0.0] * tenths
    cur_s, cur_e, last_name = intervals[0][0], intervals[0][1], intervals[0][2]

    def add_busy(s: float, e: float) -> None:
        nonlocal busy
        busy += e - s
        width = span / tenths if span > 0 else 1.0
        i = int((s - t0) / width)
        while s < e and i < tenths:
            edge = t0 + (i + 1) * width
            slices[i] += min(e, edge) - s
            s, i = edge, i + 1

    for s, e, name in intervals[1:]:
        if s > cur_e:
            add_busy(cur_s, cur_e)
            gaps.append((s - cur_e, cur_e - t0, last_name, name))
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
        if e >= cur_e:
            last_name = name
    add_busy(cur_s, cur_e)
    by_len: dict[str, list[float]] = {label: [0, 0.0] for _, label in _BUCKETS}
    for g, *_ in gaps:
        label = next(lbl for lim, lbl in _BUCKETS if g < lim)
        by_len[label][0] += 1
        by_len[label][1] += g
    width = span / tenths if span > 0 else 1.0
    return {
        "timeline_span_s": round(span, 6), "timeline_busy_s": round(busy, 6),
        "timeline_busy_frac": round(busy / span, 4) if span else 1.0,
        "timeline_gap_s": {k: {"count": int(c), "s": round(t, 6)} for k, (c, t) in by_len.items()},
        "timeline_busy_by_tenth": [round(x / width, 3) for x in slices],
        "_longest_gaps": sorted(gaps, reverse=True)[:25],
    }


def top_kernels(intervals: list[tuple[float, float, str]], n: int = 12
                ) -> list[tuple[str, float, int]]:
    """(name cut to 60 characters, total seconds, count) of the ``n`` names with the most
    device time."""
    total: dict[str, list[float]] = {}
    for s, e, name in intervals:
        t = total.setdefault(name[:60], [0.0, 0])
        t[0] += e - s
        t[1] += 1
    ranked = sorted(total.items(), key=lambda kv: -kv[1][0])[:n]
    return [(name, round(t, 6), int(c)) for name, (t, c) in ranked]


def timeline(llm: Any, prompts: list[dict[str, Any]], params: Any, out_path: str
             ) -> dict[str, Any]:
    """Run ``llm.generate(prompts, params)`` under a CUDA-only trace; see the module docstring."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        llm.generate(prompts, params, use_tqdm=False)
        torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(path))
        trace = json.loads(path.read_text())
    intervals = device_intervals(trace)
    res = analyse(intervals)
    res["timeline_top"] = top_kernels(intervals)
    gaps = res.pop("_longest_gaps", [])
    lines = [f"{json.dumps(res)}", f"wall {wall:.4f} s", "longest gaps (s, at s, before, after):"]
    lines += [f"{g:.6f}  @{at:.4f}  {a[:60]}  ->  {b[:60]}" for g, at, a, b in gaps]
    Path(out_path).write_text("\n".join(lines) + "\n")
    res["timeline_wall_s"] = round(wall, 4)
    return res
