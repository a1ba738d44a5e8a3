"""Counters the model runner keeps for benchmarks and metrics."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class KVWasteStats:
    """Allocated-but-unused KV slots of the scheduled requests, summed over decode-only steps."""

    steps: int = 0
    allocated_slots: int = 0
    used_slots: int = 0
    last_fraction: float = 0.0

    def record(self, allocated: int, used: int) -> None:
        self.steps += 1
        self.allocated_slots += allocated
        self.used_slots += used
        self.last_fraction = 1.0 - used / allocated if allocated else 0.0

    @property
    def mean_fraction(self) -> float:
        return 1.0 - self.used_slots / self.allocated_slots if self.allocated_slots else 0.0

    def as_dict(self) -> dict[str, float]:
        return {"kv_waste_mean": round(self.mean_fraction, 5),
                "kv_waste_last": round(self.last_fraction, 5), "kv_waste_steps": self.steps}


@dataclass(slots=True)
class StepTiming:
    """Host wall time inside ``execute_model`` and, of it, the wait for the sampled ids (the
    device time the host did not overlap)."""

    steps: int = 0
    execute_s: float = 0.0
    wait_s: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {"runner_steps": self.steps, "runner_execute_s": round(self.execute_s, 3),
                "runner_wait_s": round(self.wait_s, 3)}
