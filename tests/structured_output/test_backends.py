"""Each grammar backend on the default model's tokenizer: matchers accept exactly the
constrained strings, reject others without changing state, roll back, terminate on eos, and
their bitmask agrees with what they accept."""

from __future__ import annotations

import json

import pytest
import torch

from vllm_core.structured_output.backend import UnsupportedConstraint, bitmask_width
from vllm_core.structured_output.manager import backend_class

BACKENDS = ["xgrammar", "guidance", "outlines"]


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request, tokenizer, vocab_size, eos_ids):
    return backend_class(request.param)(tokenizer, vocab_size, eos_ids)


def allowed_ids(grammar, vocab_size: int) -> set[int]:
    mask = torch.zeros(1, bitmask_width(vocab_size), dtype=torch.int32)
    grammar.fill_bitmask(mask, 0)
    bits = (mask[0].unsqueeze(-1) >> torch.arange(32, dtype=torch.int32)) & 1
    return set(bits.flatten()[:vocab_size].nonzero().flatten().tolist())


def ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def test_regex_accepts_match_and_terminates_on_eos(backend, tokenizer, vocab_size, eos_ids):
    g = backend.make_grammar(backend.compile("regex", r"[0-9]{3}-(yes|no)", False))
    first = allowed_ids(g, vocab_size)
    assert first and all(tokenizer.decode([t]).isdigit() for t in first)
    assert g.accept_tokens(ids(tokenizer, "123-yes"))
    assert allowed_ids(g, vocab_size) == {eos_ids[0]}       # complete: only eos
    assert g.accept_tokens(eos_ids)                          # (llguidance: stopped already)
    assert g.is_terminated()


def test_rejected_token_leaves_state_and_rollback_undoes(backend, tokenizer, vocab_size):
    g = backend.make_grammar(backend.compile("regex", r"abc(d|e)f", False))
    toks = ids(tokenizer, "abcdf")
    assert g.accept_tokens(toks[:1])
    before = allowed_ids(g, vocab_size)
    bad = ids(tokenizer, "zzz")
    assert not g.accept_tokens(bad)
    assert allowed_ids(g, vocab_size) == before
    assert g.accept_tokens(toks[1:])
    g.rollback(len(toks) - 1)
    assert allowed_ids(g, vocab_size) == before
    assert g.validate_tokens(toks[1:] + bad) == toks[1:]
    assert allowed_ids(g, vocab_size) == before              # validate leaves state


def test_bitmask_agrees_with_accept(backend, tokenizer, vocab_size):
    g = backend.make_grammar(backend.compile("choice", json.dumps(["Paris", "London"]), False))
    allowed = allowed_ids(g, vocab_size)
    sample = sorted(allowed)[:40] + list(range(0, vocab_size, 997))
    for t in sample:
        ok = g.accept_tokens([t])
        assert ok == (t in allowed), t
        if ok:
            g.rollback(1)


def test_json_schema_walk(backend, tokenizer, vocab_size, eos_ids):
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    g = backend.make_grammar(backend.compile("json", json.dumps(schema), True))
    assert g.accept_tokens(ids(tokenizer, '{"a":42}'))
    assert eos_ids[0] in allowed_ids(g, vocab_size)
    assert not g.accept_tokens(ids(tokenizer, ',"b"'))


@pytest.mark.parametrize("name", BACKENDS)
def test_check_rejects_invalid_regex_with_reason(name):
    with pytest.raises(UnsupportedConstraint, match="regex"):
        backend_class(name).check("regex", "(unclosed")


def test_outlines_refuses_context_free_grammars():
    with pytest.raises(UnsupportedConstraint, match="regular constraints only"):
        backend_class("outlines").check("grammar", 'root ::= "a"')


def test_xgrammar_refuses_keywords_it_would_ignore():
    schema = {"type": "array", "items": {"type": "integer"}, "uniqueItems": True}
    with pytest.raises(UnsupportedConstraint, match="uniqueItems"):
        backend_class("xgrammar").check("json", json.dumps(schema))


@pytest.mark.parametrize("grammar", ['root ::= "yes" | "no"', 'start: "yes" | "no"'])
def test_ebnf_and_lark_grammars(grammar, tokenizer, vocab_size, eos_ids):
    for name in ("xgrammar", "guidance"):
        backend = backend_class(name)(tokenizer, vocab_size, eos_ids)
        backend_class(name).check("grammar", grammar)
        g = backend.make_grammar(backend.compile("grammar", grammar, False))
        assert g.accept_tokens(ids(tokenizer, "yes") + eos_ids) and g.is_terminated()
