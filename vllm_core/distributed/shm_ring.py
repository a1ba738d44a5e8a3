"""A single-writer, many-reader broadcast ring over ``multiprocessing.shared_memory``.

The multiprocess executor writes each step's ``SchedulerOutput`` (pickled) once; every worker
reads the same bytes. No pipe per worker, no per-worker pickling.

Layout: ``num_slots`` slots of ``HEADER + slot_bytes`` bytes. A slot header is
``seq: int64 | nbytes: int64 | more: uint8 | read flag per reader: uint8 * n_readers``.
Protocol (message chunk number ``m`` goes to slot ``m % num_slots``):

- writer: wait until the slot is free (never written, or every reader's flag is 1), write the
  payload, ``nbytes`` and ``more``, clear the reader flags, then publish ``seq = m + 1``;
- reader ``i``: wait until ``seq == m + 1``, copy the payload, then set its flag to 1.

A message larger than a slot is split over consecutive slots (``more = 1`` on all but the
last). The header fields are written and read with single aligned stores/loads; the
publish-after-payload order relies on the x86-64 (TSO) store order the executor runs on.
Waits spin briefly, then sleep in growing steps (at most ``max_sleep_s``), and call
``check`` (which raises to abort: a dead peer) at least every ``check_every_s``; they raise
``TimeoutError`` after ``timeout_s``. The creator unlinks the segment (``close``); readers only
detach.
"""

from __future__ import annotations

import os
import struct
import time
import uuid
from collections.abc import Callable
from multiprocessing import shared_memory

_HDR = struct.Struct("<qqB")
_ALIGN = 64


def _header_size(n_readers: int) -> int:
    return -(-(_HDR.size + n_readers) // _ALIGN) * _ALIGN


def _wait(ready: Callable[[], bool], timeout_s: float | None,
          check: Callable[[], None] | None, what: str, max_sleep_s: float = 0.002,
          check_every_s: float = 0.5) -> None:
    if ready():
        return
    start = time.monotonic()
    last_check = start
    sleep = 0.0
    while not ready():
        now = time.monotonic()
        if timeout_s is not None and now - start > timeout_s:
            raise TimeoutError(f"{what}: nothing after {timeout_s:.0f} s")
        if check is not None and now - last_check > check_every_s:
            check()
            last_check = now
        if now - start < 0.001:
            os.sched_yield()
        else:
            sleep = min(max_sleep_s, sleep * 2 or 0.00005)
            time.sleep(sleep)


class ShmRing:
    """One end of the ring: ``ShmRing.create(...)`` (the writer, owner of the segment) or
    ``ShmRing.attach(spec, reader_index)`` (a reader)."""

    def __init__(self, shm: shared_memory.SharedMemory, n_readers: int, num_slots: int,
                 slot_bytes: int, reader_index: int | None, owner: bool) -> None:
        self.shm = shm
        self.n_readers = n_readers
        self.num_slots = num_slots
        self.slot_bytes = slot_bytes
        self.reader_index = reader_index
        self.owner = owner
        self.header = _header_size(n_readers)
        self.stride = self.header + slot_bytes
        self._next = 0                     # next chunk number to write / read
        self._closed = False

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(cls, n_readers: int, num_slots: int = 8, slot_bytes: int = 1 << 20) -> ShmRing:
        """A new zeroed segment named ``vllm_core_<pid>_<random>`` (the writer's end)."""
        header = _header_size(n_readers)
        name = f"vllm_core_{os.getpid()}_{uuid.uuid4().hex[:12]}"
        shm = shared_memory.SharedMemory(name=name, create=True,
                                         size=num_slots * (header + slot_bytes))
        shm.buf[:num_slots * (header + slot_bytes)] = bytes(num_slots * (header + slot_bytes))
        return cls(shm, n_readers, num_slots, slot_bytes, None, owner=True)

    @property
    def spec(self) -> tuple[str, int, int, int]:
        """What a reader needs to attach: (name, n_readers, num_slots, slot_bytes)."""
        return (self.shm.name, self.n_readers, self.num_slots, self.slot_bytes)

    @classmethod
    def attach(cls, spec: tuple[str, int, int, int], reader_index: int) -> ShmRing:
        """Reader ``reader_index`` of an existing ring. Readers are processes spawned by the
        creator, so they share its resource tracker (Python < 3.13 registers attached
        segments: the same name, kept once); only the creator unlinks the segment, and the
        tracker unlinks it if the creator is killed before ``close``."""
        name, n_readers, num_slots, slot_bytes = spec
        shm = shared_memory.SharedMemory(name=name, create=False)
        return cls(shm, n_readers, num_slots, slot_bytes, reader_index, owner=False)

    # ------------------------------------------------------------------ slot fields
    def _base(self, chunk: int) -> int:
        return (chunk % self.num_slots) * self.stride

    def _seq(self, base: int) -> int:
        return struct.unpack_from("<q", self.shm.buf, base)[0]

    def _all_read(self, base: int) -> bool:
        off = base + _HDR.size
        return bytes(self.shm.buf[off:off + self.n_readers]) == b"\x01" * self.n_readers

    # ------------------------------------------------------------------ writer
    def write(self, payload: bytes, timeout_s: float | None = None,
              check: Callable[[], None] | None = None) -> None:
        """Broadcast ``payload`` to every reader (blocks while the ring is full)."""
        view = memoryview(payload)
        total = len(view)
        pos = 0
        while True:
            chunk = self._next
            base = self._base(chunk)
            if chunk >= self.num_slots:          # the slot held chunk - num_slots before
                _wait(lambda base=base: self._all_read(base), timeout_s, check,
                      "shared-memory ring: a worker did not read its message")
            n = min(self.slot_bytes, total - pos)
            more = pos + n < total
            buf = self.shm.buf
            buf[base + self.header: base + self.header + n] = view[pos:pos + n]
            struct.pack_into("<q", buf, base + 8, n)
            struct.pack_into("<B", buf, base + 16, 1 if more else 0)
            buf[base + _HDR.size: base + _HDR.size + self.n_readers] = bytes(self.n_readers)
            struct.pack_into("<q", buf, base, chunk + 1)        # publish
            self._next += 1
            pos += n
            if not more:
                return

    # ------------------------------------------------------------------ reader
    def poll(self) -> bool:
        """Whether a message is waiting for this reader."""
        return self._seq(self._base(self._next)) == self._next + 1

    def read(self, timeout_s: float | None = None,
             check: Callable[[], None] | None = None) -> bytes:
        """The next message (blocks until the writer publishes it)."""
        parts = []
        while True:
            chunk = self._next
            base = self._base(chunk)
            _wait(lambda base=base, chunk=chunk: self._seq(base) == chunk + 1, timeout_s, check,
                  "shared-memory ring: no message from the executor")
            buf = self.shm.buf
            _, n, more = _HDR.unpack_from(buf, base)
            parts.append(bytes(buf[base + self.header: base + self.header + n]))
            buf[base + _HDR.size + self.reader_index] = 1
            self._next += 1
            if not more:
                return parts[0] if len(parts) == 1 else b"".join(parts)

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        """Detach; the creator also unlinks the segment. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self.shm.close()
        except BufferError:  # pragma: no cover - a view still alive
            pass
        if self.owner:
            try:
                self.shm.unlink()
            except FileNotFoundError:
                pass
