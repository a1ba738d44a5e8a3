"""Beam search bookkeeping: one step by hand, eos handling, length penalty, exhaustive parity."""

from __future__ import annotations

import itertools
import math

import pytest

from vllm_core.messages import Logprobs
from vllm_core.sampling.beam_search import (
    BeamSearchParams,
    BeamSearchSequence,
    beam_search_step,
    candidates_from_logprobs,
    finalize_beams,
    is_search_done,
)

EOS = 0


def test_params_validation():
    with pytest.raises(ValueError, match="beam_width"):
        BeamSearchParams(beam_width=0, max_tokens=4)
    with pytest.raises(ValueError, match="max_tokens"):
        BeamSearchParams(beam_width=2, max_tokens=0)
    assert BeamSearchParams(beam_width=3, max_tokens=4).num_logprobs == 6


def test_candidates_dedupe_chosen_token():
    lp = Logprobs(token_ids=[5, 5, 2], logprobs=[-0.1, -0.1, -2.0], ranks=[1, 1, 2])
    assert candidates_from_logprobs(lp) == {5: -0.1, 2: -2.0}


def test_one_step_keeps_best_and_completes_eos():
    params = BeamSearchParams(beam_width=2, max_tokens=10)
    beams = [BeamSearchSequence(tokens=[7], cum_logprob=-1.0),
             BeamSearchSequence(tokens=[8], cum_logprob=-1.5)]
    tops = [{EOS: -0.1, 3: -0.5, 4: -3.0}, {5: -0.1, 6: -0.2}]
    step = beam_search_step(beams, tops, params, EOS)
    # ranking: [7,eos] -1.1, [7,3] -1.5, [8,5] -1.6, [8,6] -1.7, ...
    assert [s.tokens for s in step.completed] == [[7, EOS]]
    assert step.completed[0].finish_reason == "stop"
    assert [s.tokens for s in step.live] == [[7, 3], [8, 5]]
    assert step.live[1].cum_logprob == pytest.approx(-1.6)
    assert len(step.live[0].logprobs) == 1 and 3 in step.live[0].logprobs[0]
    assert beams[0].tokens == [7]   # inputs untouched


def test_low_ranked_eos_is_dropped_and_ignore_eos():
    params = BeamSearchParams(beam_width=1, max_tokens=10)
    beams = [BeamSearchSequence()]
    step = beam_search_step(beams, [{1: -0.1, EOS: -0.5}], params, EOS)
    assert step.completed == [] and [s.tokens for s in step.live] == [[1]]
    ignore = BeamSearchParams(beam_width=1, max_tokens=10, ignore_eos=True)
    step = beam_search_step(beams, [{EOS: -0.1, 1: -0.5}], ignore, EOS)
    assert step.completed == [] and [s.tokens for s in step.live] == [[EOS]]


def test_max_tokens_completes_with_length():
    params = BeamSearchParams(beam_width=2, max_tokens=2)
    beams = [BeamSearchSequence(tokens=[4], cum_logprob=-0.5)]
    step = beam_search_step(beams, [{5: -0.1, 6: -0.3}], params, EOS)
    assert step.live == []
    assert [(s.tokens, s.finish_reason) for s in step.completed] == [([4, 5], "length"),
                                                                      ([4, 6], "length")]


def test_length_penalty_score_and_finalize_order():
    short = BeamSearchSequence(tokens=[3, EOS], cum_logprob=-2.0, finish_reason="stop")
    long = BeamSearchSequence(tokens=[3, 4, 5, EOS], cum_logprob=-4.5, finish_reason="stop")
    # eos not counted: lengths 1 and 3.
    assert short.score(1.0, EOS) == pytest.approx(-2.0)
    assert long.score(1.0, EOS) == pytest.approx(-1.5)
    assert long.score(0.0, EOS) == pytest.approx(-4.5)
    p1 = BeamSearchParams(beam_width=1, max_tokens=5, length_penalty=1.0)
    p0 = BeamSearchParams(beam_width=1, max_tokens=5, length_penalty=0.0)
    assert finalize_beams([], [short, long], p1, EOS).sequences == [long]
    assert finalize_beams([], [short, long], p0, EOS).sequences == [short]


def _toy_logprobs(prefix: tuple[int, ...], vocab: int) -> dict[int, float]:
    """A deterministic 'model': next-token logprobs depend on the prefix."""
    weights = [math.sin(1.7 * (len(prefix) + 1) * (t + 1) + sum(prefix) * 0.9) * 2
               for t in range(vocab)]
    z = math.log(sum(math.exp(w) for w in weights))
    return {t: w - z for t, w in enumerate(weights)}


@pytest.mark.parametrize("length_penalty", [0.0, 1.0, 2.0])
def test_wide_beam_equals_exhaustive_search(length_penalty):
    vocab, max_tokens = 3, 3
    params = BeamSearchParams(beam_width=vocab ** max_tokens, max_tokens=max_tokens,
                              length_penalty=length_penalty)
    live, completed = [BeamSearchSequence()], []
    while live:
        step = beam_search_step(live, [_toy_logprobs(tuple(b.tokens), vocab) for b in live],
                                params, EOS)
        completed += step.completed
        live = step.live
    best = finalize_beams(live, completed, params, EOS).sequences[0]

    # Exhaustive: every sequence that stops at its first eos, or runs to max_tokens.
    def score(seq: tuple[int, ...]) -> float:
        cum = sum(_toy_logprobs(seq[:i], vocab)[seq[i]] for i in range(len(seq)))
        length = len(seq) - (1 if seq[-1] == EOS else 0)
        return cum / max(length, 1) ** length_penalty

    seqs = set()
    for full in itertools.product(range(vocab), repeat=max_tokens):
        seqs.add(full[:full.index(EOS) + 1] if EOS in full else full)
    expected = max(seqs, key=score)
    assert tuple(best.tokens) == expected
    assert best.score(length_penalty, EOS) == pytest.approx(score(expected))


def test_search_done_when_live_cannot_win():
    params = BeamSearchParams(beam_width=1, max_tokens=10)
    done = [BeamSearchSequence(tokens=[2, EOS], cum_logprob=-0.2, finish_reason="stop")]
    worse_live = [BeamSearchSequence(tokens=[1, 1], cum_logprob=-3.0)]
    better_live = [BeamSearchSequence(tokens=[1, 1], cum_logprob=-0.1)]
    assert is_search_done(worse_live, done, params, EOS)
    assert not is_search_done(better_live, done, params, EOS)
    assert is_search_done([], [], params, EOS)
