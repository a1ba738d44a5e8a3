"""The generic torch model runner: persistent request state -> batched inputs -> model ->
sampler. Platform plugins reuse it and override only device specifics.

Per step (``execute_model``): drop finished requests, add new ones, apply block/computed deltas,
order the batch decodes-first (the attention contract), build flat inputs with numpy (loops over
requests, never over tokens), run the model, compute logits only for the rows that sample (and
for prompt-logprob rows), sample, and append the sampled ids to the requests' state.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vllm_core.attention.backend import AttentionBackend, CommonAttentionMetadata
from vllm_core.config import EngineConfig
from vllm_core.messages import (
    EMPTY_MODEL_RUNNER_OUTPUT,
    Logprobs,
    ModelRunnerOutput,
    SchedulerOutput,
)
from vllm_core.logger import init_logger
from vllm_core.sampling.metadata import (
    RequestSamplingState,
    build_sampling_metadata,
    make_generator,
)
from vllm_core.sampling.sampler import Sampler, compute_prompt_logprobs
from vllm_core.sampling.structured import apply_grammar_bitmask
from vllm_core.worker.request_state import CachedRequestState

logger = init_logger(__name__)


@dataclass(slots=True)
class BatchInputs:
    """Flat inputs of one step (host arrays already moved to the device where needed)."""

    order: list[str]                      # request ids in batch order (decodes first)
    input_ids: torch.Tensor               # [T]
    positions: torch.Tensor               # [T]
    common: CommonAttentionMetadata
    sample_rows: list[int]                # batch rows that sample a token this step
    logits_indices: torch.Tensor          # [len(sample_rows)] token index of each sampling row
    query_start_loc: np.ndarray           # host copy


class ModelRunner:
    """Owns the model, the KV cache tensors and the worker-side request state.

    ``device`` is the torch device; ``attn_backend`` the selected backend class; ``ops`` the
    platform's LayerOps (None: the core's torch ops).
    """

    def __init__(self, config: EngineConfig, device: torch.device,
                 attn_backend: type[AttentionBackend], ops: Any | None = None) -> None:
        self.config = config
        self.device = device
        self.attn_backend = attn_backend
        self.ops = ops
        self.block_size = int(config.cache.block_size or attn_backend.preferred_block_size)
        self.dtype: torch.dtype = getattr(torch, config.model.dtype)
        self.requests: dict[str, CachedRequestState] = {}
        self.kv_caches: list[torch.Tensor] = []
        self.sampler = Sampler()
        self.builder = attn_backend.get_builder_cls()(self.block_size, device)
        self.model: torch.nn.Module | None = None
        arch = config.model.arch
        if arch is None:
            raise ValueError("ModelConfig.arch must be resolved before building the runner")
        self.arch = arch

    # ---------------------------------------------------------------- model and cache
    def load_model(self) -> None:
        from vllm_core.model_executor.loader import get_model

        self.model = get_model(self.config.model, self.attn_backend, self.device, self.ops)

    def kv_cache_bytes_per_block(self) -> int:
        shape = self.attn_backend.get_kv_cache_shape(1, self.block_size,
                                                     self.arch.num_key_value_heads,
                                                     self.arch.head_dim)
        per_layer = int(np.prod(shape)) * torch.empty((), dtype=self.kv_cache_dtype).element_size()
        return per_layer * self.arch.num_hidden_layers

    @property
    def kv_cache_dtype(self) -> torch.dtype:
        kv = self.config.cache.kv_cache_dtype
        return self.dtype if kv == "auto" else getattr(torch, kv)

    def initialize_cache(self, num_blocks: int) -> None:
        shape = self.attn_backend.get_kv_cache_shape(num_blocks, self.block_size,
                                                     self.arch.num_key_value_heads,
                                                     self.arch.head_dim)
        self.kv_caches = [torch.zeros(shape, dtype=self.kv_cache_dtype, device=self.device)
                          for _ in range(self.arch.num_hidden_layers)]

    @torch.inference_mode()
    def profile_run(self) -> None:
        """Forward a maximal batch (max_num_batched_tokens tokens) with no KV cache so the
        caller can measure peak activation memory; computes logits for max_num_seqs rows."""
        sched = self.config.scheduler
        num_tokens = int(sched.max_num_batched_tokens or 2048)
        num_reqs = max(1, min(sched.max_num_seqs, num_tokens))
        per_req = [num_tokens // num_reqs] * num_reqs
        per_req[-1] += num_tokens - sum(per_req)
        per_req = [p for p in per_req if p > 0]
        qsl = np.concatenate([[0], np.cumsum(per_req)])
        positions = np.concatenate([np.arange(p) for p in per_req])
        common = self._common_metadata(
            num_sched=np.array(per_req), num_computed=np.zeros(len(per_req), dtype=np.int64),
            query_start_loc=qsl, positions=positions,
            block_table=np.zeros((len(per_req), 1), dtype=np.int64), slot_mapping=positions * 0,
            num_decodes=sum(1 for p in per_req if p == 1))
        input_ids = torch.zeros(num_tokens, dtype=torch.long, device=self.device)
        empty = [torch.empty(0, device=self.device)] * self.arch.num_hidden_layers
        hidden = self.model(input_ids, torch.as_tensor(positions, device=self.device), empty,
                            self.builder.build(common))
        self.model.compute_logits(hidden[: len(per_req)])

    # ---------------------------------------------------------------- state updates
    def _update_states(self, so: SchedulerOutput) -> None:
        for req_id in so.finished_req_ids:
            self.requests.pop(req_id, None)
        for new in so.scheduled_new_reqs:
            outputs = list(new.output_token_ids)
            params = new.sampling_params
            generator = (make_generator(params.seed, self.device)
                         if params.seed is not None and not params.is_greedy else None)
            prompt = list(new.prompt_token_ids)
            self.requests[new.req_id] = CachedRequestState(
                req_id=new.req_id, prompt_token_ids=prompt, output_token_ids=outputs,
                token_ids=prompt + outputs, sampling_params=params,
                block_ids=list(new.block_ids), num_computed_tokens=new.num_computed_tokens,
                generator=generator, lora_id=new.lora_id,
                sampling_state=RequestSamplingState(params, prompt, outputs, generator))
        for cached in so.scheduled_cached_reqs:
            state = self.requests[cached.req_id]
            state.block_ids.extend(cached.new_block_ids)
            state.num_computed_tokens = cached.num_computed_tokens

    # ---------------------------------------------------------------- input preparation
    def _common_metadata(self, *, num_sched: np.ndarray, num_computed: np.ndarray,
                         query_start_loc: np.ndarray, positions: np.ndarray,
                         block_table: np.ndarray, slot_mapping: np.ndarray,
                         num_decodes: int) -> CommonAttentionMetadata:
        seq_lens = num_computed + num_sched
        dev = self.device

        def to_dev(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64)).to(
                dev, non_blocking=True)

        qsl_cpu = torch.from_numpy(query_start_loc.astype(np.int64))
        seq_cpu = torch.from_numpy(seq_lens.astype(np.int64))
        return CommonAttentionMetadata(
            query_start_loc=qsl_cpu.to(dev, non_blocking=True),
            seq_lens=seq_cpu.to(dev, non_blocking=True),
            context_lens=to_dev(num_computed),
            block_table=to_dev(block_table),
            slot_mapping=to_dev(slot_mapping),
            query_start_loc_cpu=qsl_cpu,
            seq_lens_cpu=seq_cpu,
            num_reqs=len(num_sched),
            num_tokens=int(query_start_loc[-1]),
            num_decodes=num_decodes,
            max_query_len=int(num_sched.max()),
            max_seq_len=int(seq_lens.max()),
            block_size=self.block_size,
        )

    def _prepare_inputs(self, so: SchedulerOutput) -> BatchInputs:
        sched = so.num_scheduled_tokens
        decodes = [r for r, n in sched.items() if n == 1]
        prefills = [r for r, n in sched.items() if n > 1]
        order = decodes + prefills
        states = [self.requests[r] for r in order]
        num_reqs = len(order)

        num_sched = np.fromiter((sched[r] for r in order), dtype=np.int64, count=num_reqs)
        num_computed = np.fromiter((s.num_computed_tokens for s in states), dtype=np.int64,
                                   count=num_reqs)
        cu = np.cumsum(num_sched)
        qsl = np.concatenate([[0], cu])
        total = int(cu[-1])
        positions = np.arange(total, dtype=np.int64) - np.repeat(qsl[:-1] - num_computed,
                                                                 num_sched)
        token_ids = np.fromiter(
            itertools.chain.from_iterable(
                s.token_ids[c:c + n] for s, c, n in zip(states, num_computed.tolist(),
                                                         num_sched.tolist())),
            dtype=np.int64, count=total)

        max_blocks = max(len(s.block_ids) for s in states)
        block_table = np.zeros((num_reqs, max_blocks), dtype=np.int64)
        for i, s in enumerate(states):
            block_table[i, : len(s.block_ids)] = s.block_ids
        req_index = np.repeat(np.arange(num_reqs), num_sched)
        slot_mapping = (block_table[req_index, positions // self.block_size] * self.block_size
                        + positions % self.block_size)

        seq_after = num_computed + num_sched
        sample_rows = [i for i, s in enumerate(states) if seq_after[i] >= s.num_tokens]
        common = self._common_metadata(num_sched=num_sched, num_computed=num_computed,
                                       query_start_loc=qsl, positions=positions,
                                       block_table=block_table, slot_mapping=slot_mapping,
                                       num_decodes=len(decodes))
        logits_indices = torch.as_tensor(cu[sample_rows] - 1, dtype=torch.long)
        return BatchInputs(
            order=order,
            input_ids=torch.from_numpy(token_ids).to(self.device, non_blocking=True),
            positions=torch.from_numpy(positions).to(self.device, non_blocking=True),
            common=common, sample_rows=sample_rows,
            logits_indices=logits_indices.to(self.device, non_blocking=True),
            query_start_loc=qsl)

    # ---------------------------------------------------------------- the step
    @torch.inference_mode()
    def execute_model(self, so: SchedulerOutput) -> ModelRunnerOutput:
        self._update_states(so)
        if so.total_num_scheduled_tokens == 0:
            return EMPTY_MODEL_RUNNER_OUTPUT
        batch = self._prepare_inputs(so)
        attn_metadata = self.builder.build(batch.common)
        hidden = self.model(batch.input_ids, batch.positions, self.kv_caches, attn_metadata)

        prompt_logprobs = self._prompt_logprobs(batch, hidden)
        sampled: dict[str, list[int]] = {r: [] for r in batch.order}
        logprobs: dict[str, list[Logprobs]] = {}
        if batch.sample_rows:
            logits = self.model.compute_logits(hidden[batch.logits_indices])
            states = [self.requests[batch.order[i]] for i in batch.sample_rows]
            # issue 12: grammar bitmask of the structured-output rows, before sampling
            apply_grammar_bitmask(logits, [s.req_id for s in states], so)
            self.sample_into(states, logits, sampled, logprobs)
        return ModelRunnerOutput(sampled_token_ids=sampled, logprobs=logprobs,
                                 prompt_logprobs=prompt_logprobs)

    def sample_into(self, states: list[CachedRequestState], logits: torch.Tensor,
                    sampled: dict[str, list[int]], logprobs: dict[str, list[Logprobs]]) -> None:
        """Sample one token per request from the matching row of ``logits`` (float32, on any
        device), append it to the request's state, and record the ids (and the logprobs the
        request asked for) in ``sampled`` / ``logprobs``."""
        metadata = build_sampling_metadata([s.sampling_state for s in states],
                                           logits.shape[-1], logits.device)
        out = self.sampler(logits, metadata)
        for state, token in zip(states, out.token_ids.tolist()):
            state.append_output(token)
            sampled[state.req_id] = [token]
        if out.logprobs is not None:
            self.record_logprobs(states, out.logprobs, logprobs)

    @staticmethod
    def record_logprobs(states: list[CachedRequestState], tensors: Any,
                        logprobs: dict[str, list[Logprobs]]) -> None:
        """Host ``Logprobs`` of each sampled row, kept for the requests that asked for them."""
        rows = tensors.to_logprobs_list([s.sampling_params.logprobs for s in states])
        for state, row in zip(states, rows):
            if state.sampling_params.logprobs is not None:
                logprobs[state.req_id] = [row]

    def _prompt_logprobs(self, batch: BatchInputs, hidden: torch.Tensor
                         ) -> dict[str, list[Logprobs]]:
        """Logprobs of prompt tokens 1..P-1 covered by this step's chunks (position j's hidden
        state scores token j+1)."""
        result: dict[str, list[Logprobs]] = {}
        for i, req_id in enumerate(batch.order):
            state = self.requests[req_id]
            k = state.sampling_params.prompt_logprobs
            if k is None:
                continue
            start = state.num_computed_tokens
            n = int(batch.query_start_loc[i + 1] - batch.query_start_loc[i])
            prompt_len = len(state.prompt_token_ids)
            last = min(start + n, prompt_len - 1)      # positions j in [start, last) score j+1
            if last <= start:
                continue
            rows = torch.arange(int(batch.query_start_loc[i]),
                                int(batch.query_start_loc[i]) + (last - start),
                                device=hidden.device)
            targets = torch.tensor(state.prompt_token_ids[start + 1: last + 1],
                                   dtype=torch.long, device=hidden.device)
            lp = compute_prompt_logprobs(self.model.compute_logits(hidden[rows]), targets, k)
            result[req_id] = lp.to_logprobs_list()
        return result
