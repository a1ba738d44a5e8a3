"""``PagedDraftProposer``: the set-up shared by the worker proposers that run a model of their
own over a paged KV cache (the draft model, the EAGLE heads).

Each owns a ``DraftCache`` shaped like its layers (the target's block count and block size),
the token budget of one of its forwards (the target's ``max_num_batched_tokens``), per request
the number of leading positions its cache holds valid (``computed``), and the per-request draft
generators of seeded sampling requests (``generators``; see ``DraftChooser``). Finished or
preempted requests are forgotten; a (re-)added request starts at ``resume_position``.
``draft_checkpoint`` is the check-and-locate step of their ``load``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

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
