"""Continuous-batching scheduler over the paged KV cache. Torch-free, pure bookkeeping.

One engine step is ``schedule()`` -> workers execute the ``SchedulerOutput`` ->
``update_from_output()``. Steps run strictly in order, which is what lets ``schedule()`` advance
``num_computed_tokens`` and register newly full blocks in the prefix cache for the tokens it
schedules: their KV is written by this step, before any later step can read it.

Step policy (``schedule``):

1. Running requests, in policy order (FCFS: arrival; priority: priority value, then arrival),
   decodes first, then unfinished prefill chunks. Each gets ``min(remaining, budget)`` tokens
   (chunked prefill) or, with chunked prefill off, all its remaining tokens or nothing. When its
   blocks cannot be allocated, the lowest-priority running request (the latest arrival under
   FCFS, the largest priority value under "priority"; possibly itself, possibly one already
   scheduled this step, which is then unscheduled) is preempted by recompute: its blocks are
   freed, ``num_computed_tokens`` reset, and it goes back to the front of the waiting queue.
2. Waiting requests, only if nothing was preempted this step, while the token budget and
   ``max_num_seqs`` allow: prefix-cache hits first, then the rest of the sequence (prompt, plus
   earlier outputs for a preempted request), chunked to the budget when chunked prefill is on,
   else only when it fits whole (else the queue waits: no request overtakes the head). A waiting
   request whose blocks cannot be allocated also stops admission for this step.
3. ``n > 1`` children (same ``parent_id``): only the first child added is admitted until its
   prompt is fully computed and its full blocks cached; the others are then admitted and hit
   the prefix cache (skipping them does not block the queue). Only when prefix caching is on.
4. LoRA (``max_loras``): a waiting request whose adapter is not among the running requests'
   is skipped (it keeps its place) while ``max_loras`` distinct adapters run, so a step never
   needs more adapters than the workers have device slots.

Sampling rule (the runner infers it, the scheduler relies on it): a request samples a token in a
step iff ``num_computed_tokens + num_scheduled_tokens`` reaches its full length
(``len(prompt) + len(outputs) + num_output_placeholders``); requests whose prompt is scheduled
partially sample nothing. ``SchedulerOutput.sampling_req_ids`` lists them.

Async scheduling (``schedule()`` for step N+1 before ``update_from_output()`` of step N): every
request that samples in a step holds one output placeholder until its id arrives, so a running
decode is scheduled again at once for the token being sampled. A request that step N will finish
by length for certain (``max_tokens`` or the maximum sequence length reached counting its
placeholders) is not scheduled again; one finished by a stop token or string in step N has been
scheduled in N+1 for nothing, and that step's output for it is dropped. Blocks enter the prefix
cache only once their token ids are known. Preemption drops the placeholders (the token in
flight is discarded and recomputed later, like the rest of the request).

Structured outputs: a request with a grammar enters as WAITING_FOR_GRAMMAR and admission skips it
(without blocking the queue) until its grammar has compiled; one whose compile failed finishes
with "abort" (``pop_failed_outputs``). ``update_from_output`` advances the request's matcher with each appended token,
and a request whose grammar terminated finishes with "stop". The batch bitmask is built outside
the scheduler (``StructuredOutputManager.attach_bitmask``), which stays torch-free.

Speculative decoding: a running decode may carry draft tokens (``Request.spec_token_ids``, set
by the engine's proposer before ``schedule()``, only while no step is in flight). They are
scheduled after its last token, as many as the token budget leaves room for, and count as
scheduled tokens (KV slots are allocated for them); the request samples in that step and
``num_computed_tokens`` advances over them. ``update_from_output`` gets the accepted prefix plus
one token and rolls ``num_computed_tokens`` back over the rejected drafts. Drafts never enter
``all_token_ids`` before they are accepted, so the prefix cache only ever holds accepted tokens;
stop checks run token by token over the accepted run, so nothing after a stop (or past
``max_tokens``) is emitted. Drafts that are not scheduled in a step are dropped.

Pipeline micro-batching (``in_flight`` set, ``engine/in_flight.py``): ``schedule()`` runs while
up to ``depth - 1`` steps are in flight; a request appears in at most one unfinished step (those
in flight are neither scheduled nor preempted), and one step takes at most
``ceil(len(running) / depth)`` running requests, so consecutive steps split them into groups.

Stop checks (``update_from_output``, after each appended token): a token in
``sampling_params.all_stop_token_ids`` finishes the request with "stop" once
``len(output) >= min_tokens`` (``stop_reason`` is the token id when it came from
``stop_token_ids``, None for eos); otherwise ``len(output) >= max_tokens`` or reaching the
maximum sequence length finishes it with "length". The maximum sequence length is
``max_model_len``, capped by what the whole cache holds (so a lone request can always grow).
"""

from __future__ import annotations

import heapq
import itertools
from abc import ABC, abstractmethod
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator

from vllm_core.config import CacheConfig, SchedulerConfig
from vllm_core.engine.encoder_scheduler import EncoderScheduler
from vllm_core.engine.in_flight import InFlightRequests
from vllm_core.engine.kv_cache_manager import KVCacheManager, cdiv
from vllm_core.engine.request import Request, RequestStatus
from vllm_core.engine.stats import SchedulerStats, SpecDecodingStats
from vllm_core.logger import init_logger
from vllm_core.messages import (
    CachedRequestData,
    EngineCoreOutput,
    Logprobs,
    ModelRunnerOutput,
    NewRequestData,
    SchedulerOutput,
)

logger = init_logger(__name__)

DEFAULT_MAX_NUM_BATCHED_TOKENS = 2048

PolicyKey = Callable[[Request], tuple]


def _group(request: Request) -> str:
    """The fair-share group of a request: its n > 1 parent, else itself."""
    return request.parent_id or request.request_id


def fcfs_key(request: Request) -> tuple:
    return (request.arrival_time, request.arrival_seq)


def priority_key(request: Request) -> tuple:
    return (request.priority, request.arrival_time, request.arrival_seq)


class WaitingQueue(ABC):
    """Waiting requests in the order they are admitted."""

    @abstractmethod
    def add(self, request: Request) -> None: ...

    @abstractmethod
    def push_front(self, request: Request) -> None:
        """Put back a preempted (or skipped) request ahead of the others, as the policy allows."""

    @abstractmethod
    def peek(self) -> Request: ...

    @abstractmethod
    def pop(self) -> Request: ...

    @abstractmethod
    def remove_many(self, requests: set[Request]) -> None: ...

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def __iter__(self) -> Iterator[Request]: ...


class FCFSWaitingQueue(WaitingQueue):
    """Arrival order; preempted requests go to the very front."""

    def __init__(self) -> None:
        self._q: deque[Request] = deque()

    def add(self, request: Request) -> None:
        self._q.append(request)

    def push_front(self, request: Request) -> None:
        self._q.appendleft(request)

    def peek(self) -> Request:
        return self._q[0]

    def pop(self) -> Request:
        return self._q.popleft()

    def remove_many(self, requests: set[Request]) -> None:
        self._q = deque(r for r in self._q if r not in requests)

    def __len__(self) -> int:
        return len(self._q)

    def __iter__(self) -> Iterator[Request]:
        return iter(self._q)


class PriorityWaitingQueue(WaitingQueue):
    """Smallest (priority, arrival_time, arrival_seq) first; preempted requests re-enter by key."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, float, int, Request]] = []

    def add(self, request: Request) -> None:
        heapq.heappush(self._heap, (*priority_key(request), request))

    def push_front(self, request: Request) -> None:
        self.add(request)

    def peek(self) -> Request:
        return self._heap[0][-1]

    def pop(self) -> Request:
        return heapq.heappop(self._heap)[-1]

    def remove_many(self, requests: set[Request]) -> None:
        self._heap = [e for e in self._heap if e[-1] not in requests]
        heapq.heapify(self._heap)

    def __len__(self) -> int:
        return len(self._heap)

    def __iter__(self) -> Iterator[Request]:
        return (e[-1] for e in sorted(self._heap, key=lambda e: e[:-1]))


class Scheduler:
    """Decides, each step, which requests run and how many tokens each computes.

    ``requests`` holds every unfinished request (waiting or running); finished ones are dropped
    at once and their ids reported to the workers in the next ``SchedulerOutput``.
    """

    def __init__(self, scheduler_config: SchedulerConfig, cache_config: CacheConfig,
                 max_model_len: int, log_stats: bool = True, max_loras: int | None = None
                 ) -> None:
        if cache_config.num_blocks is None or cache_config.block_size is None:
            raise ValueError("cache_config.num_blocks and cache_config.block_size must be set "
                             f"before the scheduler starts, got num_blocks="
                             f"{cache_config.num_blocks!r}, block_size={cache_config.block_size!r}")
        if not isinstance(max_model_len, int) or max_model_len < 2:
            raise ValueError(f"max_model_len must be an integer >= 2, got {max_model_len!r}")
        if scheduler_config.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be >= 1, got {scheduler_config.max_num_seqs}")
        chunked = scheduler_config.enable_chunked_prefill
        budget = scheduler_config.max_num_batched_tokens
        if budget is None:
            budget = (DEFAULT_MAX_NUM_BATCHED_TOKENS if chunked
                      else max(max_model_len, DEFAULT_MAX_NUM_BATCHED_TOKENS))
        if budget < 1:
            raise ValueError(f"max_num_batched_tokens must be >= 1, got {budget}")
        if not chunked and budget < max_model_len:
            raise ValueError(f"max_num_batched_tokens ({budget}) must be >= max_model_len "
                             f"({max_model_len}) when chunked prefill is disabled, or a long "
                             "prompt could never be scheduled")
        if scheduler_config.policy not in ("fcfs", "priority"):
            raise ValueError(f"policy must be 'fcfs' or 'priority', got "
                             f"{scheduler_config.policy!r}")

        self.scheduler_config = scheduler_config
        self.cache_config = cache_config
        self.max_model_len = max_model_len
        self.max_num_seqs = scheduler_config.max_num_seqs
        self.max_num_batched_tokens = budget
        self.enable_chunked_prefill = chunked
        self.policy = scheduler_config.policy
        self.log_stats = log_stats
        self.block_size = cache_config.block_size
        self.max_loras = max_loras      # distinct LoRA adapters among running requests

        # vision-encoder work: a per-step budget (image tokens) that is also the encoder
        # cache's capacity; max_num_batched_tokens unless configured
        encoder_budget = scheduler_config.encoder_budget_tokens or budget
        if encoder_budget < 1:
            raise ValueError(f"encoder_budget_tokens must be >= 1, got {encoder_budget}")
        self.encoder = EncoderScheduler(encoder_budget, encoder_budget)
        self.kv_cache_manager = KVCacheManager(
            cache_config.num_blocks, cache_config.block_size,
            enable_caching=cache_config.enable_prefix_caching, log_stats=log_stats)
        capacity = self.kv_cache_manager.num_usable_blocks * self.block_size
        self.max_seq_len = min(max_model_len, capacity)

        self._key: PolicyKey = priority_key if self.policy == "priority" else fcfs_key
        self.waiting: WaitingQueue = (PriorityWaitingQueue() if self.policy == "priority"
                                      else FCFSWaitingQueue())
        self.running: list[Request] = []
        self.requests: dict[str, Request] = {}
        self.finished_req_ids: set[str] = set()
        self._sibling_leader: dict[str, str] = {}     # parent_id -> first child, until prefilled
        self._arrival_seq = itertools.count()
        self._num_preemptions = 0                     # since the last make_stats()
        self._failed: list[EngineCoreOutput] = []     # grammar failures, reported next update
        self._spec_stats = SpecDecodingStats()        # since the last make_stats()
        # pipeline micro-batching (set by the engine's BatchQueue): requests in unfinished steps
        self.in_flight: InFlightRequests | None = None

    # ------------------------------------------------------------------ requests in
    def add_request(self, request: Request) -> None:
        """Queue a new request. Raises ValueError if it is a duplicate or can never fit."""
        req_id = request.request_id
        if req_id in self.requests:
            raise ValueError(f"request id {req_id!r} is already in the scheduler")
        num_prompt = request.num_prompt_tokens
        if num_prompt >= self.max_model_len:
            raise ValueError(f"request {req_id!r}: the prompt has {num_prompt} tokens, but "
                             f"max_model_len is {self.max_model_len}; the prompt must be shorter "
                             "than max_model_len to leave room for at least one output token")
        self.encoder.check_request(request)
        need = cdiv(num_prompt + 1, self.block_size)
        usable = self.kv_cache_manager.num_usable_blocks
        if need > usable:
            raise ValueError(f"request {req_id!r}: the prompt has {num_prompt} tokens; with one "
                             f"output token it needs {need} KV-cache blocks of {self.block_size} "
                             f"tokens, but the whole cache has only {usable} blocks "
                             f"({usable * self.block_size} tokens)")
        if request.max_model_len is None or request.max_model_len > self.max_model_len:
            request.max_model_len = self.max_model_len
        request.stop_token_ids = frozenset(request.sampling_params.all_stop_token_ids)
        request.arrival_seq = next(self._arrival_seq)
        request.status = RequestStatus.WAITING
        if request.structured_output is not None and not request.structured_output.is_ready():
            request.status = RequestStatus.WAITING_FOR_GRAMMAR
        self.requests[req_id] = request
        self.waiting.add(request)
        parent = request.parent_id
        if (parent is not None and parent not in self._sibling_leader
                and self.kv_cache_manager.uses_prefix_cache(request)):
            self._sibling_leader[parent] = req_id

    def finish_requests(self, request_ids: str | Iterable[str],
                        finished_status: RequestStatus) -> None:
        """Finish requests from outside (abort; stop strings found by the detokenizer).

        Their blocks are freed now and their ids go into the next ``finished_req_ids``.
        Unknown or already finished ids are ignored.
        """
        if not RequestStatus.is_finished(finished_status):
            raise ValueError(f"finished_status must be a finished status, got {finished_status!r}")
        if isinstance(request_ids, str):
            request_ids = [request_ids]
        running: set[Request] = set()
        waiting: set[Request] = set()
        for req_id in request_ids:
            request = self.requests.get(req_id)
            if request is None:
                continue
            (running if request.status == RequestStatus.RUNNING else waiting).add(request)
            request.status = finished_status
            self._release(request)
        if running:
            self.running = [r for r in self.running if r not in running]
        if waiting:
            self.waiting.remove_many(waiting)

    # ------------------------------------------------------------------ queries
    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    def grammar_futures(self) -> list:
        """Compile futures of the requests waiting for their grammar (the engine may wait on
        them when a step has nothing else to run)."""
        return [r.structured_output.future for r in self.waiting
                if r.status == RequestStatus.WAITING_FOR_GRAMMAR]

    def pop_failed_outputs(self) -> list[EngineCoreOutput]:
        """Outputs of requests finished by the scheduler itself (a grammar that failed to
        compile: finish_reason "abort"), since the last call."""
        failed, self._failed = self._failed, []
        return failed

    def has_finished_requests(self) -> bool:
        """Finished ids not yet sent to the workers (an engine may step once more to flush)."""
        return bool(self.finished_req_ids)

    def get_num_unfinished_requests(self) -> int:
        return len(self.requests)

    def get_request_counts(self) -> tuple[int, int]:
        """(running, waiting)."""
        return len(self.running), len(self.waiting)

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def kv_cache_usage(self) -> float:
        """Fraction of usable KV blocks in use now, 0..1 (does not reset any counter)."""
        return self.kv_cache_manager.usage

    def make_stats(self) -> SchedulerStats | None:
        """Snapshot for stat loggers; counters are since the last call. None if not log_stats."""
        if not self.log_stats:
            return None
        prefix = self.kv_cache_manager.take_prefix_cache_stats()
        preemptions, self._num_preemptions = self._num_preemptions, 0
        spec = self._spec_stats.take()
        return SchedulerStats(num_running_reqs=len(self.running),
                              num_waiting_reqs=len(self.waiting),
                              kv_cache_usage=self.kv_cache_manager.usage,
                              prefix_cache_queries=prefix.queries,
                              prefix_cache_hits=prefix.hits,
                              num_preemptions=preemptions,
                              num_total_blocks=self.kv_cache_manager.block_pool.num_blocks,
                              spec_decoding=spec if spec.num_drafts else None)

    def lora_counts(self) -> tuple[Counter[int], Counter[int]]:
        """(running, waiting) request counts per LoRA adapter id (the base model excluded)."""
        return (Counter(r.lora_id for r in self.running if r.lora_id),
                Counter(r.lora_id for r in self.waiting if r.lora_id))

    def reset_prefix_cache(self) -> bool:
        return self.kv_cache_manager.reset_prefix_cache()

    # ------------------------------------------------------------------ one step
    def schedule(self) -> SchedulerOutput:
        """Plan one step. See the module docstring for the policy and SchedulerOutput for the
        invariants. An output may schedule nothing yet carry ``finished_req_ids``: the engine
        must still deliver it to the workers (or keep stepping while has_finished_requests())."""
        budget = self.max_num_batched_tokens
        num_scheduled: dict[str, int] = {}
        new_block_ids: dict[str, list[int]] = {}
        scheduled_running: list[Request] = []
        scheduled_new: list[Request] = []
        preempted: list[Request] = []
        spec_tokens: dict[str, list[int]] = {}        # drafts scheduled this step
        kv = self.kv_cache_manager
        self.encoder.begin_step()

        # 1. Running requests: decodes, then unfinished prefill chunks, each in policy order.
        self.running.sort(key=self._key)
        decodes: list[Request] = []
        prefills: list[Request] = []
        for r in self.running:
            pending = len(r.all_token_ids) + r.num_output_placeholders - r.num_computed_tokens
            (decodes if pending <= 1 else prefills).append(r)
        decodes.extend(prefills)
        in_flight = self.in_flight
        seats = in_flight.seat_cap(len(self.running)) if in_flight is not None else 0
        for request in decodes:
            if budget <= 0:
                break
            if request.status != RequestStatus.RUNNING:       # preempted earlier this step
                continue
            if in_flight is not None and (in_flight.holds(request.request_id)
                                          or len(scheduled_running) >= seats):
                continue
            placeholders = request.num_output_placeholders
            remaining = len(request.all_token_ids) + placeholders - request.num_computed_tokens
            if remaining <= 0 or (placeholders and self._finishes_by_length(request)):
                continue
            # drafts ride after the last token, as many as the budget leaves room for
            num_spec = min(len(request.spec_token_ids), max(budget - remaining, 0))
            remaining += num_spec
            if remaining > budget and not self.enable_chunked_prefill:
                continue
            num_new = min(remaining, budget)
            clipped = self.encoder.clip(request, request.num_computed_tokens, num_new)
            if clipped < num_new and (clipped == 0 or not self.enable_chunked_prefill):
                self.encoder.unschedule(request)      # an image waits for encoder budget
                continue
            num_new = clipped
            while True:
                ids = kv.allocate_slots(request, num_new)
                if ids is not None:
                    break
                victim = max((r for r in self.running if in_flight is None
                              or not in_flight.holds(r.request_id)), key=self._key)
                self._preempt(victim)
                preempted.append(victim)
                if victim.request_id in num_scheduled:        # unschedule it
                    budget += num_scheduled.pop(victim.request_id)
                    del new_block_ids[victim.request_id]
                    spec_tokens.pop(victim.request_id, None)
                    scheduled_running.remove(victim)
                if victim is request:
                    break
            if ids is None:
                continue
            scheduled_running.append(request)
            num_scheduled[request.request_id] = num_new
            new_block_ids[request.request_id] = ids
            if num_spec:
                spec_tokens[request.request_id] = request.spec_token_ids[:num_spec]
            budget -= num_new

        # 2. Waiting requests (not in a step that had to preempt).
        if not preempted:
            budget = self._admit_waiting(budget, num_scheduled, scheduled_new)

        # 3. Messages (pre-step computed counts), then commit the step's progress.
        new_reqs = [NewRequestData(req_id=r.request_id, prompt_token_ids=r.prompt_token_ids,
                                   sampling_params=r.sampling_params,
                                   block_ids=kv.get_block_ids(r.request_id),
                                   num_computed_tokens=r.num_computed_tokens,
                                   output_token_ids=list(r.output_token_ids),
                                   lora_id=r.lora_id, mm_features=r.mm_features)
                    for r in scheduled_new]
        cached_reqs = [CachedRequestData(req_id=r.request_id,
                                         new_block_ids=new_block_ids[r.request_id],
                                         num_computed_tokens=r.num_computed_tokens,
                                         new_token_ids=self._tokens_since_last_step(r))
                       for r in scheduled_running]
        sampling: set[str] = set()
        for request in itertools.chain(scheduled_new, scheduled_running):
            request.num_computed_tokens += num_scheduled[request.request_id]
            known = len(request.all_token_ids)
            num_spec = len(spec_tokens.get(request.request_id, ()))
            if request.num_computed_tokens >= known + request.num_output_placeholders + num_spec:
                request.num_output_placeholders += 1
                sampling.add(request.request_id)
            kv.cache_blocks(request, min(request.num_computed_tokens, known))
            self._maybe_open_sibling_gate(request)

        for request in self.running:                  # unscheduled drafts are dropped
            if request.spec_token_ids:
                request.spec_token_ids = []
        finished = self.finished_req_ids | {r.request_id for r in preempted}
        self.finished_req_ids = set()
        self._num_preemptions += len(preempted)
        encoder_inputs, freed_outputs = self.encoder.end_step()
        return SchedulerOutput(scheduled_new_reqs=new_reqs, scheduled_cached_reqs=cached_reqs,
                               num_scheduled_tokens=num_scheduled,
                               total_num_scheduled_tokens=sum(num_scheduled.values()),
                               finished_req_ids=finished, num_preempted=len(preempted),
                               sampling_req_ids=frozenset(sampling),
                               scheduled_spec_decode_tokens=spec_tokens,
                               scheduled_encoder_inputs=encoder_inputs,
                               free_encoder_hashes=freed_outputs)

    def _tokens_since_last_step(self, request: Request) -> list[int]:
        """Pipeline micro-batching: the output tokens from the request's computed count on
        (every one known: it is not in flight), for the ranks that did not sample them."""
        if self.in_flight is None:
            return []
        start = max(request.num_computed_tokens, request.num_prompt_tokens)
        return request.all_token_ids[start:]

    def _finishes_by_length(self, request: Request) -> bool:
        """Whether the tokens in flight already end ``request`` by length (async scheduling)."""
        n = request.num_output_placeholders
        return (len(request.output_token_ids) + n >= request.max_tokens
                or len(request.all_token_ids) + n >= self.max_seq_len)

    def _admit_waiting(self, budget: int, num_scheduled: dict[str, int],
                       scheduled_new: list[Request]) -> int:
        """Admit waiting requests in policy order while seats, tokens and blocks last.

        Fair share: the children of one n > 1 request (a *group*; a plain request is a group
        of one) take at most ``max_num_seqs // number of groups`` seats while another group
        waits, so one request with a large ``n`` cannot starve the requests behind it. Seats
        the fair pass leaves free go to the deferred requests (a second pass in the same
        order), so the batch is never kept smaller than it could be.
        """
        groups: Counter[str] = Counter(_group(r) for r in self.running)
        num_groups = len(set(groups) | {_group(r) for r in self.waiting})
        share = max(1, self.max_num_seqs // max(num_groups, 1)) if num_groups > 1 else None
        budget, deferred = self._admit_pass(budget, num_scheduled, scheduled_new, groups, share)
        for request in reversed(deferred):          # they keep their places in the queue
            self.waiting.push_front(request)
        if deferred and budget > 0 and len(self.running) < self.max_num_seqs:
            budget, _ = self._admit_pass(budget, num_scheduled, scheduled_new, groups, None)
        return budget

    def _admit_pass(self, budget: int, num_scheduled: dict[str, int],
                    scheduled_new: list[Request], groups: Counter[str], share: int | None
                    ) -> tuple[int, list[Request]]:
        """One admission pass; returns the budget left and the requests deferred because
        their group holds ``share`` seats already (they are off the waiting queue)."""
        kv = self.kv_cache_manager
        skipped: list[Request] = []
        deferred: list[Request] = []
        loras = {r.lora_id for r in self.running if r.lora_id} if self.max_loras else set()
        while len(self.waiting) and budget > 0 and len(self.running) < self.max_num_seqs:
            request = self.waiting.peek()
            if self._is_gated_sibling(request):
                skipped.append(self.waiting.pop())
                continue
            if request.status == RequestStatus.WAITING_FOR_GRAMMAR:
                if not request.structured_output.is_ready():
                    skipped.append(self.waiting.pop())
                    continue
                request.status = RequestStatus.WAITING
            if request.structured_output is not None and request.structured_output.error:
                self.waiting.pop()
                self._fail(request, request.structured_output.error)
                continue
            if (request.lora_id and self.max_loras and request.lora_id not in loras
                    and len(loras) >= self.max_loras):       # its adapter has no slot now
                skipped.append(self.waiting.pop())
                continue
            group = _group(request)
            if share is not None and groups[group] >= share:
                deferred.append(self.waiting.pop())
                continue
            hit_blocks, num_hit = kv.get_computed_blocks(request)
            num_new = request.num_tokens - num_hit
            if num_new > budget:
                if not self.enable_chunked_prefill:
                    break
                num_new = budget
            clipped = self.encoder.clip(request, num_hit, num_new)
            if clipped < num_new and (clipped == 0 or not self.enable_chunked_prefill):
                self.encoder.unschedule(request)      # an image waits for encoder budget
                break
            num_new = clipped
            ids = kv.allocate_slots(request, num_new, num_new_computed_tokens=num_hit,
                                    new_computed_blocks=hit_blocks)
            if ids is None:
                self.encoder.unschedule(request)
                break
            self.waiting.pop()
            request.status = RequestStatus.RUNNING
            request.num_computed_tokens = num_hit
            if request.num_cached_tokens < 0:
                request.num_cached_tokens = num_hit
            self.running.append(request)
            scheduled_new.append(request)
            num_scheduled[request.request_id] = num_new
            groups[group] += 1
            if request.lora_id:
                loras.add(request.lora_id)
            budget -= num_new
        for request in reversed(skipped):
            self.waiting.push_front(request)
        return budget, deferred

    def _preempt(self, request: Request) -> None:
        """Recompute preemption: free the blocks, forget progress, wait at the front."""
        self.running.remove(request)
        self.kv_cache_manager.free(request)
        self.encoder.unschedule(request)
        request.status = RequestStatus.PREEMPTED
        request.num_computed_tokens = 0
        request.num_output_placeholders = 0           # a token in flight is dropped
        request.spec_token_ids = []
        request.num_preemptions += 1
        self.waiting.push_front(request)

    def _is_gated_sibling(self, request: Request) -> bool:
        if request.parent_id is None:
            return False
        leader = self._sibling_leader.get(request.parent_id)
        return leader is not None and leader != request.request_id

    def _maybe_open_sibling_gate(self, request: Request) -> None:
        parent = request.parent_id
        if (parent is not None and self._sibling_leader.get(parent) == request.request_id
                and request.num_computed_tokens >= request.num_prompt_tokens):
            del self._sibling_leader[parent]

    # ------------------------------------------------------------------ results in
    def update_from_output(self, scheduler_output: SchedulerOutput,
                           model_runner_output: ModelRunnerOutput) -> list[EngineCoreOutput]:
        """Append sampled tokens, apply stop checks, free finished requests.

        Returns one ``EngineCoreOutput`` per request that got tokens, prompt logprobs or
        finished. Requests finished or aborted since the step was scheduled are skipped.
        Raises RuntimeError if the runner broke the sampling rule.
        """
        outputs: list[EngineCoreOutput] = []
        finished: set[Request] = set()
        requests = self.requests
        all_sampled = model_runner_output.sampled_token_ids
        all_logprobs = model_runner_output.logprobs
        all_prompt_logprobs = model_runner_output.prompt_logprobs
        sampling_ids = scheduler_output.sampling_req_ids
        spec_tokens = scheduler_output.scheduled_spec_decode_tokens
        running = RequestStatus.RUNNING
        for req_id, n in scheduler_output.num_scheduled_tokens.items():
            request = requests.get(req_id)
            if request is None or request.status != running:
                continue
            sampled = all_sampled.get(req_id) or ()
            should_sample = req_id in sampling_ids
            if bool(sampled) != should_sample:
                raise RuntimeError(
                    f"request {req_id!r}: the runner sampled {len(sampled)} tokens, but in this "
                    f"step it {'must sample' if should_sample else 'must not sample'} "
                    f"({request.num_computed_tokens} of {request.num_tokens} tokens computed)")
            if should_sample and request.num_output_placeholders > 0:
                request.num_output_placeholders -= 1
            drafts = spec_tokens.get(req_id)
            if drafts:
                self._roll_back_rejected(request, len(drafts), len(sampled))
            new_tokens: list[int] = []
            status: RequestStatus | None = None
            grammar = request.structured_output
            for token in sampled:
                request.append_output_token_ids(token)
                new_tokens.append(token)
                if grammar is not None and not grammar.accept(token) \
                        and grammar.num_rejected == 1:
                    logger.warning("request %s: token %d is not allowed by its grammar (was "
                                   "the grammar bitmask applied?)", req_id, token)
                status = self._check_stop(request)
                if status is not None:
                    break
            prompt_lps = (self._new_prompt_logprobs(request, n, all_prompt_logprobs.get(req_id))
                          if all_prompt_logprobs else None)
            if status is not None:
                request.status = status
                finished.add(request)
            if not (new_tokens or prompt_lps or status is not None):
                continue
            logprobs = all_logprobs.get(req_id) if all_logprobs else None
            outputs.append(EngineCoreOutput(
                req_id, new_tokens,
                RequestStatus.finish_reason(status) if status else None,
                request.stop_reason,
                logprobs[:len(new_tokens)] if logprobs and new_tokens else None,
                prompt_lps or None,
                0 if request.sent_first_output else max(request.num_cached_tokens, 0)))
            request.sent_first_output = True
        if finished:
            for request in finished:
                self._release(request)
            self.running = [r for r in self.running if r not in finished]
        return outputs

    def _roll_back_rejected(self, request: Request, num_drafts: int, num_sampled: int) -> None:
        """Verification returned the accepted prefix of ``num_drafts`` drafts plus one token:
        the rejected drafts' KV positions are not computed after all (their slots are written
        again by the next step; blocks stay with the request, and only blocks full of known
        tokens ever enter the prefix cache)."""
        num_accepted = num_sampled - 1
        if not 0 <= num_accepted <= num_drafts:
            raise RuntimeError(f"request {request.request_id!r}: the runner returned "
                               f"{num_sampled} tokens for {num_drafts} drafts (expected 1 to "
                               f"{num_drafts + 1})")
        request.num_computed_tokens -= num_drafts - num_accepted
        self._spec_stats.record(num_drafts, num_accepted)

    def _check_stop(self, request: Request) -> RequestStatus | None:
        num_output = len(request.output_token_ids)
        last = request.output_token_ids[-1]
        if last in request.stop_token_ids:
            params = request.sampling_params
            if num_output >= params.min_tokens:
                request.stop_reason = last if last in params.stop_token_ids else None
                return RequestStatus.FINISHED_STOPPED
        grammar = request.structured_output
        if grammar is not None and grammar.is_terminated():
            return RequestStatus.FINISHED_STOPPED
        if num_output >= request.max_tokens or len(request.all_token_ids) >= self.max_seq_len:
            return RequestStatus.FINISHED_LENGTH
        return None

    @staticmethod
    def _new_prompt_logprobs(request: Request, num_scheduled: int,
                             entries: list[Logprobs] | None) -> list[Logprobs]:
        """Drop prompt-logprob entries already sent (a preempted request recomputes its prompt).

        A chunk starting at computed position ``c`` scores prompt positions ``c+1, c+2, ...``.
        """
        if not entries:
            return []
        start = request.num_computed_tokens - num_scheduled
        sent = request.num_prompt_logprobs_sent
        skip = max(0, sent - start)
        request.num_prompt_logprobs_sent = max(sent, start + len(entries))
        return entries[skip:]

    def _fail(self, request: Request, reason: str) -> None:
        """Finish a waiting request whose grammar failed (see ``pop_failed_outputs``)."""
        logger.error("request %s: %s", request.request_id, reason)
        request.status = RequestStatus.FINISHED_ABORTED
        self._release(request)
        self._failed.append(EngineCoreOutput(request.request_id, [], "abort"))

    def _release(self, request: Request) -> None:
        """Free a finished request's blocks and forget it (caller fixes the queues)."""
        self.kv_cache_manager.free(request)
        self.encoder.release(request)
        self.finished_req_ids.add(request.request_id)
        del self.requests[request.request_id]
        if (request.parent_id is not None
                and self._sibling_leader.get(request.parent_id) == request.request_id):
            del self._sibling_leader[request.parent_id]
