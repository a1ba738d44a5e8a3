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
    """What a worker remembers of a request besides its ``RequestTable`` row (token ids, block
    table, computed count and adapter id live there, as arrays).

    Invariant: ``output_token_ids`` is the live list of sampled tokens (appended by the runner
    as it collects them) that ``sampling_state`` reads for penalties and ``min_tokens``.
    """

    req_id: str
    prompt_token_ids: list[int]
    output_token_ids: list[int]
    sampling_params: SamplingParams
    generator: torch.Generator | None = None
    sampling_state: RequestSamplingState | None = None   # kept across steps (token cache)

    def append_output(self, token_id: int) -> None:
        self.output_token_ids.append(token_id)
