"""Pipeline micro-batching in the scheduler: ``schedule()`` called while earlier steps are in
flight (``Scheduler.in_flight``, ``engine/in_flight.py``). Driven by the KV-simulating fake
runner of ``test_scheduler.py``, which runs each step when it is submitted (the stages execute
steps in submission order) while the scheduler sees its output only when it is collected,
``depth`` steps later at most."""

from __future__ import annotations

from collections import deque

import pytest
from test_scheduler import (
    KVSimRunner,
    Result,
    check_output,
    make_scheduler,
    reference_output,
    req,
)

from vllm_core.engine.in_flight import InFlightRequests
from vllm_core.engine.request import RequestStatus
from vllm_core.engine.scheduler import Scheduler
from vllm_core.messages import ModelRunnerOutput, SchedulerOutput
from vllm_core.sampling.params import SamplingParams


class TokenCheckingRunner(KVSimRunner):
    """Also plays a rank that does not sample: the tokens the scheduler sends with a cached
    request (``new_token_ids``) must be exactly the request's tokens past its computed
    count, i.e. what such a rank is missing."""

    def __call__(self, so: SchedulerOutput) -> ModelRunnerOutput:
        for cached in so.scheduled_cached_reqs:
            st = self.reqs[cached.req_id]
            start = max(cached.num_computed_tokens, st.prompt_len)
            assert cached.new_token_ids == st.tokens[start:], cached.req_id
        return super().__call__(so)


def run_pipelined(sched: Scheduler, runner: KVSimRunner, depth: int = 2,
                  on_submit=None, max_steps: int = 3000) -> tuple[Result, int]:
    """The engine's batch-queue loop; returns the result and the most steps in flight."""
    in_flight = InFlightRequests(depth)
    sched.in_flight = in_flight
    queue: deque[tuple[SchedulerOutput, ModelRunnerOutput]] = deque()
    res = Result()
    most = 0
    for _ in range(max_steps):
        if not sched.has_unfinished_requests() and not queue:
            return res, most
        submitted = False
        if len(queue) < depth:
            held = set(in_flight._ids)
            so = sched.schedule()
            check_output(sched, so)
            assert held.isdisjoint(so.num_scheduled_tokens), "an in-flight request scheduled"
            preempted = {r for r in so.finished_req_ids if r in sched.requests
                         and sched.requests[r].status == RequestStatus.PREEMPTED}
            assert len(preempted) >= so.num_preempted      # + ids carried over
            assert held.isdisjoint(preempted), "an in-flight request was preempted"
            if not so.is_empty or not queue:
                res.outputs.append(so)
                out = runner(so)                  # the stages run it now, in order
                if not so.is_empty:
                    in_flight.add_step(so)
                    queue.append((so, out))
                    submitted = True
                    most = max(most, len(queue))
            else:                                 # finished ids ride with the next step
                sched.finished_req_ids |= so.finished_req_ids
            if on_submit is not None:
                on_submit(sched, so)
        if queue and (len(queue) >= depth or not submitted):
            so, out = queue.popleft()
            in_flight.finish_step(so)
            for core in sched.update_from_output(so, out):
                res.core_outputs.append(core)
                res.tokens.setdefault(core.req_id, []).extend(core.new_token_ids)
                if core.finished:
                    assert core.req_id not in res.finish, "finished twice"
                    res.finish[core.req_id] = core
    raise AssertionError("requests did not finish")


def _add(sched: Scheduler, n: int, max_tokens: int = 12) -> dict[str, list[int]]:
    prompts = {}
    for i in range(n):
        r = req(f"r{i}", 5 + 3 * i, arrival=float(i), max_tokens=max_tokens - i % 3)
        prompts[r.request_id] = list(r.prompt_token_ids)
        sched.add_request(r)
    return prompts


@pytest.mark.parametrize("depth", [2, 3])
def test_steps_in_flight_are_disjoint_and_tokens_unchanged(depth: int) -> None:
    sched = make_scheduler(num_blocks=200, budget=64, max_model_len=128)
    prompts = _add(sched, 8)
    res, most = run_pipelined(sched, TokenCheckingRunner(4), depth)
    assert most == depth
    for rid, prompt in prompts.items():
        expect, reason = reference_output(prompt, SamplingParams(
            max_tokens=12 - int(rid[1:]) % 3), 128)
        assert res.tokens[rid] == expect and res.finish[rid].finish_reason == reason
    # once everything is prefilled, consecutive decode steps split the running requests
    decode_sizes = [len(so.num_scheduled_tokens) for so in res.outputs
                    if so.num_scheduled_tokens and max(so.num_scheduled_tokens.values()) == 1]
    assert max(decode_sizes) <= -(-8 // depth)
    assert sched.kv_cache_manager.usage == 0.0 and not sched.in_flight


def test_preemption_never_picks_a_request_in_flight() -> None:
    sched = make_scheduler(num_blocks=14)            # 13 usable blocks of 4 tokens
    prompts = {}
    for i in range(6):
        r = req(f"r{i}", 9 + 3 * i, arrival=float(i), max_tokens=14)
        prompts[r.request_id] = list(r.prompt_token_ids)
        sched.add_request(r)
    res, most = run_pipelined(sched, TokenCheckingRunner(4))
    assert most == 2
    assert sum(so.num_preempted for so in res.outputs) > 0
    for rid, prompt in prompts.items():
        assert res.tokens[rid] == reference_output(prompt, SamplingParams(max_tokens=14), 64)[0]
    assert sched.kv_cache_manager.usage == 0.0


def test_abort_and_stop_of_requests_in_flight() -> None:
    """A request aborted while its step is in flight gets no output from that step and its
    blocks are freed at once; one finished by a stop token in a step is not scheduled again."""
    sched = make_scheduler(num_blocks=200, budget=64, max_model_len=128)
    prompts = _add(sched, 6)
    stop_prompt = prompts["r1"]
    stop_at = reference_output(stop_prompt, SamplingParams(max_tokens=11), 128)[0][2]
    sched.requests["r1"].stop_token_ids = frozenset({stop_at})
    aborted: dict[str, int] = {}

    def on_submit(s: Scheduler, so: SchedulerOutput) -> None:
        if not aborted and "r0" in s.in_flight._ids and len(s.requests["r0"].output_token_ids):
            aborted["r0"] = len(s.requests["r0"].output_token_ids)
            s.finish_requests("r0", RequestStatus.FINISHED_ABORTED)
            assert "r0" not in s.requests and s.in_flight.holds("r0")

    res, _ = run_pipelined(sched, TokenCheckingRunner(4), on_submit=on_submit)
    assert aborted and len(res.tokens["r0"]) == aborted["r0"] and "r0" not in res.finish
    want = reference_output(stop_prompt, SamplingParams(max_tokens=11), 128)[0]
    assert res.tokens["r1"] == want[:want.index(stop_at) + 1]
    assert res.finish["r1"].finish_reason == "stop"
    for rid in ("r2", "r3", "r4", "r5"):
        assert res.tokens[rid] == reference_output(prompts[rid], SamplingParams(
            max_tokens=12 - int(rid[1:]) % 3), 128)[0]
    assert sched.kv_cache_manager.usage == 0.0


def test_in_flight_refuses_a_request_twice() -> None:
    so = SchedulerOutput([], [], {"a": 1}, 1)
    flight = InFlightRequests(2)
    flight.add_step(so)
    with pytest.raises(RuntimeError, match="in flight"):
        flight.add_step(so)
    flight.finish_step(so)
    flight.add_step(so)
    with pytest.raises(ValueError, match="depth"):
        InFlightRequests(1)
