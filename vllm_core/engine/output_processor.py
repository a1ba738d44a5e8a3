"""Turns EngineCoreOutputs into user-facing RequestOutputs (detokenized, with logprobs).

One ``_ChildState`` per engine request; a request with ``n > 1`` is a parent whose children are
separate engine requests (``parent_id`` + ``child_index``); ``n == 1`` requests are their own
parent. Per step and per parent at most one ``RequestOutput`` is produced, whose ``outputs``
are ordered by child index, and which is ``finished`` only when every child is.

Output kinds (taken from the first child's params):

- ``cumulative``: every step with news, all children so far (full text / tokens / logprobs);
- ``delta``: every step with news, only the children with news, carrying what is new since
  their previous output (prompt logprobs once, in the first output that has them);
- ``final_only``: one output, when the parent finishes, as in ``cumulative``.

A stop string found by the detokenizer finishes the child here (finish_reason "stop",
stop_reason = the string) and its id is returned in ``reqs_to_abort``: the engine must finish
it in the scheduler (as FINISHED_STOPPED) since the engine does not know about it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vllm_core.engine.detokenizer import IncrementalDetokenizer, make_detokenizer
from vllm_core.engine.stats import FinishedRequestStats, IterationStats
from vllm_core.messages import EngineCoreOutput, Logprobs
from vllm_core.outputs import (
    CompletionOutput,
    Logprob,
    PositionLogprobs,
    RequestMetrics,
    RequestOutput,
)
from vllm_core.sampling.params import SamplingParams


@dataclass(slots=True)
class ProcessedOutputs:
    """``request_outputs`` to hand to callers now; ``reqs_to_abort`` child ids stopped by a stop
    string (finish them in the scheduler); ``iteration_stats`` (None when not logging stats)."""

    request_outputs: list[RequestOutput] = field(default_factory=list)
    reqs_to_abort: list[str] = field(default_factory=list)
    iteration_stats: IterationStats | None = None


@dataclass(slots=True)
class _ChildState:
    request_id: str
    parent: _ParentState
    index: int
    params: SamplingParams
    detokenizer: IncrementalDetokenizer
    arrival_time: float
    num_prompt_tokens: int
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[PositionLogprobs] | None = None
    cumulative_logprob: float | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    num_cached_tokens: int = 0
    first_token_time: float | None = None
    last_token_time: float | None = None
    # Delta bookkeeping: how many tokens / logprob positions were already emitted.
    sent_tokens: int = 0
    sent_logprobs: int = 0


@dataclass(slots=True)
class _ParentState:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    output_kind: str
    num_children: int
    metrics: RequestMetrics
    children: dict[int, _ChildState] = field(default_factory=dict)
    prompt_logprobs: list[PositionLogprobs | None] | None = None
    prompt_logprobs_source: str | None = None
    sent_prompt_logprobs: bool = False
    num_finished: int = 0
    # Children with news not yet reported (aborted while siblings still run).
    unreported: set[int] = field(default_factory=set)

    @property
    def finished(self) -> bool:
        return self.num_finished == self.num_children


class OutputProcessor:
    """Per-request output state; see the module docstring. Not thread-safe."""

    def __init__(self, tokenizer: Any, log_stats: bool = True) -> None:
        self.tokenizer = tokenizer
        self.log_stats = log_stats
        self._children: dict[str, _ChildState] = {}
        self._parents: dict[str, _ParentState] = {}
        self._token_text: dict[int, str] = {}
        self._pending_finished: list[FinishedRequestStats] = []

    # ---- requests -------------------------------------------------------------------------

    def add_request(self, request_id: str, prompt: str | None, prompt_token_ids: list[int],
                    params: SamplingParams, arrival_time: float, parent_id: str | None = None,
                    child_index: int = 0, num_children: int = 1) -> None:
        """Register an engine request. For n > 1 add each child with the parent's id, its
        index in ``[0, num_children)`` and the same ``num_children``."""
        if request_id in self._children:
            raise ValueError(f"request_id {request_id!r} is already being processed")
        if not 0 <= child_index < num_children:
            raise ValueError(f"child_index must be in [0, {num_children}), got {child_index}")
        pid = parent_id if parent_id is not None else request_id
        parent = self._parents.get(pid)
        if parent is None:
            parent = _ParentState(request_id=pid, prompt=prompt,
                                  prompt_token_ids=list(prompt_token_ids),
                                  output_kind=params.output_kind, num_children=num_children,
                                  metrics=RequestMetrics(arrival_time=arrival_time))
            if params.prompt_logprobs is not None:
                parent.prompt_logprobs = [None]
            self._parents[pid] = parent
        elif child_index in parent.children:
            raise ValueError(f"child_index {child_index} of {pid!r} was already added")
        child = _ChildState(
            request_id=request_id, parent=parent, index=child_index, params=params,
            detokenizer=make_detokenizer(self.tokenizer, params, prompt_token_ids),
            arrival_time=arrival_time, num_prompt_tokens=len(prompt_token_ids),
            logprobs=[] if params.logprobs is not None else None,
            cumulative_logprob=0.0 if params.logprobs is not None else None)
        parent.children[child_index] = child
        self._children[request_id] = child

    def has_request(self, request_id: str) -> bool:
        """True while ``request_id`` (a child or parent id) has unfinished output state."""
        return request_id in self._children or request_id in self._parents

    def has_unfinished(self) -> bool:
        return bool(self._children)

    def get_num_unfinished_requests(self) -> int:
        return len(self._parents)

    def child_ids(self, request_id: str) -> list[str]:
        """Unfinished engine request ids of ``request_id`` (a parent id or a child id)."""
        child = self._children.get(request_id)
        if child is not None:
            return [request_id] if child.finish_reason is None else []
        parent = self._parents.get(request_id)
        if parent is None:
            return []
        return [c.request_id for c in parent.children.values() if c.finish_reason is None]

    def abort_request(self, request_id: str, now: float | None = None) -> list[RequestOutput]:
        """Finish ``request_id`` (a parent: all its children; or one child) with
        finish_reason "abort". Returns the final output when that finishes the parent (empty
        when unknown or other children still run). Its stats join the next iteration stats."""
        outputs: list[RequestOutput] = []
        parents: dict[str, _ParentState] = {}
        aborted = set(self.child_ids(request_id))
        for cid in aborted:
            child = self._children[cid]
            self._finish(child, "abort", None, now)
            parents[child.parent.request_id] = child.parent
        for parent in parents.values():
            changed = {i for i, c in parent.children.items() if c.request_id in aborted}
            if not parent.finished:
                parent.unreported |= changed
                continue
            out = self._make_output(parent, changed)
            if out is not None:
                outputs.append(out)
            self._drop(parent)
        return outputs

    # ---- per step -------------------------------------------------------------------------

    def process_outputs(self, outputs: list[EngineCoreOutput], now: float,
                        iteration_stats: IterationStats | None = None) -> ProcessedOutputs:
        """Apply one step's outputs; returns what to emit and which child ids to abort.

        Outputs for unknown (already finished / aborted) ids are ignored. When stats are
        logged, contributions go into ``iteration_stats`` (a fresh one when None): generation
        tokens, prompt tokens (counted at the first token, cache hits excluded), TTFT, one
        inter-token latency per request per step, and finished-request stats.
        """
        stats = None
        if self.log_stats:
            stats = iteration_stats if iteration_stats is not None else IterationStats()
            stats.finished_requests.extend(self._pending_finished)
        self._pending_finished = []
        result = ProcessedOutputs(iteration_stats=stats)
        touched: dict[str, tuple[_ParentState, set[int]]] = {}
        for eco in outputs:
            child = self._children.get(eco.req_id)
            if child is None or child.finish_reason is not None:
                continue
            if self._apply(child, eco, now, stats, result):
                parent = child.parent
                touched.setdefault(parent.request_id, (parent, set()))[1].add(child.index)
        for parent, changed in touched.values():
            out = self._make_output(parent, changed)
            if out is not None:
                result.request_outputs.append(out)
            if parent.finished:
                self._drop(parent)
        if stats is not None:
            stats.finished_requests.extend(self._pending_finished)
            self._pending_finished = []
        return result

    def _apply(self, child: _ChildState, eco: EngineCoreOutput, now: float,
               stats: IterationStats | None, result: ProcessedOutputs) -> bool:
        """Fold one EngineCoreOutput into ``child``; True when there is something to report."""
        parent = child.parent
        # The scheduler reports prefix-cache hits in a request's first output only (0 after).
        child.num_cached_tokens = max(child.num_cached_tokens, eco.num_cached_tokens)
        if eco.new_prompt_logprobs and parent.prompt_logprobs is not None:
            if parent.prompt_logprobs_source in (None, child.request_id):
                parent.prompt_logprobs_source = child.request_id
                parent.prompt_logprobs.extend(
                    self._convert(lp, child.params.prompt_logprobs, child.params.detokenize)
                    for lp in eco.new_prompt_logprobs)
        new_ids = eco.new_token_ids
        # finish "stop" from the engine means the last token is eos / a stop token id.
        stop_terminated = eco.finish_reason == "stop" and not isinstance(eco.stop_reason, str)
        run = len(new_ids) > 1 and bool(child.detokenizer.stop)
        if run:       # a speculative run: stop strings are found token by token, as without
            new_ids, stop_str = _update_run(child.detokenizer, new_ids, stop_terminated)
        if new_ids:
            self._record_token_times(child, len(new_ids), now, stats)
            child.token_ids.extend(new_ids)
            if child.logprobs is not None and eco.new_logprobs:
                for lp in eco.new_logprobs[:len(new_ids)]:
                    child.logprobs.append(
                        self._convert(lp, child.params.logprobs, child.params.detokenize))
                    child.cumulative_logprob += lp.logprobs[0]
        if not run:
            stop_str = child.detokenizer.update(new_ids, stop_terminated=stop_terminated)
        if stop_str is not None:
            self._finish(child, "stop", stop_str, now)
            if not eco.finished:
                result.reqs_to_abort.append(child.request_id)
        elif eco.finished:
            self._finish(child, eco.finish_reason, eco.stop_reason, now)
        return bool(new_ids) or child.finish_reason is not None

    def _record_token_times(self, child: _ChildState, num_new: int, now: float,
                            stats: IterationStats | None) -> None:
        metrics = child.parent.metrics
        if child.first_token_time is None:
            child.first_token_time = now
            if stats is not None:
                stats.time_to_first_tokens.append(now - child.arrival_time)
                stats.num_prompt_tokens += max(0, child.num_prompt_tokens
                                               - child.num_cached_tokens)
            if metrics.first_token_time is None:
                metrics.first_token_time = now
        elif stats is not None and child.last_token_time is not None:
            stats.inter_token_latencies.append(now - child.last_token_time)
        child.last_token_time = now
        metrics.last_token_time = now
        metrics.num_generation_tokens += num_new
        if stats is not None:
            stats.num_generation_tokens += num_new

    def _finish(self, child: _ChildState, reason: str | None, stop_reason: int | str | None,
                now: float | None) -> None:
        child.finish_reason = reason
        child.stop_reason = stop_reason
        parent = child.parent
        parent.num_finished += 1
        if now is not None:
            parent.metrics.finished_time = now
        if self.log_stats:
            end = now if now is not None else (child.last_token_time or child.arrival_time)
            first = child.first_token_time
            self._pending_finished.append(FinishedRequestStats(
                finish_reason=reason or "abort",
                e2e_latency=end - child.arrival_time,
                num_prompt_tokens=child.num_prompt_tokens,
                num_generation_tokens=len(child.token_ids),
                prefill_time=(first - child.arrival_time) if first is not None else 0.0,
                decode_time=(child.last_token_time - first) if first is not None else 0.0))

    def _drop(self, parent: _ParentState) -> None:
        for child in parent.children.values():
            self._children.pop(child.request_id, None)
        self._parents.pop(parent.request_id, None)

    # ---- building outputs ----------------------------------------------------------------

    def _make_output(self, parent: _ParentState, changed: set[int]) -> RequestOutput | None:
        kind = parent.output_kind
        finished = parent.finished
        if kind == "final_only" and not finished:
            return None
        delta = kind == "delta"
        changed = changed | parent.unreported
        parent.unreported = set()
        indices = sorted(changed) if delta else sorted(parent.children)
        completions = [self._completion(parent.children[i], delta) for i in indices]
        prompt_logprobs = parent.prompt_logprobs
        if delta and prompt_logprobs is not None:
            # Sent once, in the first output after the prompt was fully scored.
            complete = len(prompt_logprobs) >= len(parent.prompt_token_ids)
            if parent.sent_prompt_logprobs or not (complete or finished):
                prompt_logprobs = None
            else:
                parent.sent_prompt_logprobs = True
        return RequestOutput(
            request_id=parent.request_id, prompt=parent.prompt,
            prompt_token_ids=parent.prompt_token_ids, prompt_logprobs=prompt_logprobs,
            outputs=completions, finished=finished, metrics=parent.metrics,
            num_cached_tokens=max((c.num_cached_tokens for c in parent.children.values()),
                                  default=0))

    def _completion(self, child: _ChildState, delta: bool) -> CompletionOutput:
        finished = child.finish_reason is not None
        text = child.detokenizer.get_next_output_text(finished, delta)
        if delta:
            token_ids = child.token_ids[child.sent_tokens:]
            logprobs = child.logprobs[child.sent_logprobs:] if child.logprobs is not None \
                else None
            child.sent_tokens = len(child.token_ids)
            child.sent_logprobs = len(child.logprobs) if child.logprobs is not None else 0
        else:
            token_ids = list(child.token_ids)
            logprobs = list(child.logprobs) if child.logprobs is not None else None
        return CompletionOutput(index=child.index, text=text, token_ids=token_ids,
                                cumulative_logprob=child.cumulative_logprob, logprobs=logprobs,
                                finish_reason=child.finish_reason, stop_reason=child.stop_reason)

    def _convert(self, lp: Logprobs, num: int | None, detokenize: bool) -> PositionLogprobs:
        """Runner Logprobs -> {token_id: Logprob}: the chosen token first, then the top
        ``num`` (a chosen token that is also in the top-k appears once)."""
        keep = len(lp.token_ids) if num is None else min(len(lp.token_ids), num + 1)
        ids = lp.token_ids[:keep]
        texts = self._decode_tokens(ids) if detokenize else [None] * len(ids)
        out: PositionLogprobs = {}
        for tok, val, rank, text in zip(ids, lp.logprobs, lp.ranks, texts, strict=True):
            if tok not in out:
                out[tok] = Logprob(logprob=val, rank=rank, decoded_token=text)
        return out

    def _decode_tokens(self, ids: list[int]) -> list[str | None]:
        if self.tokenizer is None:
            return [None] * len(ids)
        missing = [t for t in ids if t not in self._token_text]
        if missing:
            texts = self.tokenizer.batch_decode([[t] for t in missing],
                                                clean_up_tokenization_spaces=False)
            self._token_text.update(zip(missing, texts, strict=True))
        return [self._token_text[t] for t in ids]


def _update_run(detokenizer: Any, ids: list[int], stop_terminated: bool
                ) -> tuple[list[int], str | None]:
    """Feed several new tokens (a verified speculative run) one at a time; on a stop string,
    the tokens after the one that completed it are dropped (they would not have been
    generated without speculation). Returns (the tokens kept, the stop string or None)."""
    last = len(ids) - 1
    for i, token in enumerate(ids):
        hit = detokenizer.update([token], stop_terminated=stop_terminated and i == last)
        if hit is not None:
            return ids[:i + 1], hit
    return ids, None
