"""The per-step grammar work in batches: ``advance`` feeds a step's tokens to many matchers at
once (xgrammar's batch accept on threads) with the same result as one request at a time; the
reused bitmask buffers never leak a previous step's rows; the runner's staging of the rows in
logits order (reused host memory, a gather) equals the plain scatter."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from vllm_core.config import StructuredOutputsConfig
from vllm_core.engine.request import RequestStatus
from vllm_core.messages import SchedulerOutput
from vllm_core.sampling.structured import BitmaskStaging, stage_grammar_bitmask
from vllm_core.structured_output.manager import StructuredOutputManager
from vllm_core.structured_output.params import StructuredOutputsParams as S


@dataclass
class FakeRequest:
    structured_output: object
    status: RequestStatus = RequestStatus.RUNNING


@pytest.fixture
def manager(tokenizer, vocab_size, eos_ids):
    m = StructuredOutputManager(StructuredOutputsConfig(backend="xgrammar", fill_threads=3),
                                tokenizer, vocab_size, eos_ids)
    yield m
    m.shutdown()


def _so(sampling: set[str]) -> SchedulerOutput:
    return SchedulerOutput([], [], {r: 1 for r in sampling}, len(sampling),
                           sampling_req_ids=frozenset(sampling))


def _requests(manager, n: int) -> dict[str, FakeRequest]:
    reqs = {f"r{i:02d}": FakeRequest(manager.submit(S(regex=r"[a-c]{2,5}-[0-9]{1,3}"), [1]))
            for i in range(n)}
    for r in reqs.values():
        r.structured_output.future.result(timeout=60)
        assert r.structured_output.is_ready()
    return reqs


def _allowed(row: np.ndarray) -> np.ndarray:
    return np.flatnonzero(np.unpackbits(row.view(np.uint8), bitorder="little"))


def test_batch_advance_equals_one_by_one(manager):
    batched, single = _requests(manager, 20), _requests(manager, 20)
    batched["r03"].status = RequestStatus.PREEMPTED      # its token is dropped: not fed
    rng = np.random.default_rng(0)
    for _ in range(6):
        step = _so(set(batched))
        manager.attach_bitmask(step, batched)
        reference = _so(set(single))
        manager.attach_bitmask(reference, single)
        assert np.array_equal(step.grammar_bitmask, reference.grammar_bitmask)
        tokens = {r: [int(rng.choice(_allowed(row)))]
                  for r, row in zip(step.structured_output_req_ids, step.grammar_bitmask)}
        tokens["r05"] = [tokens["r05"][0] ^ 1]            # maybe disallowed: both must agree
        manager.advance(step, tokens, batched)
        assert batched["r03"].structured_output.preaccepted is None
        for req_id, (token,) in tokens.items():
            if req_id == "r03":
                continue
            assert batched[req_id].structured_output.preaccepted is not None
            ok = batched[req_id].structured_output.accept(token)
            assert ok == single[req_id].structured_output.accept(token)
            assert batched[req_id].structured_output.preaccepted is None
        single["r03"].structured_output.accept(tokens["r03"][0])
        batched["r03"].structured_output.accept(tokens["r03"][0])


def test_reused_buffers_reset_terminated_rows(manager, tokenizer):
    reqs = {f"c{i}": FakeRequest(manager.submit(S(choice=["yes"]), [1])) for i in range(10)}
    for r in reqs.values():
        r.structured_output.future.result(timeout=60)
        r.structured_output.is_ready()
    first = _so(set(reqs))
    manager.attach_bitmask(first, reqs)
    for r in reqs.values():                       # every grammar done: rows must be all -1
        for t in tokenizer.encode("yes", add_special_tokens=False) + [tokenizer.eos_token_id]:
            assert r.structured_output.accept(t)
        assert r.structured_output.grammar.is_terminated()
    for _ in range(2):                            # both buffers, holding old rows
        step = _so(set(reqs))
        manager.attach_bitmask(step, reqs)
        assert (step.grammar_bitmask == -1).all()


@pytest.mark.parametrize("order", [["a", "b", "c"], ["c", "a", "b"], ["c", "x", "a", "y"]])
def test_staging_equals_plain_scatter(order):
    rng = np.random.default_rng(1)
    mask = rng.integers(-2**31, 2**31 - 1, size=(3, 5), dtype=np.int64).astype(np.int32)
    so = SimpleNamespace(grammar_bitmask=mask, structured_output_req_ids=["a", "b", "c"])
    expected = np.full((len(order), 5), -1, dtype=np.int32)
    for j, req_id in enumerate(so.structured_output_req_ids):
        if req_id in order:
            expected[order.index(req_id)] = mask[j]
    staging = BitmaskStaging(5, 4, pin_memory=False)
    for _ in range(3):
        host, indices = stage_grammar_bitmask(order, so, staging)
        constrained = [i for i, r in enumerate(order) if r in so.structured_output_req_ids]
        assert torch.equal(host[constrained], torch.from_numpy(expected[constrained]))
        assert (indices if indices is None else sorted(indices)) == (
            None if len(constrained) == len(order) else constrained)
        fresh, _ = stage_grammar_bitmask(order, so)
        assert torch.equal(fresh[constrained], host[constrained])
    assert stage_grammar_bitmask(["x"], so, staging) is None
