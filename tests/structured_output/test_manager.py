"""StructuredOutputManager: validation and backend choice (auto explains refusals), the
compiled-grammar cache, bitmask rows only for sampling requests with an active grammar, and the
reasoning gate (grammar applies after the reasoning section ends)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from vllm_core.config import StructuredOutputsConfig
from vllm_core.messages import SchedulerOutput
from vllm_core.structured_output.manager import StructuredOutputManager
from vllm_core.structured_output.params import StructuredOutputsParams as S


@pytest.fixture
def manager(tokenizer, vocab_size, eos_ids):
    m = StructuredOutputManager(StructuredOutputsConfig(), tokenizer, vocab_size, eos_ids)
    yield m
    m.shutdown()


def test_params_need_exactly_one_constraint():
    with pytest.raises(ValueError, match="exactly one"):
        S()
    with pytest.raises(ValueError, match="exactly one"):
        S(regex="a", choice=["b"])
    with pytest.raises(ValueError, match="choice"):
        S(choice=[])
    with pytest.raises(ValueError, match="not valid JSON"):
        S(json="{nope")


def test_auto_prefers_xgrammar_and_falls_back_with_reason(manager):
    assert manager.prepare(S(json={"type": "object"})) == "xgrammar"
    p = S(json={"type": "object", "properties": {"n": {"type": "integer", "multipleOf": 3}}})
    assert manager.prepare(p) == "guidance" and p.backend == "guidance"


def test_refusal_names_every_backend_reason(manager):
    with pytest.raises(ValueError) as e:
        manager.prepare(S(json={"type": "array", "uniqueItems": True}))
    assert "xgrammar:" in str(e.value) and "guidance:" in str(e.value)
    assert "uniqueItems" in str(e.value)


def test_invalid_schema_names_field(manager):
    with pytest.raises(ValueError, match=r"structured_outputs\.json is not a valid JSON schema"):
        manager.prepare(S(json={"type": "object", "properties": {"a": {"type": "nope"}}}))


def test_configured_backend_is_used(tokenizer, vocab_size, eos_ids):
    m = StructuredOutputManager(StructuredOutputsConfig(backend="outlines"), tokenizer,
                                vocab_size, eos_ids)
    assert m.prepare(S(regex="[a-z]+")) == "outlines"
    with pytest.raises(ValueError, match="outlines: .*context-free"):
        m.prepare(S(grammar='root ::= "a"'))
    m.shutdown()


def test_compile_is_cached_by_key(manager):
    a = manager.submit(S(regex="[0-9]+"), [1, 2])
    b = manager.submit(S(regex="[0-9]+"), [3])
    c = manager.submit(S(regex="[0-9]+", disable_any_whitespace=True), [3])
    assert a.future is b.future and a.future is not c.future
    a.future.result(timeout=60)
    c.future.result(timeout=60)
    assert manager.stats.num_compiled == 2 and manager.stats.num_cache_hits == 1
    assert a.is_ready() and b.is_ready() and a.grammar is not b.grammar   # own matchers


@dataclass
class FakeRequest:
    structured_output: object


def _so(sampling: set[str]) -> SchedulerOutput:
    return SchedulerOutput([], [], {r: 1 for r in sampling}, len(sampling),
                           sampling_req_ids=frozenset(sampling))


def test_bitmask_rows_only_for_sampling_requests_with_grammar(manager, tokenizer):
    reqs = {"a": FakeRequest(manager.submit(S(choice=["yes", "no"]), [1])),
            "b": FakeRequest(None),
            "c": FakeRequest(manager.submit(S(regex="[0-9]"), [1]))}
    for r in reqs.values():
        if r.structured_output is not None:
            r.structured_output.future.result(timeout=60)
            assert r.structured_output.is_ready()
    so = _so({"a", "b"})
    manager.attach_bitmask(so, reqs)
    assert so.structured_output_req_ids == ["a"]
    assert so.grammar_bitmask.shape == (1, manager.width)
    assert so.grammar_bitmask.dtype == np.int32
    allowed = np.unpackbits(so.grammar_bitmask.view(np.uint8), bitorder="little")
    texts = {tokenizer.decode([int(t)]) for t in np.nonzero(allowed)[0]}
    assert texts and all("yes".startswith(t) or "no".startswith(t) for t in texts)
    none = _so({"b"})
    manager.attach_bitmask(none, reqs)
    assert none.grammar_bitmask is None and none.structured_output_req_ids == []


def test_reasoning_gate_delays_the_grammar(tokenizer, vocab_size, eos_ids):
    m = StructuredOutputManager(StructuredOutputsConfig(reasoning_parser="deepseek_r1"),
                                tokenizer, vocab_size, eos_ids)
    req = m.submit(S(choice=["yes", "no"]), tokenizer.encode("Question? <think>\n"))
    req.future.result(timeout=60)
    assert req.is_ready() and not req.active
    thinking = tokenizer.encode("hmm, maybe </think>", add_special_tokens=False)
    for t in thinking[:-1]:
        assert req.accept(t)                    # free text: not fed to the grammar
        assert not req.active
    assert req.accept(thinking[-1]) and req.active
    yes = tokenizer.encode("yes", add_special_tokens=False)
    assert req.accept(yes[0])
    assert not req.accept(tokenizer.encode("zzz", add_special_tokens=False)[0])
    # a template that closed an empty think block: the grammar applies from the start
    closed = m.submit(S(choice=["yes"]), tokenizer.encode("Q <think>\n\n</think>\n\n"))
    closed.future.result(timeout=60)
    assert closed.is_ready() and closed.active
    m.shutdown()


def test_batch_fill_equals_row_by_row(manager, tokenizer):
    """xgrammar's parallel batch fill (used from 8 rows up) gives the rows one by one would."""
    import torch

    from vllm_core.structured_output.xgrammar_backend import BATCH_FILL_MIN_ROWS

    n = BATCH_FILL_MIN_ROWS + 3
    reqs = {f"r{i}": FakeRequest(manager.submit(S(regex=f"{'ab'[i % 2]}[0-9]{{{i + 1}}}"), [1]))
            for i in range(n)}
    for r in reqs.values():
        r.structured_output.future.result(timeout=60)
        r.structured_output.is_ready()
    first = tokenizer.encode("a", add_special_tokens=False)
    reqs["r0"].structured_output.accept(first[0])            # one row past its start
    so = _so(set(reqs))
    manager.attach_bitmask(so, reqs)
    for row, req_id in enumerate(so.structured_output_req_ids):
        single = torch.zeros(1, manager.width, dtype=torch.int32)
        reqs[req_id].structured_output.grammar.fill_bitmask(single, 0)
        assert np.array_equal(so.grammar_bitmask[row], single[0].numpy()), req_id


def test_depends_on_step_only_for_grammar_requests_sampling_in_both(manager):
    reqs = {"g": FakeRequest(manager.submit(S(regex="[0-9]+"), [1])), "p": FakeRequest(None)}
    assert manager.depends_on_step(_so({"g", "p"}), reqs, _so({"g"}))
    assert not manager.depends_on_step(_so({"g", "p"}), reqs, _so({"p"}))   # g: new this step
    assert not manager.depends_on_step(_so({"p"}), reqs, _so({"g", "p"}))
