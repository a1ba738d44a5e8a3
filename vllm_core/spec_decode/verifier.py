"""The model runner's verification path for steps with draft tokens.

Hooked into ``ModelRunner`` at four points (see ``model_runner.py``): ``stage_drafts`` before
the plan (the drafts go into the request table right after the known tokens, where the plan
gathers input ids; ``logits_per_request`` gives each verifying request ``k + 1`` rows),
``verify_metadata`` (one sampling row per logits row, penalties seeing the drafts before the
row), ``sample`` (``rejection_sample``) and ``collect_verified`` (the emitted runs into the
table and the request states).

Invariant: a step with drafts starts with no step in flight (the runner collects one first),
so ``RequestTable.num_tokens`` of a verifying request is its known length and the drafts
written after it are overwritten by whatever is accepted. Rows of a request are consecutive
(``StepPlan.logits_request`` is ascending).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from vllm_core.messages import Logprobs, ModelRunnerOutput
from vllm_core.sampling.metadata import (
    RequestSamplingState,
    SamplingMetadata,
    build_sampling_metadata,
)
from vllm_core.sampling.sampler import SamplerOutput
from vllm_core.spec_decode.rejection_sampler import rejection_sample
from vllm_core.worker.request_table import RequestTable

if TYPE_CHECKING:  # pragma: no cover
    from vllm_core.worker.model_runner import ModelRunner, PendingStep


def stage_drafts(table: RequestTable, drafts: dict[str, list[int]]) -> dict[str, int]:
    """Write each request's drafts after its known tokens; returns its logits-row count."""
    slot_of = table.slot_of
    for req_id, ids in drafts.items():
        slot = slot_of[req_id]
        start = int(table.num_tokens[slot])
        table.token_ids[slot, start:start + len(ids)] = ids
    return {req_id: len(ids) + 1 for req_id, ids in drafts.items()}


def row_starts(sample_ids: list[str]) -> np.ndarray:
    """int64 [L]: the first row of each row's request (rows of a request are consecutive)."""
    n = len(sample_ids)
    first = np.ones(n, dtype=bool)
    if n > 1:
        first[1:] = np.fromiter((a != b for a, b in zip(sample_ids, sample_ids[1:])),
                                dtype=bool, count=n - 1)
    idx = np.arange(n, dtype=np.int64)
    return np.maximum.accumulate(np.where(first, idx, 0))


def draft_row_ids(sample_ids: list[str], starts: np.ndarray,
                  drafts: dict[str, list[int]]) -> np.ndarray:
    """int64 [L]: the draft each row verifies, -1 on a request's last (bonus) row."""
    out = np.full(len(sample_ids), -1, dtype=np.int64)
    first_row = {sample_ids[i]: i for i in np.flatnonzero(starts == np.arange(len(starts)))}
    for req_id, ids in drafts.items():
        start = first_row[req_id]
        out[start:start + len(ids)] = ids
    return out


def verify_metadata(runner: ModelRunner, sample_ids: list[str], starts: np.ndarray,
                    drafts: dict[str, list[int]]) -> SamplingMetadata:
    """One metadata row per logits row. Requests with output-dependent sampling (penalties,
    min_tokens, bad words) get, on row ``j``, a view whose outputs end with drafts ``:j``."""
    dynamic = runner.dynamic_sampling_reqs
    states: list[RequestSamplingState] = []
    for row, req_id in enumerate(sample_ids):
        state = runner.requests[req_id].sampling_state
        j = row - int(starts[row])
        if j and req_id in dynamic:
            state = RequestSamplingState(state.params, state.prompt_token_ids,
                                         state.output_token_ids + drafts[req_id][:j],
                                         state.generator)
        states.append(state)
    return build_sampling_metadata(states, runner.arch.vocab_size, runner.sampling_device,
                                   runner.pin_memory)


def draft_prob_rows(sample_ids: list[str], starts: np.ndarray,
                    probs: dict[str, torch.Tensor], vocab_size: int,
                    device: torch.device) -> torch.Tensor | None:
    """float32 [L, V]: each draft row's draft distribution (a worker proposer's ``q`` rows of
    the requests that sample at random), zeros elsewhere (greedy and bonus rows, where the
    sampler does not read it); None when no request has any."""
    if not probs:
        return None
    out = torch.zeros(len(sample_ids), vocab_size, dtype=torch.float32, device=device)
    first_row = {sample_ids[i]: i for i in np.flatnonzero(starts == np.arange(len(starts)))}
    for req_id, rows in probs.items():
        start = first_row[req_id]
        out[start:start + rows.shape[0], :rows.shape[1]] = rows.to(device)
    return out


def sample(logits: torch.Tensor, md: SamplingMetadata, draft_ids: np.ndarray,
           starts: np.ndarray, draft_probs: torch.Tensor | None = None) -> SamplerOutput:
    """``rejection_sample`` with the host row arrays moved to the logits' device."""
    dev = logits.device
    return rejection_sample(logits, md, torch.from_numpy(draft_ids).to(dev),
                            torch.from_numpy(starts).to(dev),
                            None if draft_probs is None else draft_probs.to(dev))


def collect_verified(runner: ModelRunner, step: PendingStep) -> ModelRunnerOutput:
    """The emitted runs of a verification step into the table and the request states (a
    request finished or preempted since is skipped)."""
    num = len(step.sample_ids)
    if step.done is not None:
        step.done.synchronize()
    ids = runner.buffers.sampled_np[step.parity][:num].copy()
    starts = step.row_start
    first_rows = np.flatnonzero(starts == np.arange(num))
    ends = np.append(first_rows[1:], num)
    sampled: dict[str, list[int]] = {r: [] for r in step.order}
    logprobs: dict[str, list[Logprobs]] = {}
    table, requests = runner.table, runner.requests
    slot_of = table.slot_of
    rows_with_lps: list[int] = []
    for first, end in zip(first_rows.tolist(), ends.tolist()):
        req_id = step.sample_ids[first]
        slot = int(step.sample_slots[first])
        if slot_of.get(req_id) != slot:
            continue
        run = ids[first:end]
        run = run[:int(np.argmin(run >= 0)) if (run < 0).any() else len(run)]
        table.append_run(slot, run)
        tokens = run.tolist()
        state = requests[req_id]
        state.output_token_ids.extend(tokens)
        sampled[req_id] = tokens
        if step.logprobs is not None and state.sampling_params.logprobs is not None:
            rows_with_lps.extend(range(first, first + len(tokens)))
    if rows_with_lps:
        index = torch.as_tensor(rows_with_lps, dtype=torch.long)
        lps = step.logprobs
        rows = type(lps)(*(getattr(lps, f)[index.to(getattr(lps, f).device)]
                           for f in ("token_ids", "logprobs", "ranks")))
        ks = [requests[step.sample_ids[r]].sampling_params.logprobs for r in rows_with_lps]
        for r, entry in zip(rows_with_lps, rows.to_logprobs_list(ks)):
            logprobs.setdefault(step.sample_ids[r], []).append(entry)
    return ModelRunnerOutput(sampled_token_ids=sampled, logprobs=logprobs,
                             prompt_logprobs=step.prompt_logprobs)
