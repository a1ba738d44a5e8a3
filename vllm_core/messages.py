"""The two messages that cross the scheduler/worker seam. Torch-free by contract.

The scheduler sends ``SchedulerOutput`` each step: full data for requests the workers have not
seen (or that were preempted and are resumed), deltas for the others. Workers keep persistent
per-request state keyed by request id and answer with ``ModelRunnerOutput``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from vllm_core.multimodal.inputs import ImageItem, MultiModalFeatures
    from vllm_core.sampling.params import SamplingParams


@dataclass(slots=True)
class NewRequestData:
    """First time a request reaches the workers (or resumed after recompute preemption).

    ``block_ids`` is the whole block table; ``num_computed_tokens`` tokens of
    ``prompt_token_ids + output_token_ids`` are already in the KV cache (prefix-cache hits).
    ``output_token_ids`` is non-empty only for a resumed request, whose earlier outputs are
    recomputed as part of its "prompt".
    """

    req_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    block_ids: list[int]
    num_computed_tokens: int
    output_token_ids: list[int] = field(default_factory=list)
    lora_id: int = 0
    mm_features: MultiModalFeatures | None = None     # images (vllm_core.multimodal.inputs)


@dataclass(slots=True)
class CachedRequestData:
    """A request the workers already hold: blocks appended this step and the computed count.

    ``new_token_ids`` (pipeline micro-batching only, else empty): the request's output tokens
    from position ``max(num_computed_tokens, len(prompt))`` on, all known to the scheduler;
    a rank appends those past what it holds (ranks other than the sampling rank get the
    sampled ids this way, not through a broadcast at the end of every step)."""

    req_id: str
    new_block_ids: list[int]
    num_computed_tokens: int
    new_token_ids: list[int] = field(default_factory=list)


@dataclass(slots=True)
class SchedulerOutput:
    """One step's plan.

    Invariants: every scheduled request appears in exactly one of ``scheduled_new_reqs`` /
    ``scheduled_cached_reqs`` and in ``num_scheduled_tokens`` with a count >= 1;
    ``total_num_scheduled_tokens`` is their sum and <= max_num_batched_tokens;
    ``finished_req_ids`` (finished or aborted since the last step, or preempted) must be dropped
    from worker state before this step runs. A request samples a token this step iff its
    computed + scheduled tokens reach its full sequence length, counting tokens still being
    sampled by a step in flight; ``sampling_req_ids`` lists exactly those requests.

    Async scheduling: a step may be scheduled while the previous one still runs. A request in
    ``sampling_req_ids`` of step N that is scheduled again in step N+1 gets one token there whose
    id the workers hold but the scheduler does not know yet (a placeholder); the workers feed
    that token themselves. At most one step is in flight.

    Pipeline micro-batching (``ParallelConfig.max_concurrent_batches > 1``): up to that many
    steps are in flight, with disjoint requests (no placeholders are scheduled over); their
    outputs are applied in submission order, and ``CachedRequestData.new_token_ids`` carries
    the tokens sampled since a request's previous step.

    Structured outputs: ``grammar_bitmask`` (numpy int32 ``[len(structured_output_req_ids),
    ceil(vocab_size / 32)]``, or None) constrains the next token of the requests in
    ``structured_output_req_ids``: row ``i`` belongs to request ``structured_output_req_ids[i]``,
    which is in ``sampling_req_ids``; bit ``t % 32`` of word ``t // 32`` is 1 iff token ``t`` is
    allowed. The runner applies it to those requests' logit rows before sampling
    (``vllm_core.sampling.structured.apply_grammar_bitmask``). It is built after all earlier
    steps' tokens are known, even under async scheduling: there the engine launches the step
    with ``defer_sampling`` (the runner runs the forward and stops before sampling), collects
    the step in flight (advancing the matchers), attaches the bitmask while the device runs the
    forward, then calls the executor's ``sample_tokens`` to finish the step. An executor
    without that second phase gets the bitmask before the launch (the step in flight collected
    first).

    Speculative decoding: ``scheduled_spec_decode_tokens[req_id]`` are the ``k`` draft tokens
    scheduled after the request's last known token (they are the last ``k`` of its
    ``num_scheduled_tokens``); such a request is in ``sampling_req_ids`` and the runner
    returns 1 to ``k + 1`` tokens for it: the accepted prefix of the drafts, then one token
    sampled by the target. A step with drafts is never scheduled while a step is in flight.
    """

    scheduled_new_reqs: list[NewRequestData]
    scheduled_cached_reqs: list[CachedRequestData]
    num_scheduled_tokens: dict[str, int]
    total_num_scheduled_tokens: int
    finished_req_ids: set[str] = field(default_factory=set)
    num_preempted: int = 0
    sampling_req_ids: frozenset[str] = frozenset()
    grammar_bitmask: np.ndarray | None = None
    structured_output_req_ids: list[str] = field(default_factory=list)
    scheduled_spec_decode_tokens: dict[str, list[int]] = field(default_factory=dict)
    defer_sampling: bool = False
    # multimodal (engine/encoder_scheduler.py): images to run through the vision encoder
    # before this step's forward, and encoder outputs to drop first (evicted by hash)
    scheduled_encoder_inputs: list[ImageItem] = field(default_factory=list)
    free_encoder_hashes: list[str] = field(default_factory=list)

    @property
    def is_empty(self) -> bool:
        return self.total_num_scheduled_tokens == 0


@dataclass(slots=True)
class Logprobs:
    """Top logprobs of one position: ids[0] is the chosen token, then the top-k by logprob."""

    token_ids: list[int]
    logprobs: list[float]
    ranks: list[int]          # rank of each id in the full distribution (1 = most likely)


@dataclass(slots=True)
class ModelRunnerOutput:
    """What the workers return for one step.

    ``sampled_token_ids[req_id]`` is empty for a request that only advanced a prefill chunk,
    one token for a plain decode, 1 to ``k + 1`` for a request that verified ``k`` drafts;
    ``logprobs[req_id]`` has one entry per sampled token when the request asked for logprobs;
    ``prompt_logprobs[req_id]`` holds entries for the prompt positions scored this step (the
    first prompt token has none, so the first chunk starts at position 1).
    """

    sampled_token_ids: dict[str, list[int]]
    logprobs: dict[str, list[Logprobs]] = field(default_factory=dict)
    prompt_logprobs: dict[str, list[Logprobs]] = field(default_factory=dict)
    expert_load: list[int] | None = None   # MoE: routed (token, expert) pairs per EP rank


EMPTY_MODEL_RUNNER_OUTPUT = ModelRunnerOutput(sampled_token_ids={})


@dataclass(slots=True)
class EngineCoreOutput:
    """What the scheduler reports per request after a step (consumed by the OutputProcessor).

    ``finish_reason`` is "stop" (stop token / eos), "length" (max_tokens or max_model_len) or
    "abort"; ``stop_reason`` is the stop token id that ended it (None for eos or length).
    """

    req_id: str
    new_token_ids: list[int]
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    new_logprobs: list[Logprobs] | None = None
    new_prompt_logprobs: list[Logprobs] | None = None
    num_cached_tokens: int = 0

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None
