"""Scheduler behaviour, driven by a fake runner that simulates the paged KV cache.

``KVSimRunner`` plays the workers: it keeps per-request state from the messages only, writes
each computed token into a simulated KV store at the slot the block table gives, checks that the
positions it is told are computed really hold the right tokens (so a wrong prefix-cache hit or
a block written by two requests fails loudly), and samples a token that is a deterministic
function of the sequence read back from the KV store. So every request's output stream is a
function of its own prompt alone, whatever batching, chunking, caching or preemption happened.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from vllm_core.config import CacheConfig, SchedulerConfig
from vllm_core.engine.request import Request, RequestStatus
from vllm_core.engine.scheduler import Scheduler
from vllm_core.messages import (
    EngineCoreOutput,
    Logprobs,
    ModelRunnerOutput,
    SchedulerOutput,
)
from vllm_core.sampling.params import SamplingParams

EOS = 3


def next_token(seq: list[int], vocab: int = 1000) -> int:
    """The fake model: a deterministic function of the whole sequence."""
    h = len(seq)
    for t in seq[-6:]:
        h = (h * 1000003 + t) & 0xFFFFFFFF
    return 10 + h % (vocab - 10)          # never EOS unless scripted


@dataclass
class _State:
    tokens: list[int]
    blocks: list[int]
    computed: int
    prompt_len: int


@dataclass
class KVSimRunner:
    block_size: int
    script: dict[str, list[int]] = field(default_factory=dict)   # req_id -> output tokens
    vocab: int = 1000
    kv: dict[int, list[int | None]] = field(default_factory=dict)
    reqs: dict[str, _State] = field(default_factory=dict)

    def __call__(self, so: SchedulerOutput) -> ModelRunnerOutput:
        for rid in so.finished_req_ids:
            self.reqs.pop(rid, None)
        for new in so.scheduled_new_reqs:
            assert new.req_id not in self.reqs, "new request already held by the worker"
            self.reqs[new.req_id] = _State(list(new.prompt_token_ids) + list(new.output_token_ids),
                                           list(new.block_ids), new.num_computed_tokens,
                                           len(new.prompt_token_ids))
        for cached in so.scheduled_cached_reqs:
            st = self.reqs[cached.req_id]
            assert st.computed == cached.num_computed_tokens
            st.blocks.extend(cached.new_block_ids)
        sampled: dict[str, list[int]] = {}
        for rid, n in so.num_scheduled_tokens.items():
            st = self.reqs[rid]
            c = st.computed
            assert n >= 1 and c + n <= len(st.tokens)
            assert len(st.blocks) * self.block_size >= c + n
            assert 0 not in st.blocks, "the null block was handed out"
            for pos in range(c):                                  # cached / computed prefix
                assert self._read(st, pos) == st.tokens[pos], f"{rid}: bad KV at {pos}"
            for pos in range(c, c + n):
                blk = self.kv.setdefault(st.blocks[pos // self.block_size],
                                         [None] * self.block_size)
                blk[pos % self.block_size] = st.tokens[pos]
            st.computed = c + n
            if st.computed == len(st.tokens):
                seq = [self._read(st, p) for p in range(st.computed)]
                k = len(st.tokens) - st.prompt_len
                script = self.script.get(rid)
                tok = script[k] if script and k < len(script) else next_token(seq, self.vocab)
                st.tokens.append(tok)
                sampled[rid] = [tok]
            else:
                sampled[rid] = []
        return ModelRunnerOutput(sampled_token_ids=sampled)

    def _read(self, st: _State, pos: int) -> int | None:
        return self.kv[st.blocks[pos // self.block_size]][pos % self.block_size]


def reference_output(prompt: list[int], params: SamplingParams, max_model_len: int,
                     script: list[int] | None = None, vocab: int = 1000) -> tuple[list[int], str]:
    """What any correct scheduler must produce for one request with ``next_token``."""
    seq, out = list(prompt), []
    max_tokens = params.max_tokens or max_model_len - len(prompt)
    stops = params.all_stop_token_ids
    while True:
        k = len(out)
        tok = script[k] if script and k < len(script) else next_token(seq, vocab)
        seq.append(tok)
        out.append(tok)
        if tok in stops and len(out) >= params.min_tokens:
            return out, "stop"
        if len(out) >= max_tokens or len(seq) >= max_model_len:
            return out, "length"


def make_scheduler(*, num_blocks: int = 64, block_size: int = 4, budget: int = 64,
                   max_num_seqs: int = 16, chunked: bool = True, policy: str = "fcfs",
                   max_model_len: int = 64, caching: bool = True) -> Scheduler:
    return Scheduler(SchedulerConfig(max_num_seqs=max_num_seqs, max_num_batched_tokens=budget,
                                     enable_chunked_prefill=chunked, policy=policy),
                     CacheConfig(block_size=block_size, num_blocks=num_blocks,
                                 enable_prefix_caching=caching),
                     max_model_len=max_model_len)


def req(rid: str, prompt: list[int] | int, *, arrival: float = 0.0, priority: int = 0,
        parent_id: str | None = None, **params) -> Request:
    if isinstance(prompt, int):
        prompt = [100 + (hash(rid) + i) % 500 for i in range(prompt)]
    params.setdefault("max_tokens", 4)
    sp = SamplingParams(**params)
    sp.eos_token_ids = [EOS]                  # as the engine fills it from the model
    return Request(rid, prompt, sp, arrival_time=arrival,
                   priority=priority, parent_id=parent_id)


def check_output(sched: Scheduler, so: SchedulerOutput) -> None:
    """Every SchedulerOutput invariant, plus the budgets."""
    new_ids = [n.req_id for n in so.scheduled_new_reqs]
    cached_ids = [c.req_id for c in so.scheduled_cached_reqs]
    assert len(set(new_ids)) == len(new_ids) and not set(new_ids) & set(cached_ids)
    assert set(new_ids) | set(cached_ids) == set(so.num_scheduled_tokens)
    assert all(n >= 1 for n in so.num_scheduled_tokens.values())
    assert so.total_num_scheduled_tokens == sum(so.num_scheduled_tokens.values())
    assert so.total_num_scheduled_tokens <= sched.max_num_batched_tokens
    assert len(so.num_scheduled_tokens) <= sched.max_num_seqs
    assert len(sched.running) <= sched.max_num_seqs
    assert not set(new_ids) & so.finished_req_ids


@dataclass
class Result:
    tokens: dict[str, list[int]] = field(default_factory=dict)
    finish: dict[str, EngineCoreOutput] = field(default_factory=dict)
    outputs: list[SchedulerOutput] = field(default_factory=list)
    core_outputs: list[EngineCoreOutput] = field(default_factory=list)


def run(sched: Scheduler, runner: KVSimRunner, max_steps: int = 2000,
        on_step=None) -> Result:
    res = Result()
    for step in range(max_steps):
        if not sched.has_unfinished_requests():
            return res
        so = sched.schedule()
        check_output(sched, so)
        res.outputs.append(so)
        for out in sched.update_from_output(so, runner(so)):
            res.core_outputs.append(out)
            res.tokens.setdefault(out.req_id, []).extend(out.new_token_ids)
            if out.finished:
                assert out.req_id not in res.finish, "finished twice"
                res.finish[out.req_id] = out
        if on_step is not None:
            on_step(step, sched)
    raise AssertionError("requests did not finish")


# ---------------------------------------------------------------------------- import hygiene
def test_scheduler_modules_do_not_import_torch() -> None:
    code = ("import sys\n"
            "import vllm_core.engine.scheduler, vllm_core.engine.kv_cache_manager\n"
            "import vllm_core.engine.block_pool, vllm_core.engine.prefix_cache\n"
            "import vllm_core.engine.request\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------- budgets
def test_token_budget_and_max_num_seqs_every_step() -> None:
    sched = make_scheduler(budget=20, max_num_seqs=3, num_blocks=200, max_model_len=128)
    for i in range(8):
        sched.add_request(req(f"r{i}", 10 + 7 * i, arrival=i, max_tokens=5))
    res = run(sched, KVSimRunner(4))
    assert len(res.finish) == 8
    assert max(so.total_num_scheduled_tokens for so in res.outputs) == 20
    assert max(len(so.num_scheduled_tokens) for so in res.outputs) == 3
    for i in range(8):
        r = f"r{i}"
        assert len(res.tokens[r]) == 5 and res.finish[r].finish_reason == "length"


def test_chunked_prefill_mixes_decodes_and_chunks() -> None:
    sched = make_scheduler(budget=16, num_blocks=100, max_model_len=128)
    runner = KVSimRunner(4)
    sched.add_request(req("a", 6, max_tokens=20))
    so = sched.schedule()
    assert so.num_scheduled_tokens == {"a": 6}
    sched.update_from_output(so, runner(so))
    sched.add_request(req("b", 40, arrival=1.0))
    so = sched.schedule()
    # the decode first, then a chunk of b filling the budget
    assert so.num_scheduled_tokens == {"a": 1, "b": 15}
    assert [c.req_id for c in so.scheduled_cached_reqs] == ["a"]
    assert so.scheduled_new_reqs[0].num_computed_tokens == 0
    outs = {o.req_id: o for o in sched.update_from_output(so, runner(so))}
    assert "b" not in outs and len(outs["a"].new_token_ids) == 1   # partial prefill: no sample
    so = sched.schedule()
    assert so.num_scheduled_tokens == {"a": 1, "b": 15}
    assert so.scheduled_cached_reqs[1].num_computed_tokens == 15
    sched.update_from_output(so, runner(so))
    so = sched.schedule()
    assert so.num_scheduled_tokens == {"a": 1, "b": 10}            # last chunk samples
    outs = {o.req_id: o for o in sched.update_from_output(so, runner(so))}
    assert len(outs["b"].new_token_ids) == 1


def test_no_chunking_when_disabled() -> None:
    sched = make_scheduler(budget=64, chunked=False, num_blocks=200, max_model_len=64)
    runner = KVSimRunner(4)
    sched.add_request(req("a", 10, max_tokens=3))
    sched.add_request(req("b", 10, arrival=0.5, max_tokens=3))
    sched.add_request(req("c", 63, arrival=1.0, max_tokens=1))
    res = run(sched, runner)
    for so in res.outputs:
        if "c" in so.num_scheduled_tokens:
            assert so.num_scheduled_tokens["c"] == 63                  # always whole
            assert so.num_scheduled_tokens.keys() == {"c"}             # waited for room
    assert res.finish["c"].finish_reason == "length"
    with pytest.raises(ValueError, match="max_num_batched_tokens"):
        make_scheduler(budget=32, chunked=False, max_model_len=64)


# ---------------------------------------------------------------------------- preemption
def _workload(sched: Scheduler, n: int = 6) -> dict[str, Request]:
    reqs = {}
    for i in range(n):
        r = req(f"r{i}", 9 + 3 * i, arrival=float(i), max_tokens=14)
        reqs[r.request_id] = r
        sched.add_request(r)
    return reqs


def test_preemption_recomputes_and_gives_the_same_tokens() -> None:
    big = make_scheduler(num_blocks=200)
    prompts = {r.request_id: list(r.prompt_token_ids) for r in _workload(big).values()}
    ref = run(big, KVSimRunner(4))
    assert sum(so.num_preempted for so in ref.outputs) == 0

    small = make_scheduler(num_blocks=14)                # 13 usable blocks of 4 tokens
    _workload(small)
    res = run(small, KVSimRunner(4))
    assert sum(so.num_preempted for so in res.outputs) > 0
    assert res.tokens == ref.tokens
    for rid, prompt in prompts.items():
        expect, _ = reference_output(prompt, SamplingParams(max_tokens=14), 64)
        assert res.tokens[rid] == expect
    resumed = [n for so in res.outputs for n in so.scheduled_new_reqs if n.output_token_ids]
    assert resumed, "a preempted request should come back with its outputs"
    preempted_ids = {rid for so in res.outputs if so.num_preempted for rid in so.finished_req_ids}
    assert preempted_ids
    assert small.kv_cache_manager.usage == 0.0


def test_fcfs_preempts_the_latest_arrival() -> None:
    sched = make_scheduler(num_blocks=5, block_size=4, budget=64)      # 4 usable blocks
    runner = KVSimRunner(4)
    sched.add_request(req("old", 8, arrival=0.0, max_tokens=10))
    sched.add_request(req("new", 8, arrival=1.0, max_tokens=10))
    so = sched.schedule()                                              # 2 blocks each
    sched.update_from_output(so, runner(so))                           # 9 tokens each
    so = sched.schedule()                                              # both need a 3rd block
    assert so.num_preempted == 1 and so.finished_req_ids == {"new"}
    assert list(so.num_scheduled_tokens) == ["old"]
    assert sched.requests["new"].status == RequestStatus.PREEMPTED
    assert sched.waiting.peek().request_id == "new"


def test_priority_preempts_the_largest_priority_value() -> None:
    sched = make_scheduler(num_blocks=5, block_size=4, policy="priority")
    runner = KVSimRunner(4)
    sched.add_request(req("low", 8, arrival=0.0, priority=5, max_tokens=10))
    sched.add_request(req("high", 8, arrival=1.0, priority=0, max_tokens=10))
    so = sched.schedule()
    sched.update_from_output(so, runner(so))
    so = sched.schedule()
    assert so.finished_req_ids == {"low"} and list(so.num_scheduled_tokens) == ["high"]


def test_victim_already_scheduled_this_step_is_unscheduled() -> None:
    # "dec" (low priority) decodes first (decodes go before prefill chunks); then the prefill
    # chunk of "pre" (high priority) needs blocks, and the lowest-priority running request is
    # "dec", already scheduled this step: it is unscheduled and preempted.
    sched = make_scheduler(num_blocks=6, block_size=4, budget=8, policy="priority")
    runner = KVSimRunner(4)
    dec_tokens: list[int] = []

    def step() -> SchedulerOutput:
        so = sched.schedule()
        check_output(sched, so)
        for out in sched.update_from_output(so, runner(so)):
            if out.req_id == "dec":
                dec_tokens.extend(out.new_token_ids)
        return so

    dec = req("dec", 3, arrival=0.0, priority=5, max_tokens=20)
    dec_prompt = list(dec.prompt_token_ids)
    sched.add_request(dec)
    step()
    sched.add_request(req("pre", 19, arrival=1.0, priority=0, max_tokens=2))
    assert step().num_scheduled_tokens == {"dec": 1, "pre": 7}
    so = step()
    assert so.finished_req_ids == {"dec"} and so.num_scheduled_tokens == {"pre": 7}
    assert so.num_preempted == 1 and dec.status == RequestStatus.PREEMPTED
    while sched.has_unfinished_requests():
        step()
    # the cache holds 20 tokens, which caps the sequence length
    assert dec_tokens == reference_output(dec_prompt, SamplingParams(max_tokens=20), 20)[0]


# ---------------------------------------------------------------------------- ordering
@pytest.mark.parametrize("policy, expected", [("fcfs", ["a", "b", "c"]),
                                              ("priority", ["c", "a", "b"])])
def test_admission_order(policy: str, expected: list[str]) -> None:
    sched = make_scheduler(max_num_seqs=1, policy=policy)
    sched.add_request(req("a", 5, arrival=0.0, priority=1))
    sched.add_request(req("b", 5, arrival=1.0, priority=1))
    sched.add_request(req("c", 5, arrival=2.0, priority=0))
    res = run(sched, KVSimRunner(4))
    order = list(dict.fromkeys(n.req_id for so in res.outputs for n in so.scheduled_new_reqs))
    assert order == expected
    finished_order = [o.req_id for o in res.core_outputs if o.finished]
    assert finished_order == expected


# ---------------------------------------------------------------------------- finish / abort
def test_abort_frees_blocks_and_reports_the_id() -> None:
    sched = make_scheduler()
    runner = KVSimRunner(4)
    sched.add_request(req("a", 10, max_tokens=50))
    sched.add_request(req("w", 10, arrival=1.0, max_tokens=50))
    so = sched.schedule()
    sched.update_from_output(so, runner(so))
    assert sched.kv_cache_manager.usage > 0
    sched.finish_requests(["a", "w", "unknown"], RequestStatus.FINISHED_ABORTED)
    assert sched.kv_cache_manager.usage == 0.0
    assert not sched.has_unfinished_requests() and sched.has_finished_requests()
    so = sched.schedule()
    assert so.finished_req_ids == {"a", "w"} and so.is_empty
    assert sched.schedule().finished_req_ids == set()
    # a waiting request aborted before it ever ran
    sched.add_request(req("x", 5))
    sched.finish_requests("x", RequestStatus.FINISHED_ABORTED)
    assert len(sched.waiting) == 0 and sched.get_num_unfinished_requests() == 0
    with pytest.raises(ValueError, match="finished status"):
        sched.finish_requests("x", RequestStatus.RUNNING)


def test_abort_between_schedule_and_update_is_skipped() -> None:
    sched = make_scheduler()
    runner = KVSimRunner(4)
    sched.add_request(req("a", 10))
    so = sched.schedule()
    mro = runner(so)
    sched.finish_requests("a", RequestStatus.FINISHED_STOPPED)      # e.g. a stop string
    assert sched.update_from_output(so, mro) == []


def test_requests_that_can_never_fit_are_rejected() -> None:
    sched = make_scheduler(num_blocks=5, block_size=4, max_model_len=64)   # 16 cache tokens
    with pytest.raises(ValueError, match="64 tokens, but max_model_len is 64"):
        sched.add_request(req("long", 64))
    with pytest.raises(ValueError, match=r"16 tokens; with one output token it needs 5 .*"
                                         r"only 4 blocks \(16 tokens\)"):
        sched.add_request(req("big", 16))
    sched.add_request(req("ok", 15))
    with pytest.raises(ValueError, match="already"):
        sched.add_request(req("ok", 15))


def test_cache_smaller_than_max_model_len_caps_length() -> None:
    sched = make_scheduler(num_blocks=5, block_size=4, max_model_len=64)   # 16 cache tokens
    sched.add_request(req("a", 10, max_tokens=None))
    res = run(sched, KVSimRunner(4))
    assert len(res.tokens["a"]) == 6 and res.finish["a"].finish_reason == "length"


# ---------------------------------------------------------------------------- stop checks
def _one(params: dict, script: list[int], prompt: int = 5, max_model_len: int = 64):
    sched = make_scheduler(max_model_len=max_model_len)
    sched.add_request(req("a", prompt, **params))
    res = run(sched, KVSimRunner(4, script={"a": script}))
    return res.tokens["a"], res.finish["a"]


def test_eos_respects_min_tokens() -> None:
    script = [EOS, 50, EOS, 51]
    tokens, fin = _one({"max_tokens": 10, "min_tokens": 2}, script)
    assert tokens == [EOS, 50, EOS] and fin.finish_reason == "stop" and fin.stop_reason is None
    tokens, fin = _one({"max_tokens": 10}, script)
    assert tokens == [EOS]
    tokens, fin = _one({"max_tokens": 4, "ignore_eos": True}, script)
    assert tokens == script and fin.finish_reason == "length"


def test_stop_token_ids_set_stop_reason() -> None:
    tokens, fin = _one({"max_tokens": 10, "stop_token_ids": [77], "min_tokens": 1},
                       [77, 50, 77, 51])
    assert tokens == [77]
    assert fin.finish_reason == "stop" and fin.stop_reason == 77
    tokens, fin = _one({"max_tokens": 10, "stop_token_ids": [77], "min_tokens": 2},
                       [77, 50, 77, 51])
    assert tokens == [77, 50, 77] and fin.stop_reason == 77
    # a stop token on the last allowed token is a "stop"
    tokens, fin = _one({"max_tokens": 2, "stop_token_ids": [77]}, [50, 77, 51])
    assert tokens == [50, 77] and fin.finish_reason == "stop"


def test_max_tokens_and_max_model_len_stops() -> None:
    tokens, fin = _one({"max_tokens": 3}, [])
    assert len(tokens) == 3 and fin.finish_reason == "length" and fin.stop_reason is None
    tokens, fin = _one({"max_tokens": None}, [], prompt=10, max_model_len=16)
    assert len(tokens) == 6 and fin.finish_reason == "length"
    tokens, fin = _one({"max_tokens": 50}, [], prompt=10, max_model_len=16)
    assert len(tokens) == 6 and fin.finish_reason == "length"


def test_eos_ids_from_the_engine_stop_the_request() -> None:
    params = SamplingParams(max_tokens=10)
    params.eos_token_ids = [5]
    sched = make_scheduler()
    sched.add_request(Request("a", [1, 2, 3], params))
    res = run(sched, KVSimRunner(4, script={"a": [9, 5, 9]}))
    assert res.tokens["a"] == [9, 5] and res.finish["a"].stop_reason is None


# ---------------------------------------------------------------------------- n > 1
def test_siblings_share_the_prompt_blocks() -> None:
    sched = make_scheduler(block_size=4, budget=16)
    runner = KVSimRunner(4)
    prompt = list(range(100, 118))                                  # 18 tokens: 4 full blocks
    for i in range(3):
        sched.add_request(req(f"p-{i}", prompt, parent_id="p", arrival=0.0, max_tokens=3))
    so = sched.schedule()
    assert so.num_scheduled_tokens == {"p-0": 16}                   # only the first child
    sched.update_from_output(so, runner(so))
    so = sched.schedule()
    assert so.num_scheduled_tokens == {"p-0": 2}                    # prompt not done yet
    sched.update_from_output(so, runner(so))
    so = sched.schedule()
    new = {n.req_id: n for n in so.scheduled_new_reqs}
    assert set(new) == {"p-1", "p-2"}
    leader_blocks = sched.kv_cache_manager.get_block_ids("p-0")
    for n in new.values():
        assert n.num_computed_tokens == 16 and n.block_ids[:4] == leader_blocks[:4]
        assert so.num_scheduled_tokens[n.req_id] == 2
    shared = sched.kv_cache_manager.req_to_blocks["p-0"][:4]
    assert [b.ref_cnt for b in shared] == [3, 3, 3, 3]
    outs = sched.update_from_output(so, runner(so))
    assert {o.req_id: o.num_cached_tokens for o in outs if o.req_id != "p-0"} == {
        "p-1": 16, "p-2": 16}
    res = run(sched, runner)
    assert set(res.finish) == {"p-0", "p-1", "p-2"}


def test_siblings_are_not_gated_without_prefix_caching() -> None:
    sched = make_scheduler(caching=False)
    for i in range(2):
        sched.add_request(req(f"p-{i}", 8, parent_id="p"))
    assert set(sched.schedule().num_scheduled_tokens) == {"p-0", "p-1"}


# ---------------------------------------------------------------------------- outputs, stats
def test_num_cached_tokens_on_first_output_only() -> None:
    sched = make_scheduler()
    runner = KVSimRunner(4)
    prompt = list(range(200, 213))
    sched.add_request(req("a", prompt, max_tokens=2))
    run(sched, runner)
    sched.add_request(req("b", prompt, max_tokens=3))
    res = run(sched, runner)
    assert [o.num_cached_tokens for o in res.core_outputs] == [12, 0, 0]


def test_stats_numbers() -> None:
    sched = make_scheduler(num_blocks=14)
    stats = sched.make_stats()
    assert stats is not None and stats.num_total_blocks == 14 and stats.num_waiting_reqs == 0
    _workload(sched)
    stats = sched.make_stats()
    assert (stats.num_running_reqs, stats.num_waiting_reqs) == (0, 6)
    runner = KVSimRunner(4)
    so = sched.schedule()
    sched.update_from_output(so, runner(so))
    stats = sched.make_stats()
    assert stats.num_running_reqs == len(so.scheduled_new_reqs)
    assert stats.num_running_reqs + stats.num_waiting_reqs == 6
    used = 13 - sched.kv_cache_manager.block_pool.get_num_free_blocks()
    assert stats.kv_cache_usage == pytest.approx(used / 13)
    assert stats.prefix_cache_queries == sum(len(n.prompt_token_ids)
                                             for n in so.scheduled_new_reqs)
    total_preempted = 0
    while sched.has_unfinished_requests():
        so = sched.schedule()
        sched.update_from_output(so, runner(so))
        s = sched.make_stats()
        assert s.num_preemptions == so.num_preempted              # per call, not cumulative
        total_preempted += s.num_preemptions
    assert total_preempted > 0
    # prefix hits: the same prompt again hits its cached blocks
    sched.add_request(req("again", list(range(300, 313))))
    run(sched, runner)
    sched.make_stats()
    sched.add_request(req("again2", list(range(300, 313))))
    run(sched, runner)
    s = sched.make_stats()
    assert (s.prefix_cache_queries, s.prefix_cache_hits) == (13, 12)
    quiet = Scheduler(SchedulerConfig(max_num_batched_tokens=64),
                      CacheConfig(block_size=4, num_blocks=8), 64, log_stats=False)
    assert quiet.make_stats() is None


def test_logprobs_and_prompt_logprobs_pass_through() -> None:
    sched = make_scheduler(budget=4)
    sched.add_request(req("a", 6, max_tokens=2, logprobs=1, prompt_logprobs=1))
    lp = Logprobs(token_ids=[1], logprobs=[-0.5], ranks=[1])
    so = sched.schedule()                                          # chunk of 4: positions 1..4
    outs = sched.update_from_output(
        so, ModelRunnerOutput({"a": []}, prompt_logprobs={"a": [lp] * 4}))
    assert len(outs) == 1 and len(outs[0].new_prompt_logprobs) == 4
    assert outs[0].new_token_ids == [] and outs[0].new_logprobs is None
    so = sched.schedule()                                          # last 2 tokens: position 5
    outs = sched.update_from_output(
        so, ModelRunnerOutput({"a": [42]}, logprobs={"a": [lp]}, prompt_logprobs={"a": [lp]}))
    assert outs[0].new_token_ids == [42] and outs[0].new_logprobs == [lp]
    assert len(outs[0].new_prompt_logprobs) == 1


def test_prompt_logprobs_are_not_resent_after_preemption() -> None:
    r = req("a", 10, prompt_logprobs=1)
    lp = [Logprobs([i], [0.0], [1]) for i in range(9)]
    r.num_computed_tokens = 4                                      # first chunk: 1..4
    assert Scheduler._new_prompt_logprobs(r, 4, lp[:4]) == lp[:4]
    r.num_computed_tokens = 6                                      # resumed: recomputes 1..6
    assert Scheduler._new_prompt_logprobs(r, 6, lp[:6]) == lp[4:6]
    r.num_computed_tokens = 10                                     # then 7..9
    assert Scheduler._new_prompt_logprobs(r, 4, lp[6:9]) == lp[6:9]
    assert r.num_prompt_logprobs_sent == 9


def test_runner_breaking_the_sampling_rule_is_loud() -> None:
    sched = make_scheduler(budget=4)
    sched.add_request(req("a", 6))
    so = sched.schedule()                                          # partial prefill
    with pytest.raises(RuntimeError, match="must not sample"):
        sched.update_from_output(so, ModelRunnerOutput({"a": [1]}))


def test_request_status_and_fields() -> None:
    assert RequestStatus.finish_reason(RequestStatus.FINISHED_STOPPED) == "stop"
    assert RequestStatus.finish_reason(RequestStatus.FINISHED_LENGTH) == "length"
    assert RequestStatus.finish_reason(RequestStatus.FINISHED_ABORTED) == "abort"
    assert RequestStatus.finish_reason(RequestStatus.PREEMPTED) is None
    r = Request("x", [1, 2, 3], SamplingParams(max_tokens=None), max_model_len=10)
    assert r.max_tokens == 7 and r.num_tokens == 3 and not r.is_finished
    r.append_output_token_ids([4, 5])
    assert r.all_token_ids == [1, 2, 3, 4, 5] and r.num_output_tokens == 2
    with pytest.raises(ValueError, match="prompt_token_ids"):
        Request("y", [], SamplingParams())


# ---------------------------------------------------------------------------- property test
def check_blocks(sched: Scheduler) -> None:
    """Block accounting: ref counts match the tables, free + used == total, no strays."""
    kv = sched.kv_cache_manager
    pool = kv.block_pool
    owners: Counter[int] = Counter()
    assert set(kv.req_to_blocks) == {r.request_id for r in sched.running}
    for rid, blocks in kv.req_to_blocks.items():
        r = sched.requests[rid]
        ids = [b.block_id for b in blocks]
        assert r.status == RequestStatus.RUNNING
        assert len(set(ids)) == len(ids) and 0 not in ids
        assert len(ids) == -(-r.num_computed_tokens // kv.block_size)
        owners.update(ids)
    for b in pool.blocks[1:]:
        assert b.ref_cnt == owners[b.block_id]
        assert (b in pool.free_queue) == (b.ref_cnt == 0)
    assert pool.null_block.ref_cnt == 0 and pool.null_block not in pool.free_queue
    assert pool.get_num_free_blocks() + len(owners) == pool.num_usable_blocks
    for h, b in pool._cached.items():
        assert b.block_hash == h
    for r in sched.waiting:
        assert r.status in (RequestStatus.WAITING, RequestStatus.PREEMPTED)
        assert r.num_computed_tokens == 0
    assert len(sched.waiting) + len(sched.running) == len(sched.requests)


VOCAB = 30                        # small, so that stop tokens are actually hit


@st.composite
def workloads(draw):
    block_size = draw(st.sampled_from([1, 2, 4, 8]))
    max_model_len = draw(st.integers(8, 80))
    chunked = draw(st.booleans())
    budget = (draw(st.integers(1, 48)) if chunked
              else max_model_len + draw(st.integers(0, 16)))
    cfg = dict(block_size=block_size, max_model_len=max_model_len, chunked=chunked,
               budget=budget, num_blocks=draw(st.integers(2, 40)),
               max_num_seqs=draw(st.integers(1, 8)), policy=draw(st.sampled_from(
                   ["fcfs", "priority"])), caching=draw(st.booleans()))
    prefixes = [[1000 * g + i for i in range(90)] for g in range(3)]
    reqs = []
    for i in range(draw(st.integers(1, 10))):
        prefix = prefixes[draw(st.integers(0, 2))][:draw(st.integers(0, 40))]
        tail = draw(st.lists(st.integers(10, 999), max_size=20))
        prompt = (prefix + tail) or [7]
        params = dict(max_tokens=draw(st.one_of(st.none(), st.integers(1, 20))),
                      stop_token_ids=draw(st.lists(st.integers(10, VOCAB - 1), max_size=2)),
                      ignore_eos=draw(st.booleans()))
        params["min_tokens"] = draw(st.integers(0, params["max_tokens"] or 5))
        reqs.append(dict(rid=f"r{i}", prompt=prompt, params=params,
                         priority=draw(st.integers(0, 3)), arrival_step=draw(st.integers(0, 8)),
                         n=draw(st.sampled_from([1, 1, 1, 2, 3])),
                         abort_step=draw(st.one_of(st.none(), st.integers(0, 30)))))
    return cfg, reqs


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workloads(), st.booleans())
def test_random_workloads_run_to_completion_with_invariants(workload, async_mode) -> None:
    """Outputs equal the single-request reference, synchronously or with async scheduling
    (each step scheduled before the previous step's output is applied)."""
    cfg, specs = workload
    sched = make_scheduler(**cfg)
    bs, capacity = cfg["block_size"], (cfg["num_blocks"] - 1) * cfg["block_size"]
    runner = KVSimRunner(bs, vocab=VOCAB)
    expected: dict[str, tuple[list[int], str]] = {}
    aborts: dict[int, list[str]] = {}
    arrivals: dict[int, list[Request]] = {}
    for spec in specs:
        for k in range(spec["n"]):
            rid = f"{spec['rid']}-{k}" if spec["n"] > 1 else spec["rid"]
            sp = SamplingParams(**spec["params"])
            sp.eos_token_ids = [11]
            r = Request(rid, spec["prompt"], sp, arrival_time=float(spec["arrival_step"]),
                        priority=spec["priority"],
                        parent_id=spec["rid"] if spec["n"] > 1 else None)
            arrivals.setdefault(spec["arrival_step"], []).append(r)
            if spec["abort_step"] is not None:
                aborts.setdefault(spec["abort_step"], []).append(rid)
            expected[rid] = reference_output(spec["prompt"], sp,
                                             min(cfg["max_model_len"], capacity), vocab=VOCAB)
    tokens: dict[str, list[int]] = {}
    finish: dict[str, str] = {}
    rejected: set[str] = set()
    aborted: set[str] = set()
    last_arrival = max(arrivals)
    in_flight: tuple[SchedulerOutput, ModelRunnerOutput] | None = None
    for step in range(3000):
        for r in arrivals.get(step, []):
            fits = (r.num_prompt_tokens < cfg["max_model_len"]
                    and -(-(r.num_prompt_tokens + 1) // bs) <= cfg["num_blocks"] - 1)
            if fits:
                sched.add_request(r)
            else:
                with pytest.raises(ValueError):
                    sched.add_request(r)
                rejected.add(r.request_id)
        for rid in aborts.get(step, []):
            if rid in sched.requests:
                aborted.add(rid)
            sched.finish_requests(rid, RequestStatus.FINISHED_ABORTED)
        if step > last_arrival and not sched.has_unfinished_requests() and in_flight is None:
            break
        so = sched.schedule()
        check_output(sched, so)
        check_blocks(sched)
        steps = [(so, runner(so))]
        if async_mode:                        # apply the previous step's output only now
            steps, in_flight = ([in_flight] if in_flight else []), (
                None if so.is_empty else steps[0])
            event("async")
        for done_so, done_out in steps:
            for out in sched.update_from_output(done_so, done_out):
                tokens.setdefault(out.req_id, []).extend(out.new_token_ids)
                if out.finished:
                    finish[out.req_id] = out.finish_reason
        check_blocks(sched)
        if so.num_preempted:
            event("preemption")
        if any(n.num_computed_tokens for n in so.scheduled_new_reqs):
            event("prefix-cache hit")
        if any(n.output_token_ids for n in so.scheduled_new_reqs):
            event("resumed after preemption")
    else:
        raise AssertionError("workload did not finish")
    assert sched.kv_cache_manager.usage == 0.0
    for reason in set(finish.values()):
        event(f"finish: {reason}")
    if aborted:
        event("abort")
    for rid, (want, reason) in expected.items():
        if rid in rejected:
            continue
        got = tokens.get(rid, [])
        if rid in aborted:
            assert got == want[:len(got)] and rid not in finish
        else:
            assert (got, finish[rid]) == (want, reason), rid


# ---------------------------------------------------------------------------- async scheduling
def test_async_decode_is_rescheduled_before_its_token_arrives() -> None:
    sched = make_scheduler()
    sched.add_request(req("a", 5, max_tokens=3))
    runner = KVSimRunner(4)
    so1 = sched.schedule()                                         # prefill, samples token 1
    assert so1.sampling_req_ids == {"a"}
    out1 = runner(so1)
    so2 = sched.schedule()                                         # token 1 still in flight
    assert so2.num_scheduled_tokens == {"a": 1} and so2.sampling_req_ids == {"a"}
    r = sched.requests["a"]
    assert (r.num_computed_tokens, r.num_tokens, r.num_output_placeholders) == (6, 5, 2)
    out2 = runner(so2)
    assert sched.update_from_output(so1, out1)[0].new_token_ids == out1.sampled_token_ids["a"]
    assert r.num_output_placeholders == 1
    so3 = sched.schedule()                                         # third and last token
    assert so3.num_scheduled_tokens == {"a": 1}
    out3 = runner(so3)
    sched.update_from_output(so2, out2)
    assert sched.schedule().is_empty              # max_tokens reached counting the one in flight
    outs = sched.update_from_output(so3, out3)
    assert outs[0].finish_reason == "length" and len(r.output_token_ids) == 3
    assert not sched.has_unfinished_requests()


def test_async_output_after_a_stop_token_is_dropped() -> None:
    sched = make_scheduler()
    sched.add_request(req("a", 5, max_tokens=10))
    runner = KVSimRunner(4, script={"a": [50, EOS, 60]})
    so1 = sched.schedule()
    out1 = runner(so1)
    so2 = sched.schedule()
    out2 = runner(so2)
    sched.update_from_output(so1, out1)
    so3 = sched.schedule()                                         # scheduled before EOS is seen
    assert "a" in so3.num_scheduled_tokens
    out3 = runner(so3)
    outs = sched.update_from_output(so2, out2)
    assert outs[0].new_token_ids == [EOS] and outs[0].finish_reason == "stop"
    assert sched.update_from_output(so3, out3) == []                # the extra token is dropped
    assert "a" in sched.schedule().finished_req_ids


def test_async_blocks_are_cached_only_with_known_tokens() -> None:
    sched = make_scheduler(block_size=4)
    sched.add_request(req("a", 7, max_tokens=5))
    runner = KVSimRunner(4)
    so1 = sched.schedule()                                          # 7 prompt tokens
    out1 = runner(so1)
    so2 = sched.schedule()                                          # position 7: in flight
    kv = sched.kv_cache_manager
    assert kv._num_cached_blocks["a"] == 1                          # block 1 holds a placeholder
    sched.update_from_output(so1, out1)
    runner(so2)
    sched.schedule()
    assert kv._num_cached_blocks["a"] == 2                          # now its last token is known


def test_async_preemption_drops_the_token_in_flight() -> None:
    sched = make_scheduler(num_blocks=5, block_size=4, budget=16)   # 4 usable blocks
    sched.add_request(req("a", 8, max_tokens=8))                   # 2 blocks each; the
    sched.add_request(req("b", 8, arrival=1.0, max_tokens=8))      # next token needs a third
    runner = KVSimRunner(4)
    so1 = sched.schedule()
    out1 = runner(so1)
    so2 = sched.schedule()                                          # b must give way
    assert so2.num_preempted == 1 and "b" in so2.finished_req_ids
    b = sched.requests["b"]
    assert b.num_output_placeholders == 0 and b.status == RequestStatus.PREEMPTED
    outs = sched.update_from_output(so1, out1)
    assert [o.req_id for o in outs] == ["a"] and b.output_token_ids == []


def test_snapshot_properties() -> None:
    sched = make_scheduler(num_blocks=9)
    sched.add_request(req("a", 6))
    sched.add_request(req("b", 6, arrival=1.0))
    assert (sched.num_running, sched.num_waiting, sched.kv_cache_usage) == (0, 2, 0.0)
    so = sched.schedule()
    sched.update_from_output(so, KVSimRunner(4)(so))
    assert (sched.num_running, sched.num_waiting) == (2, 0)
    assert sched.kv_cache_usage == pytest.approx(4 / 8)
