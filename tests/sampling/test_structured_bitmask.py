"""Applying grammar bitmasks to logits: xgrammar's kernel and the torch fallback agree with a
reference built bit by bit; rows map to requests by id; padding columns are disallowed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vllm_core.messages import SchedulerOutput
from vllm_core.sampling.structured import (
    apply_grammar_bitmask,
    apply_token_bitmask,
    apply_token_bitmask_torch,
)


def reference_allowed(bitmask: np.ndarray, vocab: int) -> np.ndarray:
    bits = np.unpackbits(bitmask.view(np.uint8), bitorder="little").reshape(len(bitmask), -1)
    out = np.zeros((len(bitmask), vocab), dtype=bool)
    width = min(vocab, bits.shape[1])
    out[:, :width] = bits[:, :width].astype(bool)
    return out


@pytest.mark.parametrize("use_xgrammar", [True, False])
@pytest.mark.parametrize("vocab", [70, 96, 1000])
def test_matches_reference(use_xgrammar, vocab):
    rng = np.random.default_rng(vocab)
    width = (vocab + 31) // 32
    bitmask = rng.integers(-2**31, 2**31 - 1, size=(3, width), dtype=np.int64).astype(np.int32)
    logits = torch.randn(5, vocab)
    original = logits.clone()
    rows = [4, 0, 2]
    apply_token_bitmask(logits, torch.from_numpy(bitmask), rows, use_xgrammar=use_xgrammar)
    allowed = reference_allowed(bitmask, vocab)
    for i, r in enumerate(rows):
        want = torch.where(torch.from_numpy(allowed[i]), original[r], float("-inf"))
        assert torch.equal(logits[r], want)
    for r in (1, 3):
        assert torch.equal(logits[r], original[r])          # rows without a grammar


def test_padded_vocab_beyond_bitmask_is_disallowed():
    logits = torch.zeros(1, 40)
    apply_token_bitmask_torch(logits, torch.full((1, 1), -1, dtype=torch.int32))
    assert torch.isfinite(logits[0, :32]).all() and torch.isinf(logits[0, 32:]).all()


def test_apply_grammar_bitmask_maps_rows_by_request_id():
    vocab = 64
    bitmask = np.zeros((2, 2), dtype=np.int32)
    bitmask[0, 0] = 1 << 3            # "b" may only emit token 3
    bitmask[1, 1] = 1 << 0            # "d" may only emit token 32
    so = SchedulerOutput([], [], {"a": 1, "b": 1, "c": 1, "d": 1}, 4,
                         sampling_req_ids=frozenset("abcd"), grammar_bitmask=bitmask,
                         structured_output_req_ids=["b", "d"])
    logits = torch.randn(4, vocab)
    apply_grammar_bitmask(logits, ["d", "c", "b", "a"], so)
    assert logits.argmax(-1).tolist()[0] == 32 and logits.argmax(-1).tolist()[2] == 3
    assert torch.isfinite(logits[1]).all() and torch.isfinite(logits[3]).all()
    assert torch.isfinite(logits[0]).sum() == 1 and torch.isfinite(logits[2]).sum() == 1


def test_no_bitmask_is_a_no_op():
    so = SchedulerOutput([], [], {"a": 1}, 1, sampling_req_ids=frozenset("a"))
    logits = torch.randn(1, 10)
    before = logits.clone()
    apply_grammar_bitmask(logits, ["a"], so)
    assert torch.equal(logits, before)


@pytest.mark.parametrize("use_xgrammar", [True, False])
def test_rows_match_convention(use_xgrammar):
    bitmask = torch.zeros(3, 1, dtype=torch.int32)
    bitmask[0, 0], bitmask[2, 0] = 1 << 1, 1 << 4
    logits = torch.randn(3, 32)
    before = logits.clone()
    apply_token_bitmask(logits, bitmask, [2, 0], use_xgrammar=use_xgrammar, rows_match=True)
    assert logits.argmax(-1).tolist()[::2] == [1, 4]
    assert torch.equal(logits[1], before[1])


def test_apply_grammar_bitmask_when_every_row_is_constrained():
    bitmask = np.zeros((3, 1), dtype=np.int32)
    bitmask[:, 0] = [1 << 5, 1 << 6, 1 << 7]       # rows for "a", "b", "c" (sorted ids)
    so = SchedulerOutput([], [], {"a": 1, "b": 1, "c": 1}, 3,
                         sampling_req_ids=frozenset("abc"), grammar_bitmask=bitmask,
                         structured_output_req_ids=["a", "b", "c"])
    logits = torch.randn(3, 32)
    apply_grammar_bitmask(logits, ["c", "a", "b"], so)
    assert logits.argmax(-1).tolist() == [7, 5, 6]
    assert (torch.isfinite(logits).sum(-1) == 1).all()
