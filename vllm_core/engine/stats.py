"""Statistics the engine produces each step, consumed by stat loggers (Prometheus, log line).

The engine calls every registered ``StatLogger.record`` once per step with a fresh
``IterationStats`` (what happened in that step) and a ``SchedulerStats`` snapshot (state after
it). Loggers must be cheap; they run on the engine thread.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(slots=True)
class SpecDecodingStats:
    """Speculative decoding counters: ``num_drafts`` draft runs verified (one per request per
    step that had drafts), ``num_draft_tokens`` tokens in them, ``num_accepted_tokens`` of
    which the target accepted. Acceptance rate = accepted / draft tokens; mean accepted
    length (tokens emitted per verifying step of a request) = 1 + accepted / drafts."""

    num_drafts: int = 0
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0

    def record(self, num_draft_tokens: int, num_accepted_tokens: int) -> None:
        self.num_drafts += 1
        self.num_draft_tokens += num_draft_tokens
        self.num_accepted_tokens += num_accepted_tokens

    def take(self) -> SpecDecodingStats:
        """The counters so far (then reset)."""
        out = SpecDecodingStats(self.num_drafts, self.num_draft_tokens, self.num_accepted_tokens)
        self.num_drafts = self.num_draft_tokens = self.num_accepted_tokens = 0
        return out

    @property
    def acceptance_rate(self) -> float | None:
        return self.num_accepted_tokens / self.num_draft_tokens if self.num_draft_tokens else None

    @property
    def mean_accepted_length(self) -> float | None:
        return 1 + self.num_accepted_tokens / self.num_drafts if self.num_drafts else None


@dataclass(slots=True)
class SchedulerStats:
    num_running_reqs: int = 0
    num_waiting_reqs: int = 0
    kv_cache_usage: float = 0.0          # fraction of usable blocks in use, 0..1
    prefix_cache_queries: int = 0        # tokens looked up in the prefix cache (this step)
    prefix_cache_hits: int = 0           # of which hits (this step)
    num_preemptions: int = 0             # preemptions in this step
    num_total_blocks: int = 0
    spec_decoding: SpecDecodingStats | None = None   # this step's, when drafts were verified
    lora_running: dict[str, int] = field(default_factory=dict)   # adapter name -> requests
    lora_waiting: dict[str, int] = field(default_factory=dict)

    def add_step_counters(self, other: SchedulerStats) -> None:
        """Add ``other``'s per-step counters (prefix-cache lookups, preemptions, speculative
        decoding) to this one's; the state fields (requests, KV usage) are left alone.
        ``other`` is not modified and shares nothing with ``self`` afterwards."""
        self.prefix_cache_queries += other.prefix_cache_queries
        self.prefix_cache_hits += other.prefix_cache_hits
        self.num_preemptions += other.num_preemptions
        spec = other.spec_decoding
        if spec is None:
            return
        if self.spec_decoding is None:
            self.spec_decoding = copy.copy(spec)
        else:
            self.spec_decoding.num_drafts += spec.num_drafts
            self.spec_decoding.num_draft_tokens += spec.num_draft_tokens
            self.spec_decoding.num_accepted_tokens += spec.num_accepted_tokens


@dataclass(slots=True)
class FinishedRequestStats:
    finish_reason: str
    e2e_latency: float
    num_prompt_tokens: int
    num_generation_tokens: int
    queued_time: float = 0.0
    prefill_time: float = 0.0
    decode_time: float = 0.0


@dataclass(slots=True)
class IterationStats:
    num_prompt_tokens: int = 0           # prompt tokens computed this step (cache hits excluded)
    num_generation_tokens: int = 0       # tokens sampled this step
    time_to_first_tokens: list[float] = field(default_factory=list)
    inter_token_latencies: list[float] = field(default_factory=list)
    finished_requests: list[FinishedRequestStats] = field(default_factory=list)
    step_time: float = 0.0
    expert_load: list[int] | None = None  # MoE: routed (token, expert) pairs per EP rank


class StatLogger(Protocol):
    def record(self, scheduler_stats: SchedulerStats, iteration_stats: IterationStats) -> None:
        ...
