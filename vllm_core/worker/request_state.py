"""Per-request state the model runner keeps between steps (the worker side of the seam)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from vllm_core.sampling.metadata import RequestSamplingState
    from vllm_core.sampling.params import SamplingParams


@dataclass(slots=True)
class CachedRequestState:
    """What a worker remembers of a request.

    Invariants: ``token_ids == prompt_token_ids + output_token_ids`` (outputs appended by the
    runner as it samples them); ``num_computed_tokens`` is the scheduler's count at the start of
    the current step; ``block_ids`` is the full block table.
    """

    req_id: str
    prompt_token_ids: list[int]
    output_token_ids: list[int]
    token_ids: list[int]
    sampling_params: SamplingParams
    block_ids: list[int]
    num_computed_tokens: int
    generator: torch.Generator | None = None
    lora_id: int = 0
    sampling_state: RequestSamplingState | None = None   # kept across steps (token cache)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    def append_output(self, token_id: int) -> None:
        self.output_token_ids.append(token_id)
        self.token_ids.append(token_id)
