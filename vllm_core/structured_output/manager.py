"""StructuredOutputManager: backend choice, asynchronous grammar compilation, the batch bitmask.

- ``prepare(params)`` (input processing, any thread): validates the constraint (a JSON schema
  against the JSON-Schema meta-schema, then the backend's own check) and records the backend in
  ``params.backend``. With backend "auto", xgrammar is tried first, then llguidance; a refusal
  names every backend's reason. Raises ValueError naming the field.
- ``submit(...)`` (``LLMEngine.add_request``): starts compiling on a thread pool, or reuses the
  compiled grammar (cache keyed by backend, kind, spec text and whitespace mode; futures are
  cached, so concurrent requests for one schema compile it once). The scheduler keeps the
  request waiting until ``StructuredOutputRequest.is_ready()``; the step loop never blocks on a
  compile.
- ``attach_bitmask(scheduler_output, requests)`` (engine, after ``schedule``): one int32 row
  per request that samples this step under an active grammar, in ``structured_output_req_ids``
  order. Requests are visited (xgrammar fills large batches in parallel), never tokens.
  ``depends_on_step`` tells the async engine when it must first collect the step in flight.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vllm_core.config import StructuredOutputsConfig
from vllm_core.logger import init_logger
from vllm_core.structured_output.backend import (
    StructuredOutputBackend,
    UnsupportedConstraint,
    bitmask_width,
)
from vllm_core.structured_output.params import StructuredOutputsParams
from vllm_core.structured_output.request import ReasoningGate, StructuredOutputRequest

logger = init_logger(__name__)

_BACKEND_CLASSES = {
    "xgrammar": "vllm_core.structured_output.xgrammar_backend.XgrammarBackend",
    "guidance": "vllm_core.structured_output.guidance_backend.GuidanceBackend",
    "outlines": "vllm_core.structured_output.outlines_backend.OutlinesBackend",
}
AUTO_ORDER = ("xgrammar", "guidance")
MAX_CACHED_GRAMMARS = 1024


def backend_class(name: str) -> type[StructuredOutputBackend]:
    from vllm_core.plugins.loading import import_object

    if name not in _BACKEND_CLASSES:
        raise ValueError(f"structured outputs backend {name!r} is unknown; available: "
                         f"{', '.join(_BACKEND_CLASSES)}")
    return import_object(_BACKEND_CLASSES[name])


def check_json_schema(spec: str) -> None:
    """ValueError with the reason when ``spec`` is not a valid JSON schema."""
    import jsonschema

    schema = json.loads(spec)
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as e:
        where = "/".join(str(p) for p in e.absolute_path) or "(root)"
        raise ValueError(f"structured_outputs.json is not a valid JSON schema at {where}: "
                         f"{e.message}") from None


@dataclass(slots=True)
class CompileStats:
    num_compiled: int = 0
    num_cache_hits: int = 0
    compile_seconds: float = 0.0


class StructuredOutputManager:
    def __init__(self, config: StructuredOutputsConfig, tokenizer: Any, vocab_size: int,
                 eos_token_ids: list[int]) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.eos_token_ids = list(eos_token_ids)
        self.width = bitmask_width(vocab_size)
        self.stats = CompileStats()
        self._backends: dict[str, StructuredOutputBackend] = {}
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple, Future] = OrderedDict()
        self._checked: dict[tuple, str] = {}
        self._pool = ThreadPoolExecutor(config.compile_threads,
                                        thread_name_prefix="grammar-compile")
        self._reasoning_tags: tuple[str, str, int] | None = None
        self._bitmask_buffers: list[torch.Tensor] = []
        self._bitmask_turn = 0
        if config.reasoning_parser and not config.enable_in_reasoning:
            from vllm_core.reasoning.registry import resolve_reasoning_parser

            parser = resolve_reasoning_parser(config.reasoning_parser)
            window = 2 * len(tokenizer.encode(parser.end_tag, add_special_tokens=False)) + 2
            self._reasoning_tags = (parser.start_tag, parser.end_tag, window)

    # ------------------------------------------------------------ front end
    def prepare(self, params: StructuredOutputsParams) -> str:
        """Validate ``params`` and set ``params.backend``. ValueError names the field and, when
        every backend refuses, each backend's reason."""
        kind, spec = params.kind_and_spec()
        names = AUTO_ORDER if self.config.backend == "auto" else (self.config.backend,)
        check_key = (names, kind, spec)
        with self._lock:
            chosen = self._checked.get(check_key)
        if chosen is None:
            if kind == "json":
                check_json_schema(spec)
            reasons = []
            for name in names:
                try:
                    backend_class(name).check(kind, spec)
                except UnsupportedConstraint as e:
                    reasons.append(f"{name}: {e}")
                    continue
                chosen = name
                break
            if chosen is None:
                raise ValueError(f"structured_outputs.{kind}: no structured-outputs backend "
                                 f"can serve this constraint ({'; '.join(reasons)})")
            with self._lock:
                if len(self._checked) > 4 * MAX_CACHED_GRAMMARS:
                    self._checked.clear()
                self._checked[check_key] = chosen
        params.backend = chosen
        return chosen

    # ------------------------------------------------------------ engine
    def submit(self, params: StructuredOutputsParams,
               prompt_token_ids: list[int]) -> StructuredOutputRequest:
        """Start (or reuse) the compile of ``params``' grammar; the request's state."""
        name = params.backend or self.prepare(params)
        kind, spec = params.kind_and_spec()
        key = (name, kind, spec, bool(params.disable_any_whitespace))
        with self._lock:
            future = self._cache.get(key)
            if future is not None and not (future.done() and future.exception()):
                self._cache.move_to_end(key)
                self.stats.num_cache_hits += 1
            else:
                future = self._pool.submit(self._compile, key)
                self._cache[key] = future
                while len(self._cache) > MAX_CACHED_GRAMMARS:
                    self._cache.popitem(last=False)
        gate = None
        if self._reasoning_tags is not None:
            start_tag, end_tag, window = self._reasoning_tags
            gate = ReasoningGate.for_prompt(prompt_token_ids, start_tag, end_tag,
                                            self._decode, window)
        return StructuredOutputRequest(key=key, future=future,
                                       make_grammar=self._backend(name).make_grammar, gate=gate,
                                       prefix=tuple(params.prefix_token_ids or ()))

    def _decode(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=False)

    def _backend(self, name: str) -> StructuredOutputBackend:
        with self._lock:
            backend = self._backends.get(name)
            if backend is None:
                options = ({"fill_threads": self.config.fill_threads}
                           if name == "xgrammar" else {})
                backend = backend_class(name)(
                    self.tokenizer, self.vocab_size, self.eos_token_ids,
                    self.config.disable_any_whitespace, **options)
                self._backends[name] = backend
            return backend

    def _compile(self, key: tuple) -> Any:
        name, kind, spec, compact = key
        start = time.perf_counter()
        compiled = self._backend(name).compile(kind, spec, compact)
        elapsed = time.perf_counter() - start
        with self._lock:
            self.stats.num_compiled += 1
            self.stats.compile_seconds += elapsed
        return compiled

    def attach_bitmask(self, scheduler_output: Any, requests: Mapping[str, Any]) -> None:
        """Fill ``scheduler_output.grammar_bitmask`` / ``structured_output_req_ids`` for the
        requests that sample this step under an active grammar (none: left None / empty).

        Precondition: every such request's matcher has accepted all its output tokens (under
        async scheduling the engine collects the step in flight first)."""
        ids = []
        for req_id in scheduler_output.sampling_req_ids:
            request = requests.get(req_id)
            so = getattr(request, "structured_output", None) if request is not None else None
            if so is not None and so.active:
                ids.append(req_id)
        if not ids:
            scheduler_output.grammar_bitmask = None
            scheduler_output.structured_output_req_ids = []
            return
        ids.sort()
        bitmask = self._next_bitmask(len(ids))
        groups: dict[str, tuple[list, list[int]]] = {}
        for row, req_id in enumerate(ids):
            so = requests[req_id].structured_output
            if so.grammar.is_terminated():       # (its output is dropped anyway)
                bitmask[row] = -1
            else:
                grammars, rows = groups.setdefault(so.key[0], ([], []))
                grammars.append(so.grammar)
                rows.append(row)
        for name, (grammars, rows) in groups.items():
            backend = self._backend(name)
            if not backend.fills_whole_row:
                bitmask[rows] = -1
            backend.fill_bitmasks(grammars, bitmask, rows)
        scheduler_output.grammar_bitmask = bitmask.numpy()
        scheduler_output.structured_output_req_ids = ids

    def _next_bitmask(self, num_rows: int) -> torch.Tensor:
        """``[num_rows, width]`` int32 rows to overwrite: two reused buffers taken in turn
        (grown when a batch is larger). A step's bitmask is read by the runner before the
        bitmask of the step after next is built (at most one step is in flight), so the buffer
        handed out two calls earlier is free."""
        buffers = self._bitmask_buffers
        if not buffers or buffers[0].shape[0] < num_rows:
            rows = max(num_rows, 2 * buffers[0].shape[0] if buffers else 64)
            buffers[:] = [torch.empty((rows, self.width), dtype=torch.int32) for _ in range(2)]
        self._bitmask_turn ^= 1
        return buffers[self._bitmask_turn][:num_rows]

    def advance(self, scheduler_output: Any, sampled_token_ids: Mapping[str, list[int]],
                requests: Mapping[str, Any]) -> None:
        """Feed a step's sampled tokens to the matchers of its running constrained requests in
        one batch per backend (parallel for xgrammar), before ``Scheduler.update_from_output``
        appends them: each request's ``accept`` of that token then only reads the result.
        Requests not RUNNING are left alone (the scheduler drops their token)."""
        from vllm_core.engine.request import RequestStatus

        groups: dict[str, tuple[list, list[int], list]] = {}
        for req_id in scheduler_output.structured_output_req_ids:
            tokens = sampled_token_ids.get(req_id)
            request = requests.get(req_id)
            if not tokens or len(tokens) != 1 or request is None \
                    or request.status != RequestStatus.RUNNING:
                continue
            so = request.structured_output
            if so is None or not so.active or so.grammar.is_terminated():
                continue
            grammars, toks, states = groups.setdefault(so.key[0], ([], [], []))
            grammars.append(so.grammar)
            toks.append(tokens[0])
            states.append(so)
        for name, (grammars, toks, states) in groups.items():
            results = self._backend(name).accept_batch(grammars, toks)
            for so, token, ok in zip(states, toks, results):
                so.preaccepted = (token, ok)

    def depends_on_step(self, scheduler_output: Any, requests: Mapping[str, Any],
                        in_flight: Any) -> bool:
        """Whether this step's bitmask needs the tokens of the ``in_flight`` step: some request
        with a grammar (compiled or gated) samples in both."""
        pending = in_flight.sampling_req_ids
        for req_id in scheduler_output.sampling_req_ids:
            if req_id not in pending:
                continue
            request = requests.get(req_id)
            if request is not None and request.structured_output is not None:
                return True
        return False

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def empty_bitmask(num_rows: int, vocab_size: int) -> np.ndarray:
    """All tokens allowed (tests and padding)."""
    return np.full((num_rows, bitmask_width(vocab_size)), -1, dtype=np.int32)
