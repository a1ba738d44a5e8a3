"""``WorkerProposer``: a proposer that runs in the worker, next to the target model (a draft
model, an EAGLE / EAGLE-3 head). The interface the model runner calls; plugins may add their
own.

Protocol (the engine's ``WorkerDraftSlots`` reserves the draft positions): the scheduler
schedules ``k`` placeholder drafts after a request's last known token and allocates their KV
slots; the runner, at the start of that verification step (no step in flight, so every known
token is in the ``RequestTable``), calls ``propose`` with the scheduled draft count of each
verifying request and verifies what it returns in the same step. Hence a proposer may write
its own KV cache at the positions of the request's known tokens *and* of its drafts: the
target's block table covers them all. Its KV cache is a second tensor set indexed by the
target's block tables and slot mapping (same block size, same number of blocks, counted in
``kv_cache_bytes_per_block``), so a rejected draft's slot is simply written again later, and
blocks shared through prefix caching hold, in the draft cache too, values computed from the
same tokens at the same positions.

Per request, the proposer tracks how many leading positions of its cache are valid; a request
that is (re-)added by the scheduler (new, or resumed after preemption) starts from 0.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar

import torch

from vllm_core.messages import SchedulerOutput

if TYPE_CHECKING:  # pragma: no cover
    from vllm_core.worker.model_runner import ModelRunner


class WorkerProposer(ABC):
    """Drafts for the verifying requests of one step, computed on the worker.

    ``needs_target_hidden``: ``observe_forward`` must see the target's hidden states of every
    forward (an EAGLE head), so a platform may not replay a graph that keeps them internal for
    the steps this proposer verifies."""

    needs_target_hidden: ClassVar[bool] = False

    def kv_cache_bytes_per_block(self) -> int:
        """Bytes of this proposer's KV cache per target block (0: it keeps none)."""
        return 0

    def initialize_cache(self, num_blocks: int) -> None:
        """Allocate the proposer's KV cache for ``num_blocks`` blocks (the target's count)."""

    def update_states(self, so: SchedulerOutput) -> None:
        """Apply the step's request deltas (finished / preempted requests are dropped, new or
        resumed ones start with an empty draft cache)."""

    def observe_forward(self, runner: ModelRunner, plan: object, hidden: object) -> None:
        """Called after every target forward with its plan and hidden states (an EAGLE head
        keeps the states it needs); default: nothing."""

    @abstractmethod
    def propose(self, runner: ModelRunner, counts: dict[str, int]
                ) -> tuple[dict[str, list[int]], dict[str, torch.Tensor]]:
        """Drafts for each request of ``counts`` (exactly ``counts[req_id]`` ids of the
        target's vocabulary), and, for the requests that sample at random, the draft
        distribution each draft was drawn from (float32 ``[counts[req_id], vocab]`` rows; the
        rejection sampler needs it to stay exact). Greedy requests get the draft's argmax and
        no rows."""


def make_worker_proposer(runner: ModelRunner) -> WorkerProposer | None:
    """The worker-side proposer ``runner.config.speculative`` names, loaded (None for a method
    proposed in the engine, such as n-gram lookup)."""
    spec = runner.config.speculative
    if spec is None:
        return None
    if spec.method == "draft_model":
        from vllm_core.spec_decode.draft_model import DraftModelProposer

        return DraftModelProposer.load(runner, spec)
    if spec.method in ("eagle", "eagle3"):
        from vllm_core.spec_decode.eagle import EagleProposer

        return EagleProposer.load(runner, spec)
    return None
