"""The scheduler with structured-output requests (fake grammars, controlled compile futures):
a request waits for its grammar without blocking the queue, a failed compile finishes it with
"abort", matchers advance with every output token, and a terminated grammar stops the request."""

from __future__ import annotations

from concurrent.futures import Future

from vllm_core.config import CacheConfig, SchedulerConfig
from vllm_core.engine.request import Request, RequestStatus
from vllm_core.engine.scheduler import Scheduler
from vllm_core.messages import ModelRunnerOutput
from vllm_core.sampling.params import SamplingParams
from vllm_core.structured_output.backend import StructuredOutputGrammar
from vllm_core.structured_output.request import StructuredOutputRequest


class CountingGrammar(StructuredOutputGrammar):
    """Accepts any token; terminates after ``limit`` tokens."""

    def __init__(self, limit: int) -> None:
        self.accepted: list[int] = []
        self.limit = limit

    def accept_tokens(self, tokens: list[int]) -> bool:
        self.accepted.extend(tokens)
        return True

    def rollback(self, num_tokens: int) -> None:
        del self.accepted[len(self.accepted) - num_tokens:]

    def fill_bitmask(self, bitmask, row: int) -> None:  # pragma: no cover - unused here
        pass

    def is_terminated(self) -> bool:
        return len(self.accepted) >= self.limit

    def reset(self) -> None:
        self.accepted.clear()


def make_scheduler() -> Scheduler:
    return Scheduler(SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=64),
                     CacheConfig(block_size=4, num_blocks=64), max_model_len=64)


def grammar_request(req_id: str, future: Future, limit: int = 3) -> Request:
    so = StructuredOutputRequest(key=("fake",), future=future,
                                 make_grammar=lambda compiled: CountingGrammar(limit))
    return Request(req_id, [1, 2, 3], SamplingParams(max_tokens=10, ignore_eos=True),
                   structured_output=so)


def run_step(s: Scheduler, token: int = 7):
    so = s.schedule()
    out = ModelRunnerOutput(sampled_token_ids={r: ([token] if r in so.sampling_req_ids else [])
                                               for r in so.num_scheduled_tokens})
    return so, s.update_from_output(so, out)


def test_waits_for_grammar_without_blocking_others():
    s = make_scheduler()
    future: Future = Future()
    s.add_request(grammar_request("g", future))
    s.add_request(Request("plain", [4, 5], SamplingParams(max_tokens=10, ignore_eos=True)))
    assert s.requests["g"].status == RequestStatus.WAITING_FOR_GRAMMAR
    assert s.grammar_futures() == [future]
    so, _ = run_step(s)
    assert set(so.num_scheduled_tokens) == {"plain"}
    so, _ = run_step(s)
    assert "g" not in so.num_scheduled_tokens
    future.set_result("compiled")
    so, outs = run_step(s)
    assert "g" in so.num_scheduled_tokens and s.requests["g"].status == RequestStatus.RUNNING
    assert s.grammar_futures() == []


def test_matcher_advances_and_terminated_grammar_stops():
    s = make_scheduler()
    future: Future = Future()
    future.set_result("compiled")
    s.add_request(grammar_request("g", future, limit=3))
    assert s.requests["g"].status == RequestStatus.WAITING     # ready at once
    grammar = None
    finished = None
    for step in range(6):
        _, outs = run_step(s, token=10 + step)
        grammar = grammar or s.requests.get("g").structured_output.grammar
        for o in outs:
            if o.finished:
                finished = o
        if finished:
            break
    assert grammar.accepted == [10, 11, 12]
    assert finished.finish_reason == "stop" and finished.new_token_ids == [12]
    assert "g" not in s.requests


def test_failed_compile_finishes_with_abort():
    s = make_scheduler()
    future: Future = Future()
    s.add_request(grammar_request("bad", future))
    future.set_exception(RuntimeError("boom"))
    so, _ = run_step(s)
    assert "bad" not in so.num_scheduled_tokens and "bad" not in s.requests
    failed = s.pop_failed_outputs()
    assert [(o.req_id, o.finish_reason) for o in failed] == [("bad", "abort")]
    assert s.pop_failed_outputs() == []
