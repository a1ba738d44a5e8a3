"""``PagedDraftProposer``: the set-up shared by the worker proposers that run a model of their
own over a paged KV cache (the draft model, the EAGLE heads).

Each owns a ``DraftCache`` shaped like its layers (the target's block count and block size),
the token budget of one of its forwards (the target's ``max_num_batched_tokens``), per request
the number of leading positions its cache holds valid (``computed``), and the per-request draft
generators of seeded sampling requests (``generators``; see ``DraftChooser``). Finished or
preempted requests are forgotten; a (re-)added request starts at ``resume_position``.
``draft_checkpoint`` is the check-and-locate step of their ``load``; ``request_arrays`` and
``draft_runs`` the first and last steps of their ``propose``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from vllm_core.messages import NewRequestData, SchedulerOutput
from vllm_core.spec_decode.config import SpeculativeConfig
from vllm_core.spec_decode.draft_forward import DraftCache
from vllm_core.spec_decode.worker_proposer import WorkerProposer

if TYPE_CHECKING:  # pragma: no cover
    from vllm_core.worker.model_runner import ModelRunner


def draft_checkpoint(runner: ModelRunner, spec: SpeculativeConfig) -> str:
    """The local path of ``spec.model`` (downloaded or resolved as the target's would be).
    ValueError when the target is sharded: worker proposers run on one rank only."""
    from vllm_core.model_executor.hub import locate_model
    from vllm_core.model_executor.loader import resolve_model

    if runner.parallel.world_size > 1:
        raise ValueError(f"speculative_config method {spec.method!r} needs "
                         f"tensor_parallel_size = pipeline_parallel_size = 1")
    return resolve_model(locate_model(spec.model))


class PagedDraftProposer(WorkerProposer):
    """A worker proposer with ``num_layers`` layers of paged KV (``num_kv_heads`` x
    ``head_dim``, ``dtype`` or the FP8 KV dtype the engine's cache config names)."""

    def __init__(self, runner: ModelRunner, num_layers: int, num_kv_heads: int,
                 head_dim: int, dtype: torch.dtype) -> None:
        from vllm_core.attention.kv_cache_dtype import kv_cache_torch_dtype

        self.dtype = dtype
        self.device = runner.device
        self.cache = DraftCache(runner.attn_backend, runner.block_size, num_layers,
                                num_kv_heads, head_dim,
                                kv_cache_torch_dtype(runner.config.cache.kv_cache_dtype,
                                                     dtype), runner.device)
        self.budget = int(runner.config.scheduler.max_num_batched_tokens or 2048)
        self.computed: dict[str, int] = {}        # valid leading positions of the draft cache
        self.generators: dict[str, torch.Generator] = {}

    def kv_cache_bytes_per_block(self) -> int:
        return self.cache.bytes_per_block()

    def initialize_cache(self, num_blocks: int) -> None:
        self.cache.allocate(num_blocks)

    def resume_position(self, new: NewRequestData) -> int:
        """Where the cache of a (re-)added request counts as valid up to (default 0: all of
        it is recomputed)."""
        return 0

    def forget(self, req_id: str) -> None:
        """Drop a finished / preempted request's state (subclasses extend it)."""
        self.computed.pop(req_id, None)
        self.generators.pop(req_id, None)

    def update_states(self, so: SchedulerOutput) -> None:
        for req_id in so.finished_req_ids:
            self.forget(req_id)
        for new in so.scheduled_new_reqs:          # new, or resumed after preemption
            self.computed[new.req_id] = self.resume_position(new)

    def request_arrays(self, runner: ModelRunner, counts: dict[str, int]
                       ) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
        """``(req_ids, slots, known, done)`` of the requests of ``counts``: their
        request-table slots, known token counts and valid leading draft-cache positions."""
        table = runner.table
        req_ids = list(counts)
        n = len(req_ids)
        slots = np.fromiter((table.slot_of[r] for r in req_ids), dtype=np.int64, count=n)
        known = table.num_tokens[slots].copy()
        done = np.fromiter((self.computed.get(r, 0) for r in req_ids), dtype=np.int64, count=n)
        return req_ids, slots, known, done

    @staticmethod
    def draft_runs(counts: dict[str, int], req_ids: list[str], first: torch.Tensor,
                   chooser: Any, step: Callable[[int, np.ndarray, torch.Tensor], torch.Tensor]
                   ) -> tuple[dict[str, list[int]], dict[str, torch.Tensor]]:
        """``propose``'s result: ``first`` [n] is draft 1 of every request; for ``j = 1 ..``
        ``step(j, active, previous)`` returns the draft logits of the requests ``active``
        (indices into ``req_ids`` that want more than ``j`` drafts) fed their previous drafts
        ``previous``, and ``chooser`` (a ``DraftChooser``) picks draft ``j + 1`` from them."""
        want = np.fromiter((counts[r] for r in req_ids), dtype=np.int64, count=len(req_ids))
        columns = [first]
        for j in range(1, int(want.max())):
            active = np.flatnonzero(want > j)
            rows = torch.from_numpy(active).to(first.device)
            drafted = chooser.choose(step(j, active, columns[-1][rows]).float(), active)
            full = torch.full_like(first, -1)
            full[rows] = drafted
            columns.append(full)
        ids = torch.stack(columns, dim=1).cpu().numpy()
        drafts = {r: ids[i, :counts[r]].tolist() for i, r in enumerate(req_ids)}
        return drafts, chooser.probs_by_request(counts)
