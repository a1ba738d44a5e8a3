"""The scheduler's view of one request: its tokens, progress and status. Torch-free.

A ``Request`` is created by the engine's input processing and handed to
``Scheduler.add_request``; from then on only the scheduler mutates it. For ``n > 1`` the engine
creates one ``Request`` per child, all sharing ``parent_id`` (and the prompt), so that the
scheduler can make the children share the prompt's KV blocks.
"""

from __future__ import annotations

import enum
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vllm_core.sampling.params import SamplingParams

if TYPE_CHECKING:  # pragma: no cover
    from vllm_core.multimodal.inputs import MultiModalFeatures
    from vllm_core.structured_output.request import StructuredOutputRequest


class RequestStatus(enum.IntEnum):
    """Life cycle: [WAITING_FOR_GRAMMAR ->] WAITING -> RUNNING (-> PREEMPTED -> RUNNING)* ->
    FINISHED_*. A request with structured outputs waits in WAITING_FOR_GRAMMAR (in the waiting
    queue, skipped by admission) until its grammar has compiled.

    Every value above ``PREEMPTED`` is a finished state.
    """

    WAITING_FOR_GRAMMAR = enum.auto()
    WAITING = enum.auto()
    RUNNING = enum.auto()
    PREEMPTED = enum.auto()
    FINISHED_STOPPED = enum.auto()
    FINISHED_LENGTH = enum.auto()
    FINISHED_ABORTED = enum.auto()

    @staticmethod
    def is_finished(status: RequestStatus) -> bool:
        return status > RequestStatus.PREEMPTED

    @staticmethod
    def finish_reason(status: RequestStatus) -> str | None:
        """"stop" / "length" / "abort" for a finished status, None for an unfinished one."""
        return _FINISH_REASONS.get(status)


_FINISH_REASONS = {
    RequestStatus.FINISHED_STOPPED: "stop",
    RequestStatus.FINISHED_LENGTH: "length",
    RequestStatus.FINISHED_ABORTED: "abort",
}


@dataclass(slots=True, eq=False)
class Request:
    """One sequence to generate. Requests compare (and hash) by identity.

    Token bookkeeping: ``all_token_ids == prompt_token_ids + output_token_ids`` always;
    ``num_computed_tokens`` of them have their KV in the cache (advanced by the scheduler when it
    schedules them, since steps run in order); ``block_hashes[i]`` is the prefix-cache hash of
    full block ``i`` of ``all_token_ids`` (filled lazily by the KV cache manager).

    ``num_output_placeholders`` counts tokens scheduled to be sampled whose ids have not come
    back yet (steps in flight under async scheduling): the sequence is really
    ``num_tokens + num_output_placeholders`` long for scheduling purposes.
    ``max_model_len`` may be left None here; ``Scheduler.add_request`` fills it. ``max_tokens``
    resolves ``sampling_params.max_tokens`` (None means "up to max_model_len").
    ``stop_token_ids`` (stop_token_ids plus eos unless ignored) is computed from
    ``sampling_params`` here and again by ``Scheduler.add_request``; params must be final
    (eos ids filled) by then.
    """

    request_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    arrival_time: float = field(default_factory=time.time)
    priority: int = 0                      # lower value is served first (policy "priority")
    lora_id: int = 0
    cache_salt: str | None = None
    parent_id: str | None = None           # shared by the children of one n > 1 request
    max_model_len: int | None = None
    structured_output: StructuredOutputRequest | None = None   # grammar state, if constrained
    mm_features: MultiModalFeatures | None = None   # images (vllm_core.multimodal.inputs)

    status: RequestStatus = field(default=RequestStatus.WAITING, init=False)
    output_token_ids: list[int] = field(default_factory=list, init=False)
    all_token_ids: list[int] = field(default_factory=list, init=False)
    num_computed_tokens: int = field(default=0, init=False)
    num_cached_tokens: int = field(default=-1, init=False)   # prefix hits at first scheduling
    stop_reason: int | str | None = field(default=None, init=False)
    block_hashes: list[bytes] = field(default_factory=list, init=False)
    num_preemptions: int = field(default=0, init=False)
    stop_token_ids: frozenset[int] = field(default=frozenset(), init=False)
    num_prompt_logprobs_sent: int = field(default=0, init=False)
    sent_first_output: bool = field(default=False, init=False)
    arrival_seq: int = field(default=0, init=False)          # tie-break, set by the scheduler
    num_output_placeholders: int = field(default=0, init=False)  # sampled, not yet received
    # draft tokens proposed for the next step (speculative decoding); consumed by schedule()
    spec_token_ids: list[int] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        if not self.request_id:
            raise ValueError("request_id must be a non-empty string")
        if len(self.prompt_token_ids) == 0:
            raise ValueError(f"prompt_token_ids must not be empty (request {self.request_id!r})")
        if not isinstance(self.priority, int):
            raise ValueError(f"priority must be an integer, got {self.priority!r}")
        self.prompt_token_ids = list(self.prompt_token_ids)
        self.all_token_ids = list(self.prompt_token_ids)
        self.stop_token_ids = frozenset(self.sampling_params.all_stop_token_ids)

    # ------------------------------------------------------------------ sizes
    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.all_token_ids)

    @property
    def max_tokens(self) -> int:
        """Output tokens allowed: params.max_tokens, else max_model_len - prompt length."""
        if self.sampling_params.max_tokens is not None:
            return self.sampling_params.max_tokens
        if self.max_model_len is None:
            return sys.maxsize
        return max(self.max_model_len - self.num_prompt_tokens, 0)

    # ------------------------------------------------------------------ state
    @property
    def is_finished(self) -> bool:
        return RequestStatus.is_finished(self.status)

    @property
    def finish_reason(self) -> str | None:
        return RequestStatus.finish_reason(self.status)

    def append_output_token_ids(self, token_ids: int | list[int]) -> None:
        if isinstance(token_ids, int):
            token_ids = [token_ids]
        self.output_token_ids.extend(token_ids)
        self.all_token_ids.extend(token_ids)
