"""Verification of draft tokens by the target model: exact speculative (rejection) sampling.

Rows: a request that verifies ``k`` drafts has ``k + 1`` consecutive logits rows; row ``j < k``
scores draft ``j`` (the target's distribution *before* it), row ``k`` is the "bonus" row after
the last draft. A request without drafts has one (bonus) row. ``draft_ids[r]`` is the draft a
row verifies, -1 on bonus rows.

Per row, the target distribution ``p`` is exactly what the plain sampler would sample from
(masks, penalties, then temperature, min-p, top-k, top-p: ``Sampler.probs``); the caller builds
each row's metadata from the request's outputs *plus the drafts before that row*, so penalties,
``min_tokens`` and bad words see the same history as without speculation.

- greedy rows: a draft is accepted iff it is the argmax; the row's token is the argmax;
- random rows: draft ``d`` with draft probability ``q(d)`` (1 for a proposer without a
  distribution, such as n-gram lookup) is accepted iff ``u < p(d) / q(d)``, ``u ~ U[0, 1)``;
  otherwise the row's token is drawn from the residual ``max(p - q, 0)`` (normalised). Bonus
  rows draw from ``p``. This emits every token with probability exactly ``p`` (Leviathan et
  al. 2023, Chen et al. 2023), whatever the drafts are.

A request's output is its rows' tokens up to and including its first row whose draft was not
accepted (or the bonus row): ``token_ids`` holds -1 on the rows after it. Rows with a seeded
generator draw their uniforms (then their residual samples) from it, in row order, so a
seeded request's outputs are reproducible for the same drafts.
"""

from __future__ import annotations

import torch

from vllm_core.sampling.metadata import SamplingMetadata
from vllm_core.sampling.sampler import (
    Sampler,
    SamplerOutput,
    apply_masks,
    apply_penalties,
    first_argmax,
    gather_logprobs,
    sample_from_probs,
)


def row_uniforms(num_rows: int, generators: dict[int, torch.Generator],
                 device: torch.device) -> torch.Tensor:
    """One U[0, 1) per row; rows in ``generators`` draw theirs from it."""
    u = torch.rand(num_rows, device=device)
    for row, gen in generators.items():
        u[row] = torch.rand(1, generator=gen, device=device)
    return u


def rejection_sample(logits: torch.Tensor, md: SamplingMetadata, draft_ids: torch.Tensor,
                     row_start: torch.Tensor, draft_probs: torch.Tensor | None = None
                     ) -> SamplerOutput:
    """Verify the drafts of a batch (see the module docstring).

    ``logits`` float32 [L, V] (consumed); ``md`` one row per logits row; ``draft_ids`` int64
    [L]; ``row_start`` int64 [L], the index of the first row of each row's request;
    ``draft_probs`` float32 [L, V] or None (a point mass on each draft). Returns the rows'
    tokens (-1 after each request's emitted run) and, when asked, the raw logprobs of each
    row's token. No host synchronisation.
    """
    raw_logprobs = logits.log_softmax(dim=-1) if md.max_num_logprobs is not None else None
    apply_masks(logits, md)
    apply_penalties(logits, md)
    is_draft = draft_ids >= 0
    safe_ids = draft_ids.clamp(min=0).unsqueeze(1)
    greedy = None if md.all_random else first_argmax(logits, md.on_host)
    if md.all_greedy:
        tokens = greedy
        accepted = is_draft & (greedy == draft_ids)
    else:
        probs = Sampler.probs(logits, md)
        p_draft = probs.gather(1, safe_ids).squeeze(1)
        if draft_probs is None:
            q_draft = torch.ones_like(p_draft)
            residual = probs.scatter(1, safe_ids,
                                     torch.where(is_draft, 0.0, p_draft).unsqueeze(1))
        else:
            q_draft = draft_probs.gather(1, safe_ids).squeeze(1)
            residual = torch.where(is_draft.unsqueeze(1), (probs - draft_probs).clamp_min(0.0),
                                   probs)
        # an all-zero residual means p <= q everywhere, i.e. p == q: the draft is then always
        # accepted, and the row's residual sample is never used
        empty = residual.sum(dim=-1, keepdim=True) <= 0
        residual = torch.where(empty, probs, residual)
        u = row_uniforms(len(draft_ids), md.generators, logits.device)
        accepted = is_draft & (u * q_draft < p_draft)
        recovered = sample_from_probs(residual, md.generators, md.on_host)
        tokens = torch.where(accepted, draft_ids, recovered)
        if greedy is not None:
            tokens = torch.where(md.greedy_mask, greedy, tokens)
            accepted = torch.where(md.greedy_mask, is_draft & (greedy == draft_ids), accepted)
    logprobs = None
    if raw_logprobs is not None:
        logprobs = gather_logprobs(raw_logprobs, md.max_num_logprobs, tokens)
    # a row is emitted iff every earlier row of its request accepted its draft
    rejected = (~accepted).to(torch.int64)
    before = rejected.cumsum(0) - rejected
    emitted = before == before[row_start]
    return SamplerOutput(token_ids=tokens.masked_fill(~emitted, -1), logprobs=logprobs)
