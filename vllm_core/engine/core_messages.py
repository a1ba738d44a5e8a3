"""The messages between front ends and an engine core in its own process (ZeroMQ, msgspec).

Front end -> core (one PULL socket the core binds; every front end connects a PUSH):
``Hello`` once per front end (where to send its outputs), then ``AddRequest``,
``FinishRequests`` and ``LoRACall`` (load / unload an adapter; answered by one ``CallDone``
with the same ``call_id``), and ``Shutdown``. Core -> front end (one PUSH socket per front end,
to the address its ``Hello`` named): ``Ready`` once, then one ``StepOutputs`` per step that has
news for it, ``CallDone`` per call, and ``CoreFailed`` before the core exits on an error.

Invariants: a front end's ``AddRequest`` ids are unique among its unfinished requests (the
engine core keys its routing on them); ``StepOutputs.outputs`` are in step order and one
message holds one step's outputs for one front end. Stats: the per-step counters (prompt
tokens, prefix-cache queries and hits, preemptions) go to front end 0 only, so that metrics
summed over front ends count each step once; every message carries the scheduler's state after
the step (``snapshot``).

Encoding: msgspec msgpack of these tagged Structs; the payload dataclasses (``SamplingParams``,
``EngineCoreOutput``, ``SchedulerStats``) are encoded by msgspec field by field, no pickle.
A request's images (``MultiModalFeatures``: numpy pixel values and M-RoPE positions) travel as
``WireFeatures``: each array as its dtype, shape and raw bytes (``mm_to_wire`` /
``mm_from_wire`` give back equal arrays).
"""

from __future__ import annotations

import msgspec
import numpy as np

from vllm_core.engine.stats import SchedulerStats
from vllm_core.messages import EngineCoreOutput
from vllm_core.multimodal.inputs import ImageItem, MultiModalFeatures
from vllm_core.sampling.params import SamplingParams


class Hello(msgspec.Struct, tag="hello", array_like=True):
    client_index: int
    output_address: str


class WireArray(msgspec.Struct, array_like=True):
    dtype: str
    shape: list[int]
    data: bytes


class WireImage(msgspec.Struct, array_like=True):
    hash: str
    offset: int
    length: int
    pixel_values: WireArray
    grid_thw: list[int]


class WireFeatures(msgspec.Struct, array_like=True):
    items: list[WireImage]
    mrope_positions: WireArray | None
    mrope_delta: int


def _to_wire(a: np.ndarray) -> WireArray:
    a = np.ascontiguousarray(a)
    return WireArray(a.dtype.str, list(a.shape), a.tobytes())


def _from_wire(w: WireArray) -> np.ndarray:
    return np.frombuffer(w.data, dtype=np.dtype(w.dtype)).reshape(w.shape).copy()


def mm_to_wire(features: MultiModalFeatures | None) -> WireFeatures | None:
    if features is None:
        return None
    items = [WireImage(it.hash, it.offset, it.length, _to_wire(it.pixel_values),
                       list(it.grid_thw)) for it in features.items]
    pos = features.mrope_positions
    return WireFeatures(items, None if pos is None else _to_wire(pos), features.mrope_delta)


def mm_from_wire(w: WireFeatures | None) -> MultiModalFeatures | None:
    if w is None:
        return None
    items = [ImageItem(it.hash, it.offset, it.length, _from_wire(it.pixel_values),
                       tuple(it.grid_thw)) for it in w.items]
    pos = None if w.mrope_positions is None else _from_wire(w.mrope_positions)
    return MultiModalFeatures(items, pos, w.mrope_delta)


class AddRequest(msgspec.Struct, tag="add", array_like=True):
    client_index: int
    request_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    arrival_time: float
    priority: int = 0
    parent_id: str | None = None
    lora_id: int = 0
    mm: WireFeatures | None = None


class FinishRequests(msgspec.Struct, tag="finish", array_like=True):
    request_ids: list[str]
    status: int                       # a RequestStatus value (FINISHED_STOPPED / _ABORTED)


class LoRACall(msgspec.Struct, tag="lora", array_like=True):
    """``op`` "add" (load ``path`` as ``lora_id`` named ``name``) or "remove" (``lora_id``)."""

    client_index: int
    call_id: int
    op: str
    lora_id: int
    name: str = ""
    path: str = ""


class CallDone(msgspec.Struct, tag="done", array_like=True):
    """The answer to call ``call_id``: ``error`` is the ValueError's message, None on success."""

    call_id: int
    error: str | None = None


class Shutdown(msgspec.Struct, tag="shutdown", array_like=True):
    pass


class Ready(msgspec.Struct, tag="ready", array_like=True):
    num_blocks: int
    pid: int
    startup_phases: dict[str, float] = {}     # the core's start-up phases, seconds


class StepStats(msgspec.Struct, array_like=True):
    scheduler_stats: SchedulerStats | None
    num_prompt_tokens: int
    step_time: float
    expert_load: list[int] | None = None


class StepOutputs(msgspec.Struct, tag="step", array_like=True):
    outputs: list[EngineCoreOutput]
    stats: StepStats | None
    snapshot: SchedulerStats


class CoreFailed(msgspec.Struct, tag="failed", array_like=True):
    message: str


ToCore = Hello | AddRequest | FinishRequests | LoRACall | Shutdown
FromCore = Ready | StepOutputs | CallDone | CoreFailed


def encoder() -> msgspec.msgpack.Encoder:
    return msgspec.msgpack.Encoder()


def to_core_decoder() -> msgspec.msgpack.Decoder:
    return msgspec.msgpack.Decoder(ToCore)


def from_core_decoder() -> msgspec.msgpack.Decoder:
    return msgspec.msgpack.Decoder(FromCore)
