"""Sampler: statistical checks of the distributions, greedy, seeds, masks, penalties, logprobs."""

from __future__ import annotations

import math

import pytest
import torch

from vllm_core.sampling.sampler import Sampler, compute_prompt_logprobs

V = 12
N = 40_000  # rows sampled at once: one batched call gives N independent draws


def _logits(seed: int = 0, vocab: int = V) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(vocab, generator=g) * 2.0


def _sample_many(make_state, build, logits_row: torch.Tensor, n: int = N,
                 **params: object) -> torch.Tensor:
    states = [make_state(**params)] * n   # unseeded: rows share one (stateless) state
    md = build(states, logits_row.numel())
    return Sampler()(logits_row.expand(n, -1).clone(), md).token_ids


def _assert_matches(samples: torch.Tensor, expected: torch.Tensor) -> None:
    """Chi-square goodness of fit over the support of ``expected``; nothing outside it."""
    counts = torch.bincount(samples, minlength=expected.numel()).double()
    support = expected > 0
    assert counts[~support].sum() == 0, "sampled a token with zero probability"
    n = counts.sum()
    exp_counts = expected[support].double() * n
    chi2 = ((counts[support] - exp_counts) ** 2 / exp_counts).sum().item()
    df = int(support.sum()) - 1
    # mean df, sd sqrt(2 df): 6 sd above the mean is a ~1e-6 false alarm rate.
    assert chi2 < df + 6 * math.sqrt(2 * max(df, 1)), (chi2, df)


def test_greedy_is_argmax(make_state, build):
    logits = torch.randn(5, 50)
    md = build([make_state(temperature=0.0) for _ in range(5)], 50)
    assert md.all_greedy
    out = Sampler()(logits.clone(), md)
    assert torch.equal(out.token_ids, logits.argmax(-1))


def test_temperature_distribution(make_state, build):
    row = _logits(1)
    samples = _sample_many(make_state, build, row, temperature=0.7)
    _assert_matches(samples, torch.softmax(row / 0.7, -1))


def test_top_k_support_and_renormalisation(make_state, build):
    row = _logits(2)
    samples = _sample_many(make_state, build, row, top_k=3)
    top = row.topk(3).indices
    expected = torch.zeros(V)
    expected[top] = torch.softmax(row[top], -1)
    _assert_matches(samples, expected)


def test_top_p_minimal_nucleus(make_state, build):
    probs = torch.tensor([0.05, 0.5, 0.15, 0.3])
    row = probs.log()
    # p=0.75: {0.5, 0.3} (mass 0.8) is the smallest set reaching 0.75.
    samples = _sample_many(make_state, build, row, top_p=0.75)
    _assert_matches(samples, torch.tensor([0.0, 0.5, 0.0, 0.3]) / 0.8)
    # p=0.85: needs the 0.15 token too.
    samples = _sample_many(make_state, build, row, top_p=0.85)
    _assert_matches(samples, torch.tensor([0.0, 0.5, 0.15, 0.3]) / 0.95)


def test_top_k_then_top_p_on_renormalised(make_state, build):
    probs = torch.tensor([0.4, 0.3, 0.2, 0.1])
    # top_k=2 keeps {0.4, 0.3} -> renormalised {4/7, 3/7}; top_p=0.5 keeps only 4/7.
    samples = _sample_many(make_state, build, probs.log(), top_k=2, top_p=0.5)
    assert torch.all(samples == 0)
    samples = _sample_many(make_state, build, probs.log(), top_k=3, top_p=0.8)
    _assert_matches(samples, torch.tensor([0.4, 0.3, 0.2, 0.0]) / 0.9)


def test_min_p_threshold(make_state, build):
    probs = torch.tensor([0.5, 0.3, 0.12, 0.08])
    # min_p=0.2: threshold 0.1 of the max -> drops 0.08 only.
    samples = _sample_many(make_state, build, probs.log(), min_p=0.2)
    _assert_matches(samples, torch.tensor([0.5, 0.3, 0.12, 0.0]) / 0.92)


def test_mixed_rows_in_one_batch(make_state, build):
    """Greedy, temperature, top-k and unfiltered rows in one call: each row its own law."""
    row = _logits(3)
    n = 6000
    kinds = [dict(temperature=0.0), dict(top_k=2), dict(temperature=1.0), dict(top_p=0.9)]
    states = [make_state(**kinds[i % 4]) for i in range(4 * n)]
    md = build(states, V)
    assert not md.all_greedy and not md.all_random
    tokens = Sampler()(row.expand(4 * n, -1).clone(), md).token_ids
    assert torch.all(tokens[0::4] == row.argmax())
    assert set(tokens[1::4].tolist()) <= set(row.topk(2).indices.tolist())
    _assert_matches(tokens[2::4], torch.softmax(row, -1))


def test_seeded_rows_reproducible_across_batches(make_state, build):
    """A seeded request samples the same sequence whatever its neighbours and row."""
    vocab = 200
    logits = torch.randn(8, vocab)

    def run(batch_size: int, row: int, seed: int) -> list[int]:
        tokens = []
        states = [make_state(temperature=1.0, seed=None) for _ in range(batch_size)]
        states[row] = make_state(temperature=1.0, top_k=50, top_p=0.95, seed=seed)
        for step in range(8):
            batch = torch.randn(batch_size, vocab)
            batch[row] = logits[step]
            out = Sampler()(batch, build(states, vocab)).token_ids
            tokens.append(int(out[row]))
        return tokens

    ref = run(1, 0, seed=7)
    assert run(5, 3, seed=7) == ref
    assert run(9, 8, seed=7) == ref
    assert run(3, 1, seed=8) != ref


def test_penalties_hand_computed(make_state, build):
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0, -2.0, 1.0]])
    st = make_state(prompt=[0, 4], output=[2, 2, 3], temperature=0.0, repetition_penalty=2.0,
                    presence_penalty=0.5, frequency_penalty=0.25)
    md = build([st], 6)
    work = logits.clone()
    from vllm_core.sampling.sampler import apply_penalties
    apply_penalties(work, md)
    # repetition over prompt+output {0, 2, 3, 4}: positive / 2, negative * 2.
    # then output counts {2: 2, 3: 1}: - 0.25 * count - 0.5 * present.
    expected = torch.tensor([[1.0, -1.0, 0.25 - 0.5 - 0.5, 1.5 - 0.25 - 0.5, -4.0, 1.0]])
    torch.testing.assert_close(work, expected)


def test_penalties_only_touch_their_rows(make_state, build):
    logits = torch.randn(3, 10)
    states = [make_state(temperature=0.0), make_state(temperature=0.0, output=[1, 1],
                                                      frequency_penalty=2.0),
              make_state(temperature=0.0)]
    md = build(states, 10)
    work = logits.clone()
    from vllm_core.sampling.sampler import apply_penalties
    apply_penalties(work, md)
    assert torch.equal(work[0], logits[0]) and torch.equal(work[2], logits[2])
    assert work[1, 1] == pytest.approx(float(logits[1, 1]) - 4.0)


def test_logit_bias_and_allowed_tokens(make_state, build):
    logits = torch.zeros(3, 8)
    logits[:, 0] = 5.0
    states = [make_state(temperature=0.0, logit_bias={6: 10.0}),
              make_state(temperature=0.0, allowed_token_ids=[2, 3]),
              make_state(temperature=0.0)]
    logits[1, 3] = 1.0
    out = Sampler()(logits.clone(), build(states, 8)).token_ids
    assert out.tolist() == [6, 3, 0]


def test_allowed_tokens_random_rows_stay_inside(make_state, build):
    row = _logits(4)
    samples = _sample_many(make_state, build, row, n=5000, allowed_token_ids=[1, 5, 7])
    assert set(samples.tolist()) <= {1, 5, 7}


def test_bad_words_single_and_multi_token(make_state, build):
    logits = torch.zeros(2, 10)
    logits[:, 4] = 9.0
    logits[:, 5] = 8.0
    # Single-token bad word [4] is always banned; [7, 5] bans 5 only after 7.
    params = dict(temperature=0.0)
    s_prefix = make_state(output=[1, 7], **params)
    s_no_prefix = make_state(output=[1, 2], **params)
    for s in (s_prefix, s_no_prefix):
        s.params.bad_words_token_ids = [[4], [7, 5]]
    out = Sampler()(logits.clone(), build([s_prefix, s_no_prefix], 10)).token_ids
    assert out.tolist()[1] == 5
    assert out.tolist()[0] not in (4, 5)


def test_min_tokens_bans_eos_and_stop_ids_until_reached(make_state, build):
    logits = torch.zeros(3, 6)
    logits[:, 2] = 10.0   # eos
    logits[:, 3] = 9.0    # stop token id
    logits[:, 1] = 1.0
    early = make_state(output=[0], temperature=0.0, min_tokens=3, stop_token_ids=[3])
    done = make_state(output=[0, 0, 0], temperature=0.0, min_tokens=3, stop_token_ids=[3])
    ignore = make_state(output=[0], temperature=0.0, min_tokens=3, ignore_eos=True)
    for s in (early, done, ignore):
        s.params.eos_token_ids = [2]
    out = Sampler()(logits.clone(), build([early, done, ignore], 6)).token_ids
    assert out.tolist() == [1, 2, 2]   # ignore_eos: eos is not a stop token, so not banned


def test_logprobs_are_raw_log_softmax_with_ranks(make_state, build):
    logits = torch.randn(4, 30)
    states = [make_state(temperature=0.8, logprobs=5, presence_penalty=1.0, output=[1, 2]),
              make_state(temperature=0.0, logprobs=2, logit_bias={7: 3.0}),
              make_state(temperature=1.2, top_k=4),
              make_state(temperature=0.0, logprobs=0)]
    md = build(states, 30)
    assert md.max_num_logprobs == 5
    out = Sampler()(logits.clone(), md)
    raw = torch.log_softmax(logits, -1)
    lp = out.logprobs
    assert lp.token_ids.shape == (4, 6) and lp.logprobs.shape == (4, 6)
    assert torch.equal(lp.token_ids[:, 0], out.token_ids)
    torch.testing.assert_close(lp.logprobs[:, 0], raw.gather(1, out.token_ids[:, None])[:, 0])
    top = raw.topk(5)
    assert torch.equal(lp.token_ids[:, 1:], top.indices)
    torch.testing.assert_close(lp.logprobs[:, 1:], top.values)
    order = raw.argsort(-1, descending=True)
    expected_ranks = (order == out.token_ids[:, None]).float().argmax(-1) + 1
    assert torch.equal(lp.ranks, expected_ranks)
    rows = lp.to_logprobs_list([5, 2, None, 0])
    assert [len(r.token_ids) for r in rows] == [6, 3, 6, 1]
    assert rows[1].ranks == [int(lp.ranks[1]), 1, 2]


def test_no_logprobs_when_none_asked(make_state, build):
    md = build([make_state(), make_state(temperature=0.0)], 10)
    assert md.max_num_logprobs is None
    assert Sampler()(torch.randn(2, 10), md).logprobs is None


def test_compute_prompt_logprobs():
    logits = torch.randn(5, 20)
    targets = torch.tensor([3, 0, 19, 7, 7])
    lp = compute_prompt_logprobs(logits, targets, 3)
    raw = torch.log_softmax(logits, -1)
    assert torch.equal(lp.token_ids[:, 0], targets)
    torch.testing.assert_close(lp.logprobs[:, 0], raw[torch.arange(5), targets])
    assert torch.equal(lp.token_ids[:, 1:], raw.topk(3).indices)
    assert torch.equal(lp.ranks, (raw > raw[torch.arange(5), targets][:, None]).sum(-1) + 1)


def _reference_keep(row: torch.Tensor, k: int, p: float) -> set[int]:
    """Tokens kept by top-k then top-p, one row, computed the plain way (full sort)."""
    order = row.argsort(descending=True).tolist()
    if k:
        order = order[:k]
    probs = torch.softmax(row[order], -1).tolist()
    kept, mass = [], 0.0
    for tok, pr in zip(order, probs, strict=True):
        if p < 1.0 and mass >= p:
            break
        kept.append(tok)
        mass += pr
    return set(kept)


@pytest.mark.parametrize("vocab", [50, 3000])
def test_top_k_top_p_masks_match_reference(make_state, build, vocab):
    """All code paths (top-k only, top-k covering top-p, CPU candidates, full sort) agree
    with a plain per-row reference, including a flat row whose nucleus exceeds 1024 tokens."""
    from vllm_core.sampling.sampler import apply_top_k_top_p

    g = torch.Generator().manual_seed(vocab)
    logits = torch.randn(6, vocab, generator=g) * 3
    logits[5] = torch.randn(vocab, generator=g) * 0.01      # nearly flat
    settings = [(0, 1.0), (5, 1.0), (20, 0.9), (0, 0.5), (0, 1.0), (0, 0.95)]
    for subset in (settings, settings[:3], settings[:4]):
        states = [make_state(top_k=k, top_p=p) for k, p in subset]
        md = build(states, vocab)
        rows = logits[:len(subset)]
        out = apply_top_k_top_p(rows.clone(), md.top_k, md.max_top_k, md.top_p,
                                md.top_p_within_top_k)
        for i, (k, p) in enumerate(subset):
            kept = set(torch.nonzero(out[i] > float("-inf")).flatten().tolist())
            assert kept == _reference_keep(rows[i], k, p), (vocab, i, k, p)


@pytest.mark.parametrize("method", ["race", "inverse_cdf"])
def test_sampling_kernels_are_exact(method):
    """Both samplers (exponential race for accelerators, inverse CDF on the CPU) draw from
    probs exactly, never pick zero-probability tokens, and honour per-row generators."""
    from vllm_core.sampling.sampler import exponential_race, inverse_cdf_sample

    fn = exponential_race if method == "race" else inverse_cdf_sample
    probs = torch.tensor([0.0, 0.1, 0.0, 0.45, 0.25, 0.2, 0.0])
    samples = fn(probs.expand(N, -1).clone(), {})
    _assert_matches(samples, probs)
    batch = torch.rand(4, 100).softmax(-1)

    def seeded(row: int) -> int:
        gens = {row: torch.Generator().manual_seed(3)}
        b = torch.rand(4, 100).softmax(-1)
        b[row] = batch[0]
        return int(fn(b, gens)[row])

    assert len({seeded(r) for r in range(4)}) == 1


def test_chunked_argmax_takes_the_first_maximum_like_argmax():
    from vllm_core.sampling.sampler import ARGMAX_CHUNK, chunked_argmax, first_argmax

    gen = torch.Generator().manual_seed(0)
    for rows in (1, 3, 8):
        # few distinct values: maxima tie inside a chunk and across chunks
        x = torch.randint(0, 4, (rows, 6 * ARGMAX_CHUNK), generator=gen).float()
        assert torch.equal(chunked_argmax(x), x.argmax(dim=-1))
        assert torch.equal(first_argmax(x), x.argmax(dim=-1))
    x = torch.zeros(2, 3 * ARGMAX_CHUNK)
    x[0, 300] = x[0, 700] = 1.0                 # tie across chunks: the first one wins
    x[1, 5] = x[1, 6] = 2.0                     # tie inside a chunk
    assert chunked_argmax(x).tolist() == [300, 5]
