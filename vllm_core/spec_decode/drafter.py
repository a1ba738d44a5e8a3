"""``Drafter``: the engine's step hook that gives running requests their draft tokens.

Called by the engine between ``update_from_output`` of one step and ``schedule()`` of the
next, only when no step is in flight (drafts follow the last *known* token). Torch-free.

Which requests get drafts: running requests in the decode state (every known token but the
last computed, no placeholder), without a grammar (structured-output requests are verified
one token at a time: their bitmask covers one row), with ``k`` capped so that the accepted run
plus the target's own token can exceed neither ``max_tokens`` nor the maximum sequence length.
No request gets drafts in a step where more than ``config.max_batch_size`` requests run (at
large batch verification costs more than it saves).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vllm_core.engine.request import Request, RequestStatus
from vllm_core.spec_decode.config import SpeculativeConfig
from vllm_core.spec_decode.proposer import Proposer, make_proposer

_NO_TOKENS = np.zeros(0, dtype=np.int64)


class Drafter:
    def __init__(self, config: SpeculativeConfig, proposer: Proposer | None = None) -> None:
        self.config = config
        self.proposer = proposer or make_proposer(config)

    def active(self, num_running: int) -> bool:
        """Whether a step with ``num_running`` running requests speculates."""
        limit = self.config.max_batch_size
        return limit is None or num_running <= limit

    def propose(self, requests: Sequence[Request], max_seq_len: int) -> int:
        """Set ``spec_token_ids`` of the eligible ``requests``; returns the drafts proposed."""
        if not self.active(len(requests)):
            return 0
        k = self.config.num_speculative_tokens
        total = 0
        for request in requests:
            num_tokens = len(request.all_token_ids)
            if (request.status != RequestStatus.RUNNING or request.num_output_placeholders
                    or request.num_computed_tokens != num_tokens - 1
                    or request.structured_output is not None):
                continue
            room = min(k, request.max_tokens - len(request.output_token_ids) - 1,
                       max_seq_len - num_tokens - 1)
            if room <= 0:
                continue
            tokens = (np.asarray(request.all_token_ids, dtype=np.int64)
                      if self.proposer.needs_token_ids else _NO_TOKENS)
            drafts = self.proposer.propose(tokens, room)
            if len(drafts):
                request.spec_token_ids = drafts.tolist()
                total += len(drafts)
        return total
