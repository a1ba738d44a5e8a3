"""The Ray executor (``distributed_executor_backend="ray"``) on a private local Ray instance:
greedy tokens and logprobs with TP=2 (two actors in one placement group, gloo) equal the
single-rank engine's; a killed actor is noticed by the idle engine's health probe and stops
the engine with ``WorkerFailure`` naming the rank;
shutdown stops the actors and the Ray instance the executor started."""

from __future__ import annotations

import os
import signal
import time

import pytest
from dist_utils import make_llm, one_rank_reference
from test_parallel_equivalence import run

# starts a Ray instance (~10-20 s on two cores); the portable attention backend: no CPU
# kernel build at start (not what is tested here)
pytestmark = pytest.mark.slow


def test_ray_tp2_equals_one_rank_and_fails_loudly(model_root):
    import ray

    from vllm_core.engine.mp_executor import WorkerFailure

    folder, want = one_rank_reference(model_root, run)
    llm = make_llm(folder, tp=2, distributed_executor_backend="ray",
                   attention_backend="reference")
    try:
        executor = llm.llm_engine.executor
        assert type(executor).__name__ == "RayExecutor" and len(executor.pids) == 2
        got = run(llm)
        assert [g[0] for g in got] == [w[0] for w in want]        # greedy tokens
        for g, w in zip(got, want, strict=True):                  # logprobs
            for gd, wd in zip(g[1], w[1], strict=True):
                assert gd.keys() == wd.keys()
                assert all(abs(gd[t] - wd[t]) < 1e-4 for t in gd)
        os.kill(executor.pids[1], signal.SIGKILL)
        # noticed while idle: the health probe (the server's watchdog calls it) raises
        deadline = time.monotonic() + 30.0
        with pytest.raises(WorkerFailure, match=r"worker rank 1 \(Ray actor\) died"):
            while time.monotonic() < deadline:
                llm.llm_engine.check_health()
                time.sleep(0.2)
        with pytest.raises(WorkerFailure, match=r"worker rank.* 1"):
            run(llm)
        with pytest.raises(WorkerFailure):               # and it stays failed
            run(llm)
    finally:
        llm.llm_engine.shutdown()
    assert not ray.is_initialized()
