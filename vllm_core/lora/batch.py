"""``LoRABatch``: the per-step adapter index every LoRA layer of a model reads, and the torch
implementations of the batched LoRA product.

The runner sets it once per step (``LoRAManager.prepare_step``), before the forward; layers
only read it. ``token_slots[t]`` is the device slot of token ``t``'s adapter (-1: the base
model); padding tokens are -1. Two ways to apply ``y[t] += B[s] @ (A[s] @ x[t])`` with
``s = token_slots[t]``:

* ``segment`` (host devices): per adapter present in the step, gather its tokens (a slice when
  they are contiguous, as one request's are) and run two small matmuls; the cost follows the
  tokens that use an adapter, nothing is done for a base-only step.
* ``dense`` (accelerators without LoRA kernels; CUDA-graph safe): one shrink against every
  slot's ``A`` at once, the result masked to each token's own slot (``mask`` [T, S], a
  persistent buffer rewritten each step), then one expand over all slots. Fixed shapes, no
  host sync, no data-dependent control flow, so a captured graph replays it with the current
  step's mask. Its cost grows with the number of slots, used or not.
* ``sgmv`` (a platform's ``LoRAKernels``, e.g. the Triton plugin's): tokens grouped by slot
  once per step and cut into tiles of at most ``kernels.block_m`` tokens of one slot
  (``sorted_idx``; ``tile_slot`` / ``tile_row0`` / ``tile_end``: persistent device buffers,
  ``cdiv(max_tokens, block_m) + S`` tiles, the unused ones empty), then one shrink and one
  expand per shard launch over (tile, output tile); the kernels read the tiles on the device,
  so graphs replay them too.

Layout of a layer's stacked weights (``S`` slots, rank capacity ``R``, ``n`` output shards):
``a`` [S, n * R, in] (shard ``i``'s A in rows ``i*R .. i*R + r``, zero beyond the adapter's
rank), ``b`` [out, S, R] (row ``o`` of shard ``i`` uses shrink columns ``i*R .. (i+1)*R``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

MODES = ("segment", "dense", "sgmv")


class LoRAKernels(Protocol):
    """What a platform supplies for the ``sgmv`` mode (``LayerOps.lora_kernels()``)."""

    block_m: int            # the most tokens of one tile

    def shrink(self, x: torch.Tensor, a: torch.Tensor, out: torch.Tensor,
               sorted_idx: torch.Tensor, tile_slot: torch.Tensor, tile_row0: torch.Tensor,
               tile_end: torch.Tensor) -> None:
        """``out[t] = a[s_t] @ x[t]`` (float32 ``out`` [T, n*R], zeroed) for the tokens
        ``sorted_idx[tile_row0[i]:tile_end[i]]`` of every tile ``i`` (slot ``tile_slot[i]``)."""

    def expand(self, y: torch.Tensor, xa: torch.Tensor, b: torch.Tensor, rows: slice,
               col0: int, rank: int, sorted_idx: torch.Tensor, tile_slot: torch.Tensor,
               tile_row0: torch.Tensor, tile_end: torch.Tensor) -> None:
        """``y[t, rows] += b[rows, s_t] @ xa[t, col0:col0 + rank]`` for the tiles' tokens."""


@dataclass(eq=False)
class LoRABatch:
    """The step's adapter index (see the module docstring). ``max_tokens`` bounds a step."""

    num_slots: int
    max_tokens: int
    device: torch.device
    dtype: torch.dtype
    mode: str = "segment"
    pin_memory: bool = False
    kernels: Any = None                       # LoRAKernels, for the "sgmv" mode
    groups: list[tuple[int, slice | torch.Tensor]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"LoRA mode must be one of {MODES}, got {self.mode!r}")
        if self.mode == "sgmv" and self.kernels is None:
            raise ValueError("the sgmv LoRA mode needs the platform's LoRA kernels")
        s, dev, m = self.num_slots, self.device, self.max_tokens
        # sgmv: tokens grouped by slot, then tiles; one host staging buffer, one device buffer
        bm = self.kernels.block_m if self.kernels is not None else 1
        self._block_m = bm
        self.max_tiles = -(-m // bm) + s
        size = m + 3 * self.max_tiles
        self._seg_cpu = torch.zeros(size, dtype=torch.int64, pin_memory=self.pin_memory)
        self._seg = torch.zeros(size, dtype=torch.int64, device=dev)
        nt = self.max_tiles
        self.sorted_idx = self._seg[:m]
        self.tile_slot = self._seg[m:m + nt]
        self.tile_row0 = self._seg[m + nt:m + 2 * nt]
        self.tile_end = self._seg[m + 2 * nt:]
        self.token_slots_cpu = torch.full((self.max_tokens,), -1, dtype=torch.int64,
                                          pin_memory=self.pin_memory)
        self.token_slots = torch.full((self.max_tokens,), -1, dtype=torch.int64,
                                      device=self.device)
        self.mask = torch.zeros(self.max_tokens, self.num_slots, dtype=self.dtype,
                                device=self.device)
        self._is_slot = torch.zeros(self.max_tokens, self.num_slots, dtype=torch.bool,
                                    device=self.device)
        self._slot_ids = torch.arange(self.num_slots, device=self.device)

    def set_step(self, token_slots: np.ndarray, num_padded: int | None = None) -> None:
        """This step's slot per token (``num_padded`` >= len: rows beyond are padding)."""
        n = len(token_slots)
        total = max(n, num_padded or 0)
        if total > self.max_tokens:
            raise ValueError(f"LoRA step of {total} tokens exceeds {self.max_tokens}")
        if self.mode == "segment":
            self.groups = _groups(token_slots, self.device)
            return
        if self.mode == "sgmv":
            self._set_segments(np.asarray(token_slots, dtype=np.int64))
            return
        host = self.token_slots_cpu
        host[:n] = torch.from_numpy(np.asarray(token_slots, dtype=np.int64))
        host[n:total] = -1
        if total:
            self.token_slots[:total].copy_(host[:total], non_blocking=True)
            torch.eq(self.token_slots[:total, None], self._slot_ids[None, :],
                     out=self._is_slot[:total])
            self.mask[:total].copy_(self._is_slot[:total])

    def _set_segments(self, token_slots: np.ndarray) -> None:
        s, m, nt, bm = self.num_slots, self.max_tokens, self.max_tiles, self._block_m
        used = token_slots >= 0
        order = np.argsort(token_slots, kind="stable")[int((~used).sum()):]
        counts = np.bincount(token_slots[used], minlength=s)[:s]
        starts = np.cumsum(counts) - counts
        per = -(-counts // bm)                              # tiles of each slot
        n = int(per.sum())
        first = np.repeat(np.cumsum(per) - per, per)
        host = self._seg_cpu.numpy()
        host[:len(order)] = order
        host[m:m + nt] = 0
        host[m:m + n] = np.repeat(np.arange(s), per)                        # tile_slot
        host[m + nt:m + 2 * nt] = 0
        host[m + nt:m + nt + n] = (np.repeat(starts, per)
                                   + (np.arange(n) - first) * bm)           # tile_row0
        host[m + 2 * nt:] = 0
        host[m + 2 * nt:m + 2 * nt + n] = np.repeat(starts + counts, per)   # tile_end
        self._seg[:len(order)].copy_(self._seg_cpu[:len(order)], non_blocking=True)
        self._seg[m:].copy_(self._seg_cpu[m:], non_blocking=True)

    def add_lora(self, y: torch.Tensor, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                 shards: list[tuple[slice, int]], rank: int) -> torch.Tensor:
        """``y[t, rows] += B[s_t, rows] @ A[s_t] @ x[t]`` for each shard's ``rows``; returns
        ``y`` (updated in place)."""
        if self.mode == "segment":
            for slot, rows in self.groups:
                xa = x[rows] @ a[slot].t()
                for out_rows, i in shards:
                    delta = xa[:, i * rank:(i + 1) * rank] @ b[out_rows, slot].t()
                    if isinstance(rows, slice):
                        y[rows, out_rows] += delta
                    else:
                        y[rows, out_rows] = y[rows, out_rows] + delta
            return y
        t = x.shape[0]
        if self.mode == "sgmv":
            if x.stride(-1) != 1:
                x = x.contiguous()
            xa = torch.zeros(t, a.shape[1], dtype=torch.float32, device=x.device)
            k = self.kernels
            tiles = (self.sorted_idx, self.tile_slot, self.tile_row0, self.tile_end)
            k.shrink(x, a, xa, *tiles)
            for out_rows, i in shards:
                k.expand(y, xa, b, out_rows, i * rank, rank, *tiles)
            return y
        s = self.num_slots
        xa = (x @ a.reshape(s * a.shape[1], a.shape[2]).t()).view(t, s, a.shape[1])
        xa = xa * self.mask[:t, :, None]
        for out_rows, i in shards:
            part = xa[:, :, i * rank:(i + 1) * rank].reshape(t, s * rank)
            bi = b[out_rows]
            y[:, out_rows] += part @ bi.reshape(bi.shape[0], s * rank).t()
        return y


def _groups(token_slots: np.ndarray, device: torch.device
            ) -> list[tuple[int, slice | torch.Tensor]]:
    """(slot, rows) of every slot present; rows a slice when contiguous."""
    groups: list[tuple[int, slice | torch.Tensor]] = []
    if len(token_slots) == 0:
        return groups
    for slot in np.unique(token_slots).tolist():
        if slot < 0:
            continue
        idx = np.flatnonzero(token_slots == slot)
        if int(idx[-1]) - int(idx[0]) + 1 == len(idx):
            groups.append((slot, slice(int(idx[0]), int(idx[-1]) + 1)))
        else:
            groups.append((slot, torch.from_numpy(idx).to(device)))
    return groups
