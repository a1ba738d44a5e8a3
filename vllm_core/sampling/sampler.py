"""The batched sampler: logits [B, V] + SamplingMetadata -> one token per row (+ logprobs).

Order of operations (each step skipped when no row uses it):

1. raw logprobs = log_softmax(logits) when any row asks for logprobs (the distribution before
   any masking, penalty or temperature: vLLM's default "raw_logprobs");
2. masks: allowed_token_ids (others -> -inf), bad words and min_tokens stop ids (-> -inf),
   logit_bias (added);
3. penalties: repetition (HF semantics: over prompt + output tokens, positive logits divided,
   negative multiplied), then presence and frequency (OpenAI semantics, over output tokens:
   ``logit -= presence * [count > 0] + frequency * count``);
4. greedy rows: argmax. Random rows: divide by temperature, min-p, top-k, top-p, then sample
   without a device->host sync: on accelerators by the exponential race ``argmax(probs / E)``
   with ``E ~ Exponential(1)`` (exact), on the CPU by inverse CDF with one uniform per row
   (exact, and the CPU RNG makes V draws per row the dominant cost). Rows with a generator
   draw their randomness from it, so a seeded request samples the same tokens whatever the
   rest of the batch is and wherever its row sits.

The sampler never calls ``.item()`` / ``.tolist()`` / data-dependent Python branches on device
tensors: everything that decides control flow is a host-side flag in the metadata.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vllm_core.messages import Logprobs
from vllm_core.sampling.metadata import SamplingMetadata


@dataclass(slots=True)
class LogprobsTensors:
    """Logprobs of ``N`` positions: column 0 is the chosen token, columns 1..k the top-k.

    ``token_ids`` int64[N, k+1], ``logprobs`` float32[N, k+1], ``ranks`` int64[N] the rank
    (1 = most likely) of the chosen token in the full distribution.
    """

    token_ids: torch.Tensor
    logprobs: torch.Tensor
    ranks: torch.Tensor

    def to_logprobs_list(self, num_logprobs: list[int | None] | None = None) -> list[Logprobs]:
        """Host-side ``Logprobs`` per row, keeping ``num_logprobs[i]`` top entries of row i.

        A None entry (or no list) keeps all ``k`` columns. Ranks of the top-k columns are 1..k.
        """
        ids = self.token_ids.tolist()
        lps = self.logprobs.tolist()
        ranks = self.ranks.tolist()
        out = []
        for i, (row_ids, row_lps, rank) in enumerate(zip(ids, lps, ranks, strict=True)):
            k = len(row_ids) - 1
            if num_logprobs is not None and num_logprobs[i] is not None:
                k = min(k, num_logprobs[i])
            out.append(Logprobs(token_ids=row_ids[:k + 1], logprobs=row_lps[:k + 1],
                                ranks=[rank] + list(range(1, k + 1))))
        return out


@dataclass(slots=True)
class SamplerOutput:
    """``token_ids`` int64[B]; ``logprobs`` when metadata.max_num_logprobs is not None."""

    token_ids: torch.Tensor
    logprobs: LogprobsTensors | None


def gather_logprobs(logprobs: torch.Tensor, num_logprobs: int,
                    token_ids: torch.Tensor) -> LogprobsTensors:
    """Top ``num_logprobs`` of each row of ``logprobs`` [N, V] plus the row's ``token_ids``."""
    token_ids = token_ids.to(torch.int64)
    chosen = logprobs.gather(-1, token_ids.unsqueeze(-1))
    ranks = (logprobs > chosen).sum(-1) + 1
    if num_logprobs > 0:
        top_lps, top_ids = logprobs.topk(num_logprobs, dim=-1)
        ids = torch.cat([token_ids.unsqueeze(-1), top_ids], dim=-1)
        lps = torch.cat([chosen, top_lps], dim=-1)
    else:
        ids, lps = token_ids.unsqueeze(-1), chosen
    return LogprobsTensors(token_ids=ids, logprobs=lps, ranks=ranks)


def compute_prompt_logprobs(logits: torch.Tensor, target_ids: torch.Tensor,
                            num_logprobs: int) -> LogprobsTensors:
    """Logprobs of prompt positions: row i scores ``target_ids[i]`` (the next prompt token)
    under ``log_softmax(logits[i])``, plus the top ``num_logprobs``."""
    return gather_logprobs(logits.float().log_softmax(-1), num_logprobs, target_ids)


def apply_masks(logits: torch.Tensor, md: SamplingMetadata) -> None:
    """allowed_token_ids, banned ids (bad words / min_tokens) and logit_bias, in place."""
    if md.allowed_mask is not None:
        rows = md.allowed_mask.rows
        logits[rows] = logits[rows].masked_fill(md.allowed_mask.values, float("-inf"))
    if md.banned_token_ids is not None:
        logits.index_put_(md.banned_token_ids,
                          torch.tensor(float("-inf"), dtype=logits.dtype, device=logits.device))
    if md.logit_bias is not None:
        rows, cols, vals = md.logit_bias
        logits.index_put_((rows, cols), vals.to(logits.dtype), accumulate=True)


def apply_penalties(logits: torch.Tensor, md: SamplingMetadata) -> None:
    """Repetition, then presence and frequency penalties, in place (sparse updates).

    Indices repeat (a token seen twice): the repetition and presence updates gather the old
    values first and write the same new value for every repeat, so they apply once; the
    frequency update accumulates, so it applies once per occurrence. ``logits`` must be
    contiguous.
    """
    pen = md.penalties
    if pen is None:
        return
    flat = logits.view(-1)
    if pen.rep_index is not None:
        vals = flat[pen.rep_index]
        factor = pen.rep_factor.to(vals.dtype)
        flat[pen.rep_index] = torch.where(vals > 0, vals / factor, vals * factor)
    if pen.out_index is not None:
        flat[pen.out_index] = flat[pen.out_index] - pen.out_presence.to(flat.dtype)
        flat.index_add_(0, pen.out_index, -pen.out_frequency.to(flat.dtype))


def apply_min_p(logits: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """Mask tokens whose probability is below ``min_p * max_prob`` of their row."""
    probs = logits.softmax(-1)
    threshold = probs.amax(-1, keepdim=True) * min_p.unsqueeze(1)
    return logits.masked_fill(probs < threshold, float("-inf"))


# On the CPU a host check is free: top-p rows without top-k first try these many candidates
# (exact when they hold the nucleus, checked) before falling back to a full sort (a full
# sort of 49k-wide rows costs ~20x a top-256 there).
_CPU_TOP_P_CANDIDATES = (256, 2048)


def apply_top_k_top_p(logits: torch.Tensor, top_k: torch.Tensor | None, max_top_k: int,
                      top_p: torch.Tensor | None, top_p_within_top_k: bool = False,
                      on_host: bool = False) -> torch.Tensor:
    """Keep each row's ``top_k`` best logits, then its minimal nucleus of mass >= ``top_p``.

    ``top_k`` holds V on rows without top-k, ``top_p`` 1.0 on rows without top-p. Each row
    gets a threshold (its smallest kept logit; -inf for rows without filters) and logits
    below it are masked, so ties at the threshold are kept.

    Candidates are the row's best ``C`` logits, sorted descending: ``C = max_top_k`` when
    every top-p row also has top-k (host flag ``top_p_within_top_k``; exact: top-k renormalises over them); otherwise all ``V``
    (one full sort), except on the host (``on_host``) where ``C = 256`` then ``2048`` are tried first, each
    kept only when those candidates hold every top-p row's nucleus. Within candidates: top-k masks ranks >= k;
    probabilities are renormalised over the top-k set (rows with top-k) or the full row;
    a token is kept when the mass of the tokens ranked before it is < p.
    """
    if top_k is None and top_p is None:
        return logits
    vocab = logits.shape[-1]
    if top_p is None and top_k is not None:
        # Rows without top-k carry k = V > max_top_k: their threshold is -inf.
        top_values = logits.topk(max_top_k, dim=-1).values
        threshold = top_values.gather(-1, (top_k - 1).clamp(max=max_top_k - 1).unsqueeze(1))
        threshold = threshold.masked_fill((top_k > max_top_k).unsqueeze(1), float("-inf"))
        return logits.masked_fill(logits < threshold, float("-inf"))

    has_k = top_k < vocab if top_k is not None else None
    if top_k is not None and top_p_within_top_k:
        threshold = _top_k_top_p_threshold(logits, max_top_k, top_k, has_k, top_p)
    else:
        threshold = None
        if on_host:
            for num in _CPU_TOP_P_CANDIDATES:
                if max(num, max_top_k) >= vocab:
                    break
                threshold = _top_k_top_p_threshold(logits, max(num, max_top_k), top_k, has_k,
                                                   top_p, check=True)
                if threshold is not None:
                    break
        if threshold is None:
            threshold = _top_k_top_p_threshold(logits, vocab, top_k, has_k, top_p)
    return logits.masked_fill(logits < threshold, float("-inf"))


def _top_k_top_p_threshold(logits: torch.Tensor, num_cand: int, top_k: torch.Tensor | None,
                           has_k: torch.Tensor | None, top_p: torch.Tensor,
                           check: bool = False) -> torch.Tensor | None:
    """Per-row threshold [B, 1] from the best ``num_cand`` logits (see apply_top_k_top_p).
    With ``check``: None when the candidates miss some top-p row's nucleus."""
    vocab = logits.shape[-1]
    if num_cand >= vocab:
        vals, _ = logits.sort(dim=-1, descending=True)
    else:
        vals = logits.topk(num_cand, dim=-1).values
    ranks = torch.arange(vals.shape[-1], device=logits.device)
    if top_k is not None:
        vals = vals.masked_fill(ranks >= top_k.unsqueeze(1), float("-inf"))
    lse = torch.logsumexp(vals, dim=-1, keepdim=True)
    if num_cand < vocab:
        full_lse = torch.logsumexp(logits, dim=-1, keepdim=True)
        lse = full_lse if has_k is None else torch.where(has_k.unsqueeze(1), lse, full_lse)
    probs = (vals - lse).exp()
    cum = probs.cumsum(dim=-1)
    p = top_p.unsqueeze(1)
    if check and not bool((cum[:, -1:] >= p).logical_or(p >= 1.0).all()):
        return None
    keep = ((cum - probs) < p) | (p >= 1.0)
    keep &= vals > float("-inf")
    threshold = vals.masked_fill(~keep, float("inf")).amin(dim=-1, keepdim=True)
    no_filter = (p >= 1.0) if has_k is None else (p >= 1.0) & ~has_k.unsqueeze(1)
    return threshold.masked_fill(no_filter, float("-inf"))


def exponential_race(probs: torch.Tensor, generators: dict[int, torch.Generator]) -> torch.Tensor:
    """Sample one index per row from ``probs`` [B, V] as ``argmax(probs / E)``, E ~ Exp(1).

    ``E = -log(U)``, ``U ~ Uniform[0, 1)`` (never 0, so no division by zero; ``U = 0`` gives
    ``E = inf``, a lost race). Rows in ``generators`` draw their ``V`` uniforms from their own
    generator, so their samples do not depend on the rest of the batch. ``probs`` is consumed.
    """
    noise = torch.empty_like(probs)
    if len(generators) < probs.shape[0]:
        noise.uniform_()
    for row, gen in generators.items():
        noise[row].uniform_(generator=gen)
    noise.log_().neg_()
    return first_argmax(probs.div_(noise))


ARGMAX_CHUNK = 256


def first_argmax(x: torch.Tensor, on_host: bool = False) -> torch.Tensor:
    """``x.argmax(dim=-1)`` for ``x`` [B, V] (the first index of the maximum, as argmax), in two
    stages over chunks of ``ARGMAX_CHUNK`` columns when V divides: a single-row reduction over a
    vocabulary of 128K runs in one GPU block (~28 us on an H200); chunked, the rows of chunks
    reduce in parallel. Ties resolve the same way: the first chunk holding the maximum, then the
    first index in it."""
    rows, vocab = x.shape
    if on_host or vocab % ARGMAX_CHUNK or rows > 8:
        return x.argmax(dim=-1)
    return chunked_argmax(x)


def chunked_argmax(x: torch.Tensor) -> torch.Tensor:
    """The two-stage ``first_argmax`` (any device; V must be a multiple of ARGMAX_CHUNK)."""
    rows, vocab = x.shape
    chunks = x.view(rows, vocab // ARGMAX_CHUNK, ARGMAX_CHUNK)
    inner = chunks.argmax(dim=-1)                                    # [B, C]
    best = chunks.gather(-1, inner.unsqueeze(-1)).squeeze(-1)        # [B, C]
    chunk = best.argmax(dim=-1, keepdim=True)                        # [B, 1]
    return (chunk * ARGMAX_CHUNK + inner.gather(-1, chunk)).squeeze(-1)


def inverse_cdf_sample(probs: torch.Tensor,
                       generators: dict[int, torch.Generator]) -> torch.Tensor:
    """Sample one index per row from ``probs`` [B, V] with one uniform per row:
    the first index whose cumulative probability exceeds ``U * total``. Zero-probability
    tokens are never chosen. Rows in ``generators`` draw their uniform from it."""
    u = torch.rand(probs.shape[0], 1, device=probs.device)
    for row, gen in generators.items():
        u[row] = torch.rand(1, generator=gen, device=probs.device)
    cum = probs.cumsum(dim=-1)
    idx = torch.searchsorted(cum, u * cum[:, -1:], right=True)
    return idx.clamp_(max=probs.shape[-1] - 1).squeeze(1)


def sample_from_probs(probs: torch.Tensor, generators: dict[int, torch.Generator],
                      on_host: bool = False) -> torch.Tensor:
    """Exact sampling without a host sync. On the CPU, inverse CDF (1 random number per row;
    the CPU RNG is the bottleneck of the race: ~15 ns per number, V numbers per row);
    elsewhere the exponential race (embarrassingly parallel)."""
    if on_host:
        return inverse_cdf_sample(probs, generators)
    return exponential_race(probs, generators)


class Sampler:
    """Stateless batched sampler (see the module docstring for the exact order of operations).

    ``logits`` is float32 [B, V] and is consumed: it may be modified in place.
    """

    def __call__(self, logits: torch.Tensor, metadata: SamplingMetadata) -> SamplerOutput:
        md = metadata
        raw_logprobs = None
        if md.max_num_logprobs is not None:
            raw_logprobs = logits.log_softmax(dim=-1)
        apply_masks(logits, md)
        apply_penalties(logits, md)
        token_ids = self.sample(logits, md)
        logprobs = None
        if raw_logprobs is not None:
            logprobs = gather_logprobs(raw_logprobs, md.max_num_logprobs, token_ids)
        return SamplerOutput(token_ids=token_ids, logprobs=logprobs)

    @staticmethod
    def sample(logits: torch.Tensor, md: SamplingMetadata) -> torch.Tensor:
        """Greedy argmax and/or temperature + min-p + top-k + top-p sampling, per row."""
        greedy = None
        if not md.all_random:
            greedy = first_argmax(logits, md.on_host)
            if md.all_greedy:
                return greedy
        sampled = sample_from_probs(Sampler.probs(logits, md), md.generators, md.on_host)
        if greedy is None:
            return sampled
        return torch.where(md.greedy_mask, greedy, sampled)

    @staticmethod
    def probs(logits: torch.Tensor, md: SamplingMetadata) -> torch.Tensor:
        """The distribution random rows sample from, given masked and penalised ``logits``:
        divide by temperature, then min-p, top-k, top-p, softmax (the speculative verifier
        uses the same function, so both paths sample one distribution)."""
        logits = logits / md.temperature.unsqueeze(1)
        if md.min_p is not None:
            logits = apply_min_p(logits, md.min_p)
        logits = apply_top_k_top_p(logits, md.top_k, md.max_top_k, md.top_p,
                                   md.top_p_within_top_k, md.on_host)
        return logits.softmax(dim=-1)
