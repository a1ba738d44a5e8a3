"""Data parallelism (``LLM(data_parallel_size=2)``: two engine-core processes behind one front
end): greedy tokens and logprobs equal the single engine's with both cores doing work; seeded
n > 1 children stay on one core and sample what one engine samples; a core busy with a long
request gets fewer new ones; an abort reaches the core serving the request; a killed core ends
the engine with a clear error in bounded time and shutdown leaves no process behind. Also the
routing policy and the device partition (pure functions)."""

from __future__ import annotations

import os
import signal
import time

import pytest
import torch
from dist_utils import alive, build_model_folder

from vllm_core.distributed.data_parallel import data_parallel_devices
from vllm_core.engine.dp_client import aggregate_snapshots
from vllm_core.engine.dp_router import CoreLoad, DPRouter, pick_core
from vllm_core.engine.errors import EngineDeadError
from vllm_core.engine.stats import SchedulerStats
from vllm_core.sampling.params import SamplingParams


# ---------------------------------------------------------------------- pure parts
def test_pick_core_least_requests_then_kv_usage_then_index():
    assert pick_core([CoreLoad(3, 0.1), CoreLoad(1, 0.9), CoreLoad(2, 0.0)]) == 1
    assert pick_core([CoreLoad(2, 0.5), CoreLoad(2, 0.2)]) == 1
    assert pick_core([CoreLoad(0, 0.0), CoreLoad(0, 0.0)]) == 0
    with pytest.raises(ValueError, match="no engine cores"):
        pick_core([])


def test_router_pins_requests_and_keeps_children_together():
    router = DPRouter(2)
    idle = [CoreLoad(0, 0.0), CoreLoad(0, 0.0)]
    busy0 = [CoreLoad(5, 0.5), CoreLoad(0, 0.0)]
    assert router.assign("a", None, idle) == 0
    assert router.assign("0_p", "p", busy0) == 1
    # the parent's other children follow the first, whatever the loads say now
    assert router.assign("1_p", "p", [CoreLoad(0, 0.0), CoreLoad(9, 1.0)]) == 1
    assert (router.core_of("a"), router.core_of("1_p")) == (0, 1)
    assert (router.live_on(0), router.live_on(1)) == (1, 2)
    with pytest.raises(ValueError, match="already routed"):
        router.assign("a", None, idle)
    router.release("0_p")
    assert router.assign("2_p", "p", busy0[::-1]) == 1          # one child still live
    router.release("1_p")
    router.release("2_p")
    router.release("unknown")                                     # ignored
    assert router.assign("0_p", "p", busy0[::-1]) == 0          # group gone: routed afresh
    assert router.total_assigned == [2, 3]


def test_data_parallel_devices_slices_the_visible_devices():
    assert data_parallel_devices(None, 4, 1, 2, "CUDA_VISIBLE_DEVICES") == ["2", "3"]
    assert data_parallel_devices("4,5,6,7", 0, 1, 2, "CUDA_VISIBLE_DEVICES") == ["6", "7"]
    assert data_parallel_devices("3, 1", 0, 0, 1, "CUDA_VISIBLE_DEVICES") == ["3"]
    with pytest.raises(ValueError, match="core 1 needs devices 2..3 .* only 3 are visible"):
        data_parallel_devices(None, 3, 1, 2, "CUDA_VISIBLE_DEVICES")


def test_cpu_platform_needs_no_device_environment():
    from vllm_core_cpu.platform import CpuPlatform

    assert CpuPlatform.data_parallel_env(1, 2) == {}


def test_aggregate_snapshots_sums_requests_and_weights_kv_usage_by_blocks():
    s = aggregate_snapshots([
        SchedulerStats(num_running_reqs=2, num_waiting_reqs=1, kv_cache_usage=0.5,
                       prefix_cache_hits=3, num_total_blocks=10),
        SchedulerStats(num_running_reqs=1, kv_cache_usage=0.0, prefix_cache_hits=1,
                       num_total_blocks=30)])
    assert (s.num_running_reqs, s.num_waiting_reqs, s.num_total_blocks) == (3, 1, 40)
    assert s.kv_cache_usage == pytest.approx(5 / 40)
    assert s.prefix_cache_hits == 4


# ---------------------------------------------------------------------- engines
# Marked slow: they share one DP=2 engine whose start (two spawned core processes) takes
# 60-70 s on the loaded 2-core machine (the three tests run in ~25 s after it).
def make_llm(folder: str, dp: int):
    from vllm_core import LLM

    return LLM(folder, dtype="float32", max_model_len=128, num_gpu_blocks_override=48,
               max_num_seqs=8, max_num_batched_tokens=48, seed=0, enforce_eager=True,
               data_parallel_size=dp)


def prompts() -> list[dict]:
    gen = torch.Generator().manual_seed(5)
    return [{"prompt_token_ids": torch.randint(1, 500, (n,), generator=gen).tolist()}
            for n in (5, 40, 17, 3, 9, 26, 12, 7, 31, 4, 15, 21)]


def run(llm) -> list:
    greedy = [SamplingParams(temperature=0.0, max_tokens=4 + i % 5, ignore_eos=True,
                             logprobs=2 if i % 3 == 0 else None) for i in range(12)]
    outs = llm.generate(prompts(), greedy, use_tqdm=False)
    result = [(list(o.outputs[0].token_ids),
               [{t: round(v.logprob, 4) for t, v in d.items()}
                for d in (o.outputs[0].logprobs or [])]) for o in outs]
    seeded = SamplingParams(temperature=1.0, top_k=20, seed=7, n=3, max_tokens=6,
                            ignore_eos=True)
    out = llm.generate(prompts()[1], seeded, use_tqdm=False)[0]
    result.append(sorted(list(c.token_ids) for c in out.outputs))
    return result


@pytest.fixture(scope="module")
def llama(model_root) -> str:
    folder = os.path.join(model_root, "llama")
    if not os.path.isdir(folder):
        build_model_folder(model_root, "llama")
    return folder


@pytest.fixture(scope="module")
def dp_llm(llama):
    llm = make_llm(llama, dp=2)
    yield llm
    llm.shutdown()


@pytest.mark.slow
def test_dp2_matches_one_engine_and_both_cores_work(llama, dp_llm):
    one = make_llm(llama, dp=1)
    try:
        want = run(one)
    finally:
        one.shutdown()
    client = dp_llm.llm_engine.core
    assert type(client).__name__ == "DPEngineCoreClient" and len(client.clients) == 2
    before = list(client.router.total_assigned)
    got = run(dp_llm)
    assert got == want
    routed = [a - b for a, b in zip(client.router.total_assigned, before, strict=True)]
    assert sum(routed) == 12 + 3 and min(routed) >= 5, routed    # both cores served
    # the three children of the seeded request went to one core: 12 greedy requests split
    # 6/6, so the children's core has exactly 3 more
    assert sorted(routed) == [6, 9], routed
    assert not client.has_unfinished_requests()


@pytest.mark.slow
def test_busy_core_gets_fewer_new_requests_and_aborts_reach_its_core(dp_llm):
    engine = dp_llm.llm_engine
    client = engine.core
    long = SamplingParams(temperature=0.0, max_tokens=110, ignore_eos=True)
    engine.add_request("long", {"prompt_token_ids": [3, 1, 4]}, long)
    busy = client.router.core_of("long")
    deadline = time.monotonic() + 30
    while client.clients[busy].scheduler_snapshot().num_running_reqs == 0:
        engine.step()                           # until the busy core reports it running
        assert time.monotonic() < deadline
    short = SamplingParams(temperature=0.0, max_tokens=3, ignore_eos=True)
    for i in range(6):
        engine.add_request(f"s{i}", {"prompt_token_ids": [5 + i, 9]}, short)
    cores = [client.router.core_of(f"s{i}") for i in range(6)]
    assert cores.count(busy) == 2 and cores.count(1 - busy) == 4, cores
    engine.abort_request("long")
    assert client.router.core_of("long") is None
    finished: set[str] = set()
    while engine.has_unfinished_requests():
        finished |= {o.request_id for o in engine.step() if o.finished}
        assert time.monotonic() < deadline
    assert finished == {f"s{i}" for i in range(6)}
    # The abort reached the busy core: its report after its short requests finished (taken
    # after it read the abort) shows nothing running, where "long" had ~100 tokens to go.
    snap = client.clients[busy].scheduler_snapshot()
    assert (snap.num_running_reqs, snap.num_waiting_reqs) == (0, 0)


@pytest.mark.slow
def test_killed_core_fails_the_engine_in_bounded_time(dp_llm):
    """Last: it ends the module's engine."""
    llm = dp_llm
    client = llm.llm_engine.core
    pids = list(client.core_pids)
    try:
        os.kill(pids[1], signal.SIGKILL)
        t0 = time.monotonic()
        with pytest.raises(EngineDeadError, match=r"data-parallel engine core 1: .*exited"):
            llm.generate(prompts(), SamplingParams(temperature=0.0, max_tokens=50,
                                                   ignore_eos=True), use_tqdm=False)
        assert time.monotonic() - t0 < 15
        with pytest.raises(EngineDeadError):
            llm.llm_engine.check_health()
    finally:
        llm.shutdown()
    for pid in pids:
        assert not alive(pid), f"engine core {pid} outlived shutdown"
