"""The engine core process: an ``EngineCore`` driven by messages over ZeroMQ.

``run_engine_core`` is the process's target (spawned by ``EngineCoreClient``). It builds the
core (model load, KV cache, warm-up), binds its input socket, and loops:

1. read every message waiting (block while the core has nothing to do): ``Hello`` connects
   an output socket to that front end and answers ``Ready``; ``AddRequest`` queues a request
   (a refusal becomes an output with finish_reason "abort"); ``FinishRequests`` finishes
   requests (aborts, stop strings); ``LoRACall`` loads / unloads an adapter and answers
   ``CallDone`` (with the ValueError's message when refused); ``Shutdown`` ends the loop;
2. run one step when there is work, and send each front end one ``StepOutputs`` with its
   requests' outputs (front end 0 gets one every step: it carries the step's counters);
   when the core falls idle, every front end gets an empty one with the scheduler's state.

Exits with status 0 after ``Shutdown``; on any error it sends ``CoreFailed`` to every front end
and exits with status 1. While idle it checks every second that its parent process lives (it
exits when the server that started it is gone) and probes its executor (``check_health``: a
worker process that ended makes the core fail as above).
"""

from __future__ import annotations

import os
import signal
import sys
import traceback
from typing import Any

from vllm_core.logger import init_logger

logger = init_logger(__name__)

POLL_MS = 1000


def run_engine_core(config: Any, platform: Any, input_address: str) -> None:
    """Process target; never returns (``sys.exit``)."""
    import zmq

    # SIGTERM / SIGINT go to the whole process group from a terminal or a test harness: the
    # front end decides when the core stops (it drains first), so the core ignores them.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    parent = os.getppid()
    ctx = zmq.Context()
    runner = _CoreLoop(ctx, input_address, parent)
    try:
        runner.start(config, platform)
        runner.loop()
        code = 0
    except BaseException as e:  # noqa: BLE001 - reported to every front end, then exit 1
        logger.error("engine core failed:\n%s", traceback.format_exc())
        runner.fail(f"{type(e).__name__}: {e}")
        code = 1
    finally:
        runner.close()
    ctx.destroy(linger=0)
    sys.exit(code)


class _CoreLoop:
    def __init__(self, ctx: Any, input_address: str, parent_pid: int) -> None:
        import zmq

        from vllm_core.engine import core_messages as m

        self.zmq = zmq
        self.m = m
        self.ctx = ctx
        self.parent_pid = parent_pid
        self.input = ctx.socket(zmq.PULL)
        self.input.bind(input_address)
        self.outputs: dict[int, Any] = {}          # client index -> PUSH socket
        self.owner: dict[str, int] = {}            # request id -> client index
        self.core: Any = None
        self.encoder = m.encoder()
        self.decoder = m.to_core_decoder()
        self.stopping = False

    def start(self, config: Any, platform: Any) -> None:
        from vllm_core.engine.core import EngineCore
        from vllm_core.model_executor.tokenizer import get_tokenizer_in_background

        model = config.model
        tokenizer = get_tokenizer_in_background(model.model, model.tokenizer)
        self.core = EngineCore(config, platform, tokenizer)

    # ------------------------------------------------------------------ messages
    def _hello(self, msg: Any) -> None:
        sock = self.ctx.socket(self.zmq.PUSH)
        sock.setsockopt(self.zmq.LINGER, 1000)
        sock.connect(msg.output_address)
        self.outputs[msg.client_index] = sock
        sock.send(self.encoder.encode(self.m.Ready(self.core.num_blocks, os.getpid(),
                                                    self.core.startup_phases)))
        logger.info("engine core: front end %d connected", msg.client_index)

    def _handle(self, msg: Any) -> None:
        m = self.m
        if isinstance(msg, m.AddRequest):
            self._add(msg)
        elif isinstance(msg, m.FinishRequests):
            from vllm_core.engine.request import RequestStatus

            for rid in msg.request_ids:
                self.owner.pop(rid, None)
            self.core.finish_requests(msg.request_ids, RequestStatus(msg.status))
        elif isinstance(msg, m.LoRACall):
            self._lora(msg)
        elif isinstance(msg, m.Hello):
            self._hello(msg)
        elif isinstance(msg, m.Shutdown):
            self.stopping = True

    def _lora(self, msg: Any) -> None:
        error = None
        try:
            if msg.op == "add":
                self.core.add_lora(msg.lora_id, msg.name, msg.path)
            elif msg.op == "remove":
                self.core.remove_lora(msg.lora_id)
            else:
                error = f"unknown LoRA call {msg.op!r}"
        except ValueError as e:
            error = str(e)
        sock = self.outputs.get(msg.client_index)
        if sock is not None:
            sock.send(self.encoder.encode(self.m.CallDone(msg.call_id, error)))

    def _add(self, msg: Any) -> None:
        from vllm_core.engine.request import Request
        from vllm_core.messages import EngineCoreOutput

        request = Request(request_id=msg.request_id, prompt_token_ids=msg.prompt_token_ids,
                          sampling_params=msg.sampling_params, arrival_time=msg.arrival_time,
                          priority=msg.priority, parent_id=msg.parent_id,
                          lora_id=msg.lora_id, mm_features=self.m.mm_from_wire(msg.mm))
        try:
            self.core.add_request(request)
        except ValueError as e:     # the front end checks first; this is a race or a bug
            logger.warning("engine core refused request %s: %s", msg.request_id, e)
            self._send(msg.client_index, [EngineCoreOutput(msg.request_id, [],
                                                           finish_reason="abort")], None)
            return
        self.owner[msg.request_id] = msg.client_index

    def _read(self, block: bool) -> None:
        zmq = self.zmq
        if block and not self.input.poll(POLL_MS):
            self._check_parent()
            self.core.check_health()           # raises: reported as CoreFailed, exit 1
            return
        while True:
            try:
                raw = self.input.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._handle(self.decoder.decode(raw))

    def _check_parent(self) -> None:
        if os.getppid() != self.parent_pid:
            logger.warning("engine core: the server process is gone; exiting")
            self.stopping = True

    # ------------------------------------------------------------------ the loop
    def loop(self) -> None:
        core = self.core
        was_busy = False
        while not self.stopping:
            busy = core.has_unfinished_requests()
            if was_busy and not busy:
                self._send_snapshots()     # idle now (finished or aborted): say so once
            was_busy = busy
            self._read(block=not busy)
            if self.stopping or not core.has_unfinished_requests():
                continue
            step = core.step()
            self._route(step)

    def _send_snapshots(self) -> None:
        for client in self.outputs:
            self._send(client, [], None)

    def _route(self, step: Any) -> None:
        by_client: dict[int, list[Any]] = {}
        for out in step.outputs:
            client = self.owner.get(out.req_id)
            if client is None:
                continue                       # finished by its front end meanwhile
            by_client.setdefault(client, []).append(out)
            if out.finish_reason is not None:
                del self.owner[out.req_id]
        stats = None
        if step.stats is not None:
            s = step.stats
            stats = self.m.StepStats(s.scheduler_stats, s.num_prompt_tokens, s.step_time,
                                     s.expert_load)
            by_client.setdefault(0, [])
        for client, outputs in by_client.items():
            self._send(client, outputs, stats if client == 0 else None)

    def _send(self, client: int, outputs: list[Any], stats: Any) -> None:
        sock = self.outputs.get(client)
        if sock is None:
            return
        msg = self.m.StepOutputs(outputs, stats, self.core.scheduler_snapshot())
        sock.send(self.encoder.encode(msg), copy=False)

    # ------------------------------------------------------------------ end
    def fail(self, message: str) -> None:
        """Tell every front end (also those whose ``Hello`` is still queued) and return."""
        try:
            while True:
                msg = self.decoder.decode(self.input.recv(self.zmq.NOBLOCK))
                if isinstance(msg, self.m.Hello) and msg.client_index not in self.outputs:
                    sock = self.ctx.socket(self.zmq.PUSH)
                    sock.connect(msg.output_address)
                    self.outputs[msg.client_index] = sock
        except Exception:  # noqa: BLE001 - zmq.Again ends the queue; anything else too
            pass
        payload = self.encoder.encode(self.m.CoreFailed(message))
        for sock in self.outputs.values():
            try:
                sock.send(payload, self.zmq.NOBLOCK)
            except Exception:  # noqa: BLE001 - best effort: the front end also sees the exit
                pass

    def close(self) -> None:
        if self.core is not None:
            try:
                self.core.shutdown()
            except Exception:  # noqa: BLE001
                logger.exception("engine core shutdown failed")
        for sock in self.outputs.values():
            sock.close(linger=1000)
        self.input.close(linger=0)
