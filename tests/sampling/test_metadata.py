"""build_sampling_metadata: flags skip unused features; tensors match the params."""

from __future__ import annotations

from collections import Counter

import torch

from vllm_core.sampling.metadata import make_generator, token_counts


def test_plain_batch_builds_nothing_optional(make_state, build):
    md = build([make_state(), make_state(temperature=0.5)], 100)
    assert md.all_random and not md.all_greedy
    assert md.no_top_k and md.no_top_p and md.no_min_p and md.no_penalties
    assert md.allowed_mask is None and md.banned_token_ids is None and md.logit_bias is None
    assert md.max_num_logprobs is None and md.generators == {}
    torch.testing.assert_close(md.temperature, torch.tensor([1.0, 0.5]))


def test_feature_tensors(make_state, build):
    states = [make_state(top_k=5, seed=3), make_state(temperature=0.0, top_k=7),
              make_state(top_p=0.9, min_p=0.1, logprobs=4), make_state(top_k=500)]
    md = build(states, 100)
    assert md.top_k.tolist() == [5, 100, 100, 100]   # greedy rows and k >= V: off
    assert md.max_top_k == 5
    torch.testing.assert_close(md.top_p, torch.tensor([1.0, 1.0, 0.9, 1.0]))
    torch.testing.assert_close(md.min_p, torch.tensor([0.0, 0.0, 0.1, 0.0]))
    assert list(md.generators) == [0]
    assert md.greedy_mask.tolist() == [False, True, False, False]
    assert md.temperature[1] == 1.0
    assert md.max_num_logprobs == 4


def test_token_counts_match_counter():
    lists = [[1, 1, 3, 9], [], [0, 0, 0], [9, 8, 7, 1]]
    counts = token_counts(lists, 10, torch.device("cpu"))
    for row, toks in zip(counts.tolist(), lists, strict=True):
        c = Counter(toks)
        assert row == [c.get(t, 0) for t in range(10)]


def test_penalties_sparse_and_live_output(make_state, build):
    s = make_state(prompt=[4, 4], output=[2], repetition_penalty=1.5, frequency_penalty=0.5)
    states = [make_state(presence_penalty=1.0, output=[3, 3, 0]), s, make_state()]
    md = build(states, 6)
    pen = md.penalties
    assert pen.rep_index.tolist() == [6 + 4, 6 + 2]          # row 1: prompt {4}, output [2]
    assert pen.rep_factor.tolist() == [1.5, 1.5]
    assert pen.out_index.tolist() == [3, 3, 0, 6 + 2]        # one entry per occurrence
    assert pen.out_presence.tolist() == [1.0, 1.0, 1.0, 0.0]
    assert pen.out_frequency.tolist() == [0.0, 0.0, 0.0, 0.5]
    s.output_token_ids.append(2)   # the runner appends; the next build sees it
    md = build(states, 6)
    assert md.penalties.out_index.tolist() == [3, 3, 0, 8, 8]
    s.output_token_ids.clear()     # a reset list (resumed request) rebuilds the cache
    md = build(states, 6)
    assert md.penalties.out_index.tolist() == [3, 3, 0]


def test_make_generator():
    assert make_generator(None, "cpu") is None
    a, b = make_generator(5, "cpu"), make_generator(5, "cpu")
    assert torch.equal(torch.rand(4, generator=a), torch.rand(4, generator=b))
