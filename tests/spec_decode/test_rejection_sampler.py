"""The verifier's rejection sampling preserves the target distribution (chi-square over many
seeded draws, with deliberately bad drafts), greedy acceptance, and the emitted-run layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from vllm_core.sampling.metadata import RequestSamplingState, build_sampling_metadata
from vllm_core.sampling.params import SamplingParams
from vllm_core.sampling.sampler import Sampler
from vllm_core.spec_decode.rejection_sampler import rejection_sample

V = 12


def metadata(params: SamplingParams, rows: int, seed: int | None = None):
    gen = None
    if seed is not None:
        gen = torch.Generator().manual_seed(seed)
    state = RequestSamplingState(params, [1, 2], [], gen)
    return build_sampling_metadata([state] * rows, V, "cpu")


def target_probs(logits: torch.Tensor, params: SamplingParams) -> np.ndarray:
    return Sampler.probs(logits.clone(), metadata(params, logits.shape[0])).numpy()


def chi2_pvalue(counts: np.ndarray, probs: np.ndarray) -> float:
    probs = np.asarray(probs, dtype=np.float64)
    expected = probs / probs.sum() * counts.sum()
    return float(chisquare(counts, expected).pvalue)


def pairs(logits: torch.Tensor, num: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``num`` independent requests of two rows each (a draft row, a bonus row): the logits
    repeated and each row's request start."""
    rows = logits.repeat(num, 1)
    return rows, torch.arange(num).repeat_interleave(2) * 2


@pytest.mark.parametrize("params", [
    SamplingParams(temperature=0.8),
    SamplingParams(temperature=1.2, top_k=5),
    SamplingParams(temperature=0.9, top_p=0.7),
    SamplingParams(temperature=1.0, top_k=6, top_p=0.8, min_p=0.05),
])
@pytest.mark.parametrize("draft_kind", ["point", "distribution"])
def test_first_token_distribution_is_the_target(params, draft_kind):
    """One draft per request: the emitted first token follows the target's distribution
    whatever the drafts (half the requests draft the target's *least* likely allowed token,
    or drafts are drawn from a distribution that favours unlikely tokens). Chi-square,
    p > 1e-3, over 8000 independent requests verified in one batch."""
    torch.manual_seed(0)
    logits = torch.randn(2, V) * 2
    p0 = target_probs(logits, params)[0]
    num = 8000
    rows, row_start = pairs(logits, num)
    md = metadata(params, 2 * num)
    draft_probs = None
    if draft_kind == "distribution":
        q_row = torch.softmax(-logits[0] * 2, dim=-1)
        drafts = torch.multinomial(q_row, num, replacement=True)
        draft_probs = torch.stack([q_row, torch.zeros(V)]).repeat(num, 1)
    else:
        bad = int(np.argmin(np.where(p0 > 0, p0, np.inf)))
        drafts = torch.where(torch.arange(num) % 2 == 1, bad, int(np.argmax(p0)))
    draft_ids = torch.stack([drafts, torch.full((num,), -1)], dim=1).reshape(-1)
    out = rejection_sample(rows, md, draft_ids, row_start, draft_probs)
    first = out.token_ids.view(num, 2)[:, 0]
    counts = np.bincount(first.numpy(), minlength=V).astype(np.float64)
    support = p0 > 0
    assert counts[~support].sum() == 0
    assert chi2_pvalue(counts[support], p0[support]) > 1e-3, (counts, p0 * num)


def test_second_token_distribution_after_an_accepted_draft():
    """The token after an accepted draft comes from the next row (conditioning is exact):
    with a point-mass draft d, P(emit d then x) = p0(d) * p1(x); nothing follows a
    rejection."""
    torch.manual_seed(2)
    logits = torch.randn(2, V)
    params = SamplingParams(temperature=1.0)
    p = target_probs(logits, params)
    d = int(np.argmax(p[0]))
    num = 8000
    rows, row_start = pairs(logits, num)
    draft_ids = torch.tensor([d, -1]).repeat(num)
    out = rejection_sample(rows, metadata(params, 2 * num), draft_ids, row_start)
    t = out.token_ids.view(num, 2).numpy()
    accepted = t[:, 0] == d
    assert (t[~accepted, 1] == -1).all() and (t[accepted, 1] >= 0).all()
    rate = accepted.mean()
    assert abs(rate - p[0, d]) < 4 * np.sqrt(p[0, d] * (1 - p[0, d]) / num)
    counts = np.bincount(t[accepted, 1], minlength=V).astype(np.float64)
    assert chi2_pvalue(counts, p[1]) > 1e-3


def test_identical_draft_distribution_is_always_accepted():
    """A draft distributed exactly like the target (a draft model equal to the target) is
    accepted every time."""
    torch.manual_seed(3)
    logits = torch.randn(4, V)
    params = SamplingParams(temperature=0.7, top_k=8)
    q = torch.from_numpy(target_probs(logits, params))
    q[3] = 0
    md = metadata(params, 4)
    for _ in range(300):
        drafts = torch.multinomial(q[:3], 1).squeeze(1)
        out = rejection_sample(logits.clone(), md, torch.cat([drafts, torch.tensor([-1])]),
                               torch.zeros(4, dtype=torch.long), q)
        assert out.token_ids[:3].tolist() == drafts.tolist()
        assert out.token_ids[3] >= 0


def test_greedy_accepts_the_matching_prefix_and_lays_out_runs():
    """Two requests: A verifies 3 drafts (2 match the argmax), B has none (one bonus row)."""
    logits = torch.full((5, V), -5.0)
    best = [3, 4, 5, 6, 7]
    for row, tok in enumerate(best):
        logits[row, tok] = 5.0
    md = metadata(SamplingParams(temperature=0.0), 5)
    drafts = torch.tensor([3, 4, 9, -1, -1])
    out = rejection_sample(logits, md, drafts, torch.tensor([0, 0, 0, 0, 4]))
    assert out.token_ids.tolist() == [3, 4, 5, -1, 7]


def test_seeded_verification_is_reproducible():
    torch.manual_seed(4)
    logits = torch.randn(3, V)
    params = SamplingParams(temperature=1.0, seed=7)

    def run():
        md = metadata(params, 3, seed=7)
        return [rejection_sample(logits.clone(), md, torch.tensor([1, 2, -1]),
                                 torch.zeros(3, dtype=torch.long)).token_ids.tolist()
                for _ in range(20)]

    assert run() == run()
