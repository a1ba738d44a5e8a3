"""Where a GPU engine run spends its time: prefill-only and decode-heavy windows, timed and
profiled (torch.profiler kernel tables), for the offline throughput benchmarks' ``--profile``.

``profile_phases(llm, prompts, out_path, decode_tokens)`` runs, on fresh random prompts of the
measured shape (so the prefix cache never serves them):

1. ``max_tokens=1`` (prefill only), timed, then profiled;
2. ``max_tokens=decode_tokens`` (the prefill again plus ``decode_tokens - 1`` decode steps),
   timed, then profiled.

The decode steps' share is the difference of the two windows. It writes both kernel tables
(sorted by device time) to ``out_path`` and returns the timings (seconds) as a dict for the
benchmark's JSON line. Costs four extra passes over the prompts; use it in a separate run from
the one whose throughput is quoted.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any


def fresh_prompts(prompts: list[list[int]], seed: int) -> list[dict[str, Any]]:
    """Random prompts of the same count and length (the prefix cache never serves them)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    high = max(map(max, prompts)) + 1
    return [{"prompt_token_ids": p} for p in
            rng.integers(0, high, size=(len(prompts), len(prompts[0]))).tolist()]


def _window(llm: Any, prompts: list[list[int]], max_tokens: int, seed: int
            ) -> tuple[float, str]:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from vllm_core import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True,
                            detokenize=False)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    llm.generate(fresh_prompts(prompts, seed), params, use_tqdm=False)
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        llm.generate(fresh_prompts(prompts, seed + 1), params, use_tqdm=False)
    torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=40)
    return elapsed, table


def profile_phases(llm: Any, prompts: list[list[int]], out_path: str,
                   decode_tokens: int = 32) -> dict[str, float]:
    """Time and profile a prefill-only and a prefill + decode window (module docstring)."""
    prefill_s, prefill_table = _window(llm, prompts, 1, 30_000)
    both_s, both_table = _window(llm, prompts, decode_tokens, 40_000)
    steps = max(decode_tokens - 1, 1)
    res = {"profile_prefill_s": round(prefill_s, 3),
           "profile_prefill_decode_s": round(both_s, 3),
           "profile_decode_step_ms": round(1000 * (both_s - prefill_s) / steps, 3),
           "profile_decode_tokens": decode_tokens}
    Path(out_path).write_text(
        f"{res}\n\n== prefill only (max_tokens=1), {len(prompts)} prompts\n{prefill_table}\n\n"
        f"== prefill + {steps} decode steps\n{both_table}\n")
    return res
