"""Scheduling of vision-encoder work: the per-step encoder budget and the bookkeeping of which
image outputs the workers hold. Torch-free (the scheduler's side of the encoder cache).

Rules (``EncoderScheduler``):

* A request's chunk ``[start, start + n)`` needs the encoder output of every image whose
  placeholder run meets it. An output the workers hold (by image hash, whoever computed it) is
  reused; otherwise the image is encoded in this step, before the forward, and counts its
  ``length`` (tokens = encoder output rows) against the step's encoder budget
  (``budget_tokens``) and the cache's capacity (``capacity_tokens``).
* When an image cannot be encoded this step (budget spent, or the cache full of outputs still
  in use), the chunk is cut before that image's placeholders (possibly to nothing: the
  request waits). So a chunk may split an image's placeholder run, but its output exists
  before the first of its tokens is computed.
* A request holds a reference to each image output from the step it is first needed until the
  step that computes the image's last placeholder token, or until it is finished or preempted.
  Outputs nobody references stay cached (a later request with the same image reuses them) and
  are evicted least recently used when room is needed; evicted hashes are reported to the
  workers in the next ``SchedulerOutput.free_encoder_hashes``, which workers apply before that
  step's encoder work. Since the budget and capacity are both at least the largest image a
  request may carry (checked by ``check_request``), every admitted request makes progress.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from vllm_core.engine.request import Request
    from vllm_core.multimodal.inputs import ImageItem


@dataclass(slots=True)
class EncoderScheduler:
    """See the module docstring. ``budget_tokens``: encoder output rows per step;
    ``capacity_tokens``: rows the workers' encoder cache may hold. Per step:
    ``begin_step``, ``clip`` for each chunk to schedule (``unschedule`` for one dropped
    after), ``end_step``; ``release`` when a request finishes."""

    budget_tokens: int
    capacity_tokens: int
    _size: dict[str, int] = field(default_factory=dict)           # cached hash -> rows
    _refs: dict[str, set[str]] = field(default_factory=dict)      # hash -> request ids
    _idle: OrderedDict[str, None] = field(default_factory=OrderedDict)   # unreferenced, LRU
    _used: int = 0
    _step_budget: int = 0
    _scheduled: dict[str, ImageItem] = field(default_factory=dict)   # hash -> item to encode
    _freed: list[str] = field(default_factory=list)
    _done: list[tuple[str, str]] = field(default_factory=list)    # (hash, req) after the step

    def check_request(self, request: Request) -> None:
        """ValueError when one of the request's images can never be encoded."""
        feats = request.mm_features
        if feats is None:
            return
        limit = min(self.budget_tokens, self.capacity_tokens)
        for i, item in enumerate(feats.items):
            if item.length > limit:
                raise ValueError(f"request {request.request_id!r}: image {i} takes "
                                 f"{item.length} tokens, more than the encoder budget of "
                                 f"{limit} tokens per step (raise encoder_budget_tokens / "
                                 f"max_num_batched_tokens or send a smaller image)")

    def begin_step(self) -> None:
        self._step_budget = self.budget_tokens
        self._scheduled = {}

    def clip(self, request: Request, start: int, num_new: int) -> int:
        """The number of tokens of ``[start, start + num_new)`` that can run this step (see the
        rules); schedules the encoder work and takes the references that needs. Call it only
        for chunks that will be scheduled (a caller that then drops the request calls
        ``unschedule``)."""
        feats = request.mm_features
        if feats is None or not feats.items:
            return num_new
        req_id = request.request_id
        end = start + num_new
        for index in feats.overlapping(start, end):
            item = feats.items[index]
            if item.hash not in self._size:
                if item.length > self._step_budget or not self._make_room(item.length):
                    end = max(item.offset, start)
                    break
                self._step_budget -= item.length
                self._size[item.hash] = item.length
                self._used += item.length
                self._scheduled[item.hash] = item
            self._ref(item.hash, req_id)
        # references of images whose last placeholder this chunk computes end with the step
        # (not before: this step's forward still reads them, so they must not be evicted)
        self._done.extend((it.hash, req_id) for it in feats.items
                          if start < it.end <= end)
        return end - start

    def unschedule(self, request: Request) -> None:
        """Drop the references a request took in this step's ``clip`` (it was unscheduled or
        preempted after it); the images it scheduled are still encoded this step and stay
        cached for whoever needs them next."""
        self._done = [d for d in self._done if d[1] != request.request_id]
        self.release(request)

    def release(self, request: Request) -> None:
        """Drop every reference of a finished or preempted request."""
        for h in [h for h, reqs in self._refs.items() if request.request_id in reqs]:
            self._unref(h, request.request_id)

    def end_step(self) -> tuple[list[ImageItem], list[str]]:
        """(images to encode this step, hashes evicted since the last step's output)."""
        for h, req_id in self._done:
            self._unref(h, req_id)
        self._done = []
        freed, self._freed = self._freed, []
        return list(self._scheduled.values()), freed

    # ------------------------------------------------------------------ internals
    def _ref(self, h: str, req_id: str) -> None:
        self._refs.setdefault(h, set()).add(req_id)
        self._idle.pop(h, None)

    def _unref(self, h: str, req_id: str) -> None:
        reqs = self._refs.get(h)
        if reqs is None:
            return
        reqs.discard(req_id)
        if not reqs:
            del self._refs[h]
            self._idle[h] = None

    def _make_room(self, rows: int) -> bool:
        """Evict idle outputs (LRU) until ``rows`` more fit; False when they cannot."""
        if self._used + rows - sum(self._size[h] for h in self._idle) > self.capacity_tokens:
            return False
        while self._used + rows > self.capacity_tokens:
            h, _ = self._idle.popitem(last=False)
            self._used -= self._size.pop(h)
            self._freed.append(h)
        return True
