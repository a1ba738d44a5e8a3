"""The ``mp`` worker loop's order on an accelerator (``worker_process._serve``): a step whose
device work is still running is collected only after the next queued message has been
launched, so the device gets the next step without waiting for the answer; a step with no
event (a host device) is answered at once. Fakes stand in for the ring, the worker and the
device events."""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field

from vllm_core.worker.worker_process import _await_message_or_step, _serve


@dataclass
class FakeEvent:
    polls_until_done: int                 # query() turns True after this many calls

    def query(self) -> bool:
        self.polls_until_done -= 1
        return self.polls_until_done < 0


@dataclass
class FakeStep:
    name: str
    log: list
    done: object = None

    def result(self) -> str:
        self.log.append(("collect", self.name))
        return self.name


@dataclass
class FakeRing:
    """Messages become visible one by one: message k after ``arrive_after[k]`` polls."""

    messages: list
    arrive_after: list
    polls: int = 0
    next: int = 0

    def poll(self) -> bool:
        self.polls += 1
        return self.next < len(self.messages) and self.polls > self.arrive_after[self.next]

    def read(self, check=None) -> bytes:
        while not self.poll():
            pass
        self.next += 1
        return pickle.dumps(self.messages[self.next - 1])


@dataclass
class FakeWorker:
    log: list
    events: dict
    rank: int = 0
    launched: list = field(default_factory=list)

    def execute_model_async(self, name: str) -> FakeStep:
        self.log.append(("launch", name))
        return FakeStep(name, self.log, self.events.get(name))


class FakePipe:
    def __init__(self, log: list) -> None:
        self.log = log

    def send(self, msg) -> None:
        self.log.append(("answer", msg[0]))


def run_loop(events: dict, arrive_after: list) -> list:
    log: list = []
    messages = [(0, "execute_model", ("s0",)), (1, "execute_model", ("s1",)),
                (2, "shutdown", ())]
    _serve(FakeWorker(log, events), FakeRing(messages, arrive_after), FakePipe(log), True,
           lambda: None)
    return log


def test_running_step_is_answered_after_the_next_launch():
    # s0's device work outlasts the arrival of s1: s1 is launched first, then s0 answered
    log = run_loop({"s0": FakeEvent(10**6), "s1": FakeEvent(0)}, [0, 5, 5])
    assert log.index(("launch", "s1")) < log.index(("collect", "s0"))
    assert log[-1] == ("answer", 2)
    assert [e for e in log if e[0] == "answer"] == [("answer", 0), ("answer", 1), ("answer", 2)]


def test_finished_step_with_nothing_queued_is_answered_before_the_next_launch():
    # s0 completes before s1 arrives: answered while waiting, then s1 is launched
    log = run_loop({"s0": FakeEvent(2), "s1": FakeEvent(0)}, [0, 10**3, 10**3])
    assert log.index(("answer", 0)) < log.index(("launch", "s1"))


def test_host_device_step_is_answered_at_once():
    # no event: the launch computed it; answered before s1 is even read
    log = run_loop({}, [0, 0, 0])
    assert log[:3] == [("launch", "s0"), ("collect", "s0"), ("answer", 0)]


def test_wait_returns_on_message_or_completion_or_without_query():
    ring = FakeRing([None], [3])
    _await_message_or_step(ring, FakeStep("a", [], FakeEvent(10**6)), lambda: None)
    assert ring.polls == 4                      # the message arrived first
    ring = FakeRing([None], [10**6])
    event = FakeEvent(3)
    _await_message_or_step(ring, FakeStep("a", [], event), lambda: None)
    assert event.polls_until_done == -1          # the step completed first
    _await_message_or_step(ring, FakeStep("a", [], object()), lambda: None)   # no query()
