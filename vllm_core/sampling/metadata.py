"""Per-request sampling state and the batched tensors the Sampler consumes.

The model runner keeps one ``RequestSamplingState`` per running request (its ``output_token_ids``
is a live list the runner appends to) and, each step, calls ``build_sampling_metadata`` with the
states of the rows that sample, in row order. The builder turns them into a ``SamplingMetadata``:
dense per-row parameter tensors plus sparse / row-subset tensors for the rarely used features.

Cost model: every optional feature is gated by a host-side flag computed from the params, so a
batch that uses only temperature / greedy costs a few small tensor constructions. Penalties are
sparse (one entry per distinct token seen, built with ``torch.unique`` over the concatenated
token ids, never Python loops over tokens); allowed_token_ids builds a ``[R, V]`` mask only for
the ``R`` rows that use it (``token_counts``: one ``scatter_add_``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import chain

import torch

from vllm_core.devices import HOST
from vllm_core.sampling.params import SamplingParams


@dataclass(slots=True)
class RequestSamplingState:
    """What the sampler needs to know about one request across steps.

    ``output_token_ids`` is the request's live list of generated tokens (the runner appends to
    it); ``generator`` is the request's private RNG (``make_generator(params.seed, device)``),
    or None to use the global RNG. Keep one state per request across steps: ``token_cache``
    (filled by the builder when penalties are used) then converts only new tokens each step.
    """

    params: SamplingParams
    prompt_token_ids: list[int]
    output_token_ids: list[int]
    generator: torch.Generator | None = None
    # Host tensors of the token ids, grown incrementally for penalties (see TokenCache).
    token_cache: TokenCache | None = None


class TokenCache:
    """Host int64 tensors of a request's distinct prompt ids and output ids (incremental).

    Only the ids appended since the last call are converted from the Python list, so a
    request that keeps its RequestSamplingState across steps pays O(new tokens) per step.
    """

    __slots__ = ("prompt", "_out", "_len")

    def __init__(self, prompt_token_ids: list[int]) -> None:
        self.prompt = torch.tensor(prompt_token_ids, dtype=torch.int64).unique()
        self._out = torch.empty(64, dtype=torch.int64)
        self._len = 0

    def output(self, output_token_ids: list[int]) -> torch.Tensor:
        n = len(output_token_ids)
        if n < self._len:          # the list was reset (e.g. a resumed request): rebuild
            self._len = 0
        if n > self._len:
            if n > self._out.numel():
                grown = torch.empty(max(n, 2 * self._out.numel()), dtype=torch.int64)
                grown[:self._len] = self._out[:self._len]
                self._out = grown
            self._out[self._len:n] = torch.tensor(output_token_ids[self._len:n],
                                                  dtype=torch.int64)
            self._len = n
        return self._out[:n]


def _cache(state: RequestSamplingState) -> TokenCache:
    if state.token_cache is None:
        state.token_cache = TokenCache(state.prompt_token_ids)
    return state.token_cache


def make_generator(seed: int | None, device: torch.device | str) -> torch.Generator | None:
    """A generator seeded with ``seed`` on ``device``, or None when the request has no seed."""
    if seed is None:
        return None
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed))
    return gen


@dataclass(slots=True)
class RowSubsetTensor:
    """A ``[R, V]`` tensor for the subset ``rows`` (LongTensor[R]) of the batch's rows."""

    rows: torch.Tensor
    values: torch.Tensor


@dataclass(slots=True)
class PenaltyTensors:
    """Penalties as sparse updates over the flattened ``[B * V]`` logits (index = row*V + id).

    ``rep_index`` / ``rep_factor``: (row, token) pairs seen in the row's prompt or output, for
    rows with a repetition penalty, and that row's penalty. ``out_index``: one entry per
    output token occurrence of rows with presence / frequency penalties, with that row's
    ``presence`` and ``frequency``. Indices may repeat: the sampler's updates are written so
    that repeats are harmless (idempotent writes; ``index_add_`` counts occurrences for the
    frequency penalty). Work is proportional to the tokens seen, not to ``B * V``, and
    building needs no sort / unique.
    """

    rep_index: torch.Tensor | None
    rep_factor: torch.Tensor | None
    out_index: torch.Tensor | None
    out_presence: torch.Tensor | None
    out_frequency: torch.Tensor | None


@dataclass(slots=True)
class SamplingMetadata:
    """Batched sampling parameters for ``B`` rows over a vocabulary of ``V``.

    Dense: ``temperature`` float32[B] (1.0 on greedy rows, never 0), ``greedy_mask`` bool[B].
    Optional tensors are None when the flag says no row uses the feature:
    ``top_k`` int64[B] (V on rows without top-k), ``max_top_k`` the host-side max of the
    enabled k's (each < V);
    ``top_p`` float32[B] (1.0 = off), ``top_p_within_top_k`` True when every top-p row also
    has top-k (the sampler then needs no full sort); ``min_p`` float32[B] (0.0 = off).
    ``generators`` maps row index -> that row's generator.
    ``max_num_logprobs``: None when no row asks for logprobs, else the largest k asked.
    Masks: ``allowed_mask`` True = banned (allowed_token_ids), for a row subset;
    ``banned_token_ids`` (rows, cols) pairs to set to -inf (bad words, min_tokens stop ids);
    ``logit_bias`` (rows, cols, values) to add.
    """

    temperature: torch.Tensor
    greedy_mask: torch.Tensor
    all_greedy: bool
    all_random: bool
    top_k: torch.Tensor | None = None
    max_top_k: int = 0
    top_p_within_top_k: bool = False
    top_p: torch.Tensor | None = None
    min_p: torch.Tensor | None = None
    penalties: PenaltyTensors | None = None
    generators: dict[int, torch.Generator] = field(default_factory=dict)
    max_num_logprobs: int | None = None
    allowed_mask: RowSubsetTensor | None = None
    banned_token_ids: tuple[torch.Tensor, torch.Tensor] | None = None
    logit_bias: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    on_host: bool = False             # the tensors live in host memory (host algorithms)

    @property
    def no_top_k(self) -> bool:
        return self.top_k is None

    @property
    def no_top_p(self) -> bool:
        return self.top_p is None

    @property
    def no_min_p(self) -> bool:
        return self.min_p is None

    @property
    def no_penalties(self) -> bool:
        return self.penalties is None


def token_counts(token_lists: list[list[int]], vocab_size: int,
                 device: torch.device) -> torch.Tensor:
    """int32 ``[len(token_lists), vocab_size]`` occurrence counts, built with one scatter_add.

    The rows are concatenated into one flat id tensor; each id's flat index is
    ``row * vocab_size + id``.
    """
    n = len(token_lists)
    counts = torch.zeros(n * vocab_size, dtype=torch.int32, device=device)
    lengths = [len(t) for t in token_lists]
    total = sum(lengths)
    if total:
        ids = torch.tensor(list(chain.from_iterable(token_lists)), dtype=torch.int64,
                           device=device)
        rows = torch.repeat_interleave(torch.arange(n, device=device),
                                       torch.tensor(lengths, device=device),
                                       output_size=total)
        counts.scatter_add_(0, rows * vocab_size + ids,
                            torch.ones(total, dtype=torch.int32, device=device))
    return counts.view(n, vocab_size)


def _bad_word_bans(bad_words: list[list[int]], output: list[int]) -> list[int]:
    """Tokens banned next: a bad word's last token, when its earlier tokens end the output."""
    banned = []
    for word in bad_words:
        if not word:
            continue
        prefix_len = len(word) - 1
        if prefix_len == 0 or (len(output) >= prefix_len
                               and output[len(output) - prefix_len:] == word[:-1]):
            banned.append(word[-1])
    return banned


def build_sampling_metadata(states: list[RequestSamplingState], vocab_size: int,
                            device: torch.device | str,
                            pin_memory: bool = False) -> SamplingMetadata:
    """Batch ``states`` (row i = states[i]) into a SamplingMetadata on ``device``.

    Reads each state's current ``output_token_ids``, so it must be called after the previous
    step's tokens were appended. Token ids in params are assumed validated against the
    vocabulary (``SamplingParams.verify_vocab``). ``pin_memory``: stage the small host
    tensors in pinned memory and copy them without blocking (an accelerator running a step in
    flight would otherwise make a pageable copy wait for it).
    """
    device = torch.device(device)
    params = [s.params for s in states]
    greedy = [p.is_greedy for p in params]
    all_greedy = all(greedy)
    all_random = not any(greedy)

    pin = pin_memory

    def vec(values: list, dtype: torch.dtype) -> torch.Tensor:
        # a pinned source and a non-blocking copy: a pageable copy would wait for the device
        # to finish the step in flight (async scheduling builds this while it runs)
        if pin:
            return torch.tensor(values, dtype=dtype).pin_memory().to(device, non_blocking=True)
        return torch.tensor(values, dtype=dtype, device=device)

    temps = [1.0 if g else p.temperature for p, g in zip(params, greedy, strict=True)]
    md = SamplingMetadata(temperature=vec(temps, torch.float32),
                          greedy_mask=vec(greedy, torch.bool),
                          all_greedy=all_greedy, all_random=all_random,
                          on_host=device == HOST)

    if not all_greedy:
        # Filters only matter on random rows; greedy rows keep them "off".
        rand = [None if g else p for p, g in zip(params, greedy, strict=True)]
        ks = [p.top_k if p is not None and 0 < p.top_k < vocab_size else vocab_size
              for p in rand]
        enabled = [k for k in ks if k < vocab_size]
        if enabled:
            md.top_k = vec(ks, torch.int64)
            md.max_top_k = max(enabled)
        ps = [1.0 if p is None else p.top_p for p in rand]
        if any(v < 1.0 for v in ps):
            md.top_p = vec(ps, torch.float32)
            md.top_p_within_top_k = all(k < vocab_size for k, v in zip(ks, ps, strict=True)
                                        if v < 1.0)
        mps = [0.0 if p is None else p.min_p for p in rand]
        if any(v > 0.0 for v in mps):
            md.min_p = vec(mps, torch.float32)
        md.generators = {i: s.generator for i, (s, p) in enumerate(zip(states, rand, strict=True))
                         if s.generator is not None and p is not None}

    k_list = [p.logprobs for p in params if p.logprobs is not None]
    if k_list:
        md.max_num_logprobs = min(max(k_list), vocab_size)

    _build_penalties(md, states, vocab_size, device)
    _build_masks(md, states, vocab_size, device)
    return md


def _flat_token_index(rows: list[int], tensors: list[torch.Tensor],
                      vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Host int64 ``(row * vocab_size + id, row)`` over the concatenated ``tensors``."""
    ids = torch.cat(tensors)
    lengths = torch.tensor([t.numel() for t in tensors], dtype=torch.int64)
    row_ids = torch.repeat_interleave(torch.tensor(rows, dtype=torch.int64), lengths,
                                      output_size=ids.numel())
    return row_ids * vocab_size + ids, row_ids


def _build_penalties(md: SamplingMetadata, states: list[RequestSamplingState],
                     vocab_size: int, device: torch.device) -> None:
    rep_rows = [i for i, s in enumerate(states) if s.params.repetition_penalty != 1.0]
    out_rows = [i for i, s in enumerate(states)
                if s.params.presence_penalty != 0.0 or s.params.frequency_penalty != 0.0]
    if not rep_rows and not out_rows:
        return
    pen = PenaltyTensors(None, None, None, None, None)
    # Built on the host from the cached host tensors, then moved.
    outputs = {i: _cache(states[i]).output(states[i].output_token_ids)
               for i in set(rep_rows) | set(out_rows)}
    if rep_rows:
        index, rows = _flat_token_index(
            rep_rows + rep_rows,
            [_cache(states[i]).prompt for i in rep_rows] + [outputs[i] for i in rep_rows],
            vocab_size)
        factors = torch.tensor([s.params.repetition_penalty for s in states],
                               dtype=torch.float32)
        pen.rep_index = index.to(device)
        pen.rep_factor = factors[rows].to(device)
    if out_rows:
        index, rows = _flat_token_index(out_rows, [outputs[i] for i in out_rows], vocab_size)
        if index.numel():
            freq = torch.tensor([s.params.frequency_penalty for s in states],
                                dtype=torch.float32)
            pres = torch.tensor([s.params.presence_penalty for s in states],
                                dtype=torch.float32)
            pen.out_index = index.to(device)
            pen.out_presence = pres[rows].to(device)
            pen.out_frequency = freq[rows].to(device)
    md.penalties = pen


def _build_masks(md: SamplingMetadata, states: list[RequestSamplingState], vocab_size: int,
                 device: torch.device) -> None:
    allowed_rows: list[int] = []
    allowed_ids: list[list[int]] = []
    ban_rows: list[int] = []
    ban_cols: list[int] = []
    bias_rows: list[int] = []
    bias_cols: list[int] = []
    bias_vals: list[float] = []
    for i, s in enumerate(states):
        p = s.params
        if p.allowed_token_ids is not None:
            allowed_rows.append(i)
            allowed_ids.append(p.allowed_token_ids)
        if p.logit_bias:
            for tok, bias in p.logit_bias.items():
                bias_rows.append(i)
                bias_cols.append(int(tok))
                bias_vals.append(float(bias))
        if p.min_tokens and len(s.output_token_ids) < p.min_tokens:
            stop_ids = p.all_stop_token_ids
            ban_rows.extend([i] * len(stop_ids))
            ban_cols.extend(stop_ids)
        if p.bad_words_token_ids:
            banned = _bad_word_bans(p.bad_words_token_ids, s.output_token_ids)
            ban_rows.extend([i] * len(banned))
            ban_cols.extend(banned)
    if allowed_rows:
        allowed = token_counts(allowed_ids, vocab_size, device) > 0
        md.allowed_mask = RowSubsetTensor(
            rows=torch.tensor(allowed_rows, dtype=torch.int64, device=device),
            values=~allowed)
    if ban_rows:
        md.banned_token_ids = (torch.tensor(ban_rows, dtype=torch.int64, device=device),
                               torch.tensor(ban_cols, dtype=torch.int64, device=device))
    if bias_rows:
        md.logit_bias = (torch.tensor(bias_rows, dtype=torch.int64, device=device),
                         torch.tensor(bias_cols, dtype=torch.int64, device=device),
                         torch.tensor(bias_vals, dtype=torch.float32, device=device))
