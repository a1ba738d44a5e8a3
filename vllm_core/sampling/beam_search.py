"""Beam search as pure bookkeeping over per-step top logprobs.

``LLM.beam_search`` runs the engine one token per step: every live beam is a separate request
(sharing prefix-cached blocks) asking for ``logprobs = 2 * beam_width`` greedy tokens; the
top logprobs of each beam's next position are fed to ``beam_search_step`` which returns the
next live beams and the newly completed ones. ``finalize_beams`` picks the result.

Scoring (HF ``length_penalty`` semantics): ``score = cum_logprob / L ** length_penalty`` where
``L`` is the number of generated tokens, not counting a final eos token. Live beams are ranked
by ``cum_logprob`` (all live beams of one step have the same length).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from vllm_core.messages import Logprobs
from vllm_core.outputs import Logprob


@dataclass(slots=True)
class BeamSearchParams:
    """``beam_width`` beams, at most ``max_tokens`` generated tokens each."""

    beam_width: int
    max_tokens: int
    ignore_eos: bool = False
    temperature: float = 0.0
    length_penalty: float = 1.0
    # a grammar every beam must follow (a StructuredOutputsParams or its fields as a dict):
    # each step's candidates are the tokens it allows after the beam's tokens
    structured_outputs: Any = None

    def __post_init__(self) -> None:
        if not isinstance(self.beam_width, int) or self.beam_width < 1:
            raise ValueError(f"beam_width must be an integer >= 1, got {self.beam_width!r}")
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ValueError(f"max_tokens must be an integer >= 1, got {self.max_tokens!r}")
        if self.temperature < 0.0:
            raise ValueError(f"temperature must be non-negative, got {self.temperature!r}")
        if isinstance(self.structured_outputs, dict):
            from vllm_core.structured_output.params import StructuredOutputsParams

            self.structured_outputs = StructuredOutputsParams(**self.structured_outputs)

    @property
    def num_logprobs(self) -> int:
        """How many top logprobs each beam's step request must ask for."""
        return 2 * self.beam_width


@dataclass(slots=True)
class BeamSearchSequence:
    """One beam: ``tokens`` are the generated token ids (the prompt is not included);
    ``logprobs`` holds, per generated token, the top logprobs seen at that position."""

    tokens: list[int] = field(default_factory=list)
    logprobs: list[dict[int, Logprob]] = field(default_factory=list)
    cum_logprob: float = 0.0
    text: str | None = None
    finish_reason: str | None = None     # "stop" (eos) | "length" | None while live
    stop_reason: int | None = None

    def score(self, length_penalty: float, eos_token_id: int | None) -> float:
        """``cum_logprob / L ** length_penalty``, L = generated tokens without a final eos."""
        length = len(self.tokens)
        if length and eos_token_id is not None and self.tokens[-1] == eos_token_id \
                and self.finish_reason == "stop":
            length -= 1
        return self.cum_logprob / (max(length, 1) ** length_penalty)


@dataclass(slots=True)
class BeamSearchOutput:
    """The best ``beam_width`` finished sequences of one prompt, best first."""

    sequences: list[BeamSearchSequence]


@dataclass(slots=True)
class BeamStep:
    """Result of one step: the next live beams (at most beam_width) and newly completed ones."""

    live: list[BeamSearchSequence]
    completed: list[BeamSearchSequence]


def candidates_from_logprobs(logprobs: Logprobs) -> dict[int, float]:
    """Token -> logprob of one position from a runner ``Logprobs`` (chosen token deduplicated)."""
    out: dict[int, float] = {}
    for tok, lp in zip(logprobs.token_ids, logprobs.logprobs, strict=True):
        out.setdefault(tok, lp)
    return out


def beam_search_step(beams: Sequence[BeamSearchSequence],
                     top_logprobs: Sequence[Mapping[int, float | Logprob]],
                     params: BeamSearchParams,
                     eos_token_id: int | None) -> BeamStep:
    """Extend every live beam by its candidate tokens and keep the best ``beam_width``.

    ``top_logprobs[i]`` maps candidate token -> logprob for ``beams[i]``'s next position.
    All (beam, token) candidates are ranked by cumulative logprob (ties: beam order, then
    token id). Walking down that ranking: an eos candidate (unless ``ignore_eos``) ranked
    within the first ``beam_width`` completes (``finish_reason="stop"``); any other eos
    candidate is dropped; other candidates become live beams until ``beam_width`` are kept.
    A beam that reaches ``max_tokens`` completes with ``finish_reason="length"``.
    The input beams are not modified.
    """
    if len(beams) != len(top_logprobs):
        raise ValueError(f"top_logprobs has {len(top_logprobs)} entries for {len(beams)} beams")
    cands: list[tuple[float, int, int, float, dict[int, Logprob]]] = []
    for b, (beam, tops) in enumerate(zip(beams, top_logprobs, strict=True)):
        position = {tok: (lp if isinstance(lp, Logprob) else Logprob(float(lp)))
                    for tok, lp in tops.items()}
        for tok, lp in position.items():
            cands.append((beam.cum_logprob + lp.logprob, b, tok, lp.logprob, position))
    cands.sort(key=lambda c: (-c[0], c[1], c[2]))

    live: list[BeamSearchSequence] = []
    completed: list[BeamSearchSequence] = []
    for rank, (cum, b, tok, _, position) in enumerate(cands):
        if len(live) >= params.beam_width:
            break
        parent = beams[b]
        is_eos = eos_token_id is not None and tok == eos_token_id and not params.ignore_eos
        if is_eos and rank >= params.beam_width:
            continue
        seq = BeamSearchSequence(tokens=parent.tokens + [tok],
                                 logprobs=parent.logprobs + [position], cum_logprob=cum)
        if is_eos:
            seq.finish_reason, seq.stop_reason = "stop", None
            completed.append(seq)
        elif len(seq.tokens) >= params.max_tokens:
            seq.finish_reason = "length"
            completed.append(seq)
        else:
            live.append(seq)
    return BeamStep(live=live, completed=completed)


def is_search_done(live: Sequence[BeamSearchSequence], completed: Sequence[BeamSearchSequence],
                   params: BeamSearchParams, eos_token_id: int | None) -> bool:
    """True when no live beam remains, or ``beam_width`` beams completed and the best live
    beam's current score cannot rank above the worst of the best completed ones (HF's
    ``early_stopping=False`` heuristic)."""
    if not live:
        return True
    if len(completed) < params.beam_width:
        return False
    best = sorted((c.score(params.length_penalty, eos_token_id) for c in completed),
                  reverse=True)[:params.beam_width]
    best_live = max(b.score(params.length_penalty, eos_token_id) for b in live)
    return best_live <= best[-1]


def finalize_beams(live: Sequence[BeamSearchSequence], completed: Sequence[BeamSearchSequence],
                   params: BeamSearchParams, eos_token_id: int | None) -> BeamSearchOutput:
    """The best ``beam_width`` of completed beams plus still-live ones (marked "length")."""
    pool = list(completed)
    for beam in live:
        if beam.finish_reason is None:
            beam.finish_reason = "length"
        pool.append(beam)
    pool.sort(key=lambda s: s.score(params.length_penalty, eos_token_id), reverse=True)
    return BeamSearchOutput(sequences=pool[:params.beam_width])
