"""Applying a grammar bitmask to logits, on the logits' device, without a host sync.

The bitmask convention is ``vllm_core.structured_output.backend``'s: int32 words, bit ``t % 32``
of word ``t // 32`` set iff token ``t`` is allowed. Disallowed logits become ``-inf``; tokens
past the bitmask's width (a vocabulary padded beyond it) are disallowed.

``apply_token_bitmask`` uses xgrammar's kernel when xgrammar is installed and the caller says
the logits live where it serves them (``use_xgrammar``: host memory or CUDA; the runner knows,
see ``ModelRunner.native_bitmask_kernel``); otherwise a vectorised torch fallback (unpack the
bits with shifts, ``masked_fill``) that runs on any device. Neither loops over the vocabulary
in Python.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


def _xgrammar_apply() -> Any | None:
    try:
        from xgrammar import apply_token_bitmask_inplace
    except ImportError:  # pragma: no cover - xgrammar is a core dependency
        return None
    return apply_token_bitmask_inplace


def apply_token_bitmask_torch(logits: torch.Tensor, bitmask: torch.Tensor,
                              indices: torch.Tensor | None = None) -> None:
    """In place: ``logits[indices[i]]`` keeps only the tokens allowed by ``bitmask[i]``
    (``indices`` None: row i of both). Vectorised; works on any device."""
    vocab = logits.shape[-1]
    shifts = torch.arange(32, device=bitmask.device, dtype=torch.int32)
    bits = (bitmask.unsqueeze(-1) >> shifts) & 1                    # [R, W, 32]
    allowed = bits.reshape(bitmask.shape[0], -1).bool()
    if allowed.shape[1] < vocab:
        pad = torch.zeros(allowed.shape[0], vocab - allowed.shape[1], dtype=torch.bool,
                          device=allowed.device)
        allowed = torch.cat([allowed, pad], dim=1)
    allowed = allowed[:, :vocab]
    if indices is None:
        logits.masked_fill_(~allowed, float("-inf"))
    else:
        logits[indices] = logits[indices].masked_fill(~allowed, float("-inf"))


def apply_token_bitmask(logits: torch.Tensor, bitmask: torch.Tensor,
                        indices: Sequence[int] | None = None, *,
                        use_xgrammar: bool = True, rows_match: bool = False) -> None:
    """In place on ``logits`` ([B, V] float): row ``indices[i]`` (or row i) masked by
    ``bitmask[i]`` ([R, ceil(V/32)] int32, on the logits' device). ``rows_match``: the mask
    already has one row per logits row and ``indices`` only selects which rows to apply
    (``bitmask[indices[i]]`` masks ``logits[indices[i]]``), xgrammar's own convention."""
    apply = _xgrammar_apply() if use_xgrammar else None
    eligible = (apply is not None and logits.dtype == torch.float32 and logits.is_contiguous()
                and bitmask.shape[1] * 32 >= logits.shape[-1])
    rows = list(indices) if indices is not None else None
    if rows is not None and not rows_match and rows == list(range(logits.shape[0])):
        rows = None                                  # every row, in order
    if eligible:
        if rows is not None and not rows_match:
            # xgrammar pairs bitmask row i with logits row i: scatter the rows first.
            full = torch.full((logits.shape[0], bitmask.shape[1]), -1, dtype=torch.int32,
                              device=bitmask.device)
            full[torch.as_tensor(rows, dtype=torch.long, device=bitmask.device)] = bitmask
            bitmask = full
        apply(logits, bitmask, indices=rows)
        return
    if rows is None:
        apply_token_bitmask_torch(logits, bitmask)
        return
    index = torch.as_tensor(rows, dtype=torch.long, device=logits.device)
    apply_token_bitmask_torch(logits, bitmask[index.to(bitmask.device)] if rows_match
                              else bitmask, index)


class BitmaskStaging:
    """Reused host memory for the per-step grammar bitmask in logits-row order (pinned on an
    accelerator, so the upload does not wait for the device to reach it).

    Two buffers of ``[max_rows, width]`` int32, allocated on first use, taken in turn: the one
    handed out for step N is next written for step N+2, and by then step N has been collected
    (at most one step is in flight), so its upload has finished."""

    def __init__(self, width: int, max_rows: int, pin_memory: bool) -> None:
        self.width = width
        self.max_rows = max_rows
        self.pin_memory = pin_memory
        self._buffers: list[torch.Tensor] = []
        self._next = 0

    def take(self, num_rows: int) -> torch.Tensor:
        """A ``[num_rows, width]`` host tensor whose contents are undefined."""
        if num_rows > self.max_rows:
            return torch.empty((num_rows, self.width), dtype=torch.int32)
        if not self._buffers:
            self._buffers = [torch.empty((self.max_rows, self.width), dtype=torch.int32,
                                         pin_memory=self.pin_memory) for _ in range(2)]
        buf = self._buffers[self._next]
        self._next ^= 1
        return buf[:num_rows]


def stage_grammar_bitmask(row_req_ids: Sequence[str], scheduler_output: Any,
                          staging: BitmaskStaging | None = None
                          ) -> tuple[torch.Tensor, list[int] | None] | None:
    """The step's grammar rows in logits-row order on the host: ``(mask, indices)`` where
    ``mask[i]`` masks logits row ``i`` (row ``i`` samples for ``row_req_ids[i]``) and
    ``indices`` lists the constrained rows (None: all of them; the others are -1). None when
    no row is constrained. ``staging``: reused host memory (None: a fresh tensor)."""
    bitmask = getattr(scheduler_output, "grammar_bitmask", None)
    if bitmask is None:
        return None
    position = {req_id: i for i, req_id in enumerate(row_req_ids)}
    rows: list[int] = []
    keep: list[int] = []
    for j, req_id in enumerate(scheduler_output.structured_output_req_ids):
        i = position.get(req_id)
        if i is not None:
            rows.append(i)
            keep.append(j)
    if not rows:
        return None
    num_rows, width = len(row_req_ids), bitmask.shape[1]
    if staging is not None and staging.width == width:
        host_t = staging.take(num_rows)
    else:
        host_t = torch.empty((num_rows, width), dtype=torch.int32)
    host = host_t.numpy()
    if len(rows) == num_rows:             # every row constrained: reorder, no indices
        if rows == keep:
            host[:] = bitmask
        else:                             # one gather straight into the staging rows
            perm = np.empty(num_rows, dtype=np.intp)
            perm[rows] = keep
            np.take(bitmask, perm, axis=0, out=host)
        return host_t, None
    host.fill(-1)                         # row i of the mask <-> logits row i (host scatter)
    host[rows] = bitmask[keep]
    return host_t, rows


def apply_grammar_bitmask(logits: torch.Tensor, row_req_ids: Sequence[str],
                          scheduler_output: Any, native: bool = True,
                          staging: BitmaskStaging | None = None) -> None:
    """The runner's hook, between ``compute_logits`` and the sampler: mask the rows of
    ``logits`` (row ``i`` samples for request ``row_req_ids[i]``) that have a grammar row in
    ``scheduler_output.grammar_bitmask``. No-op when the step has no bitmask. ``native``:
    xgrammar's kernel serves the logits' device. ``staging``: reused host memory for the
    rows in logits order (pinned: the upload does not wait for the device)."""
    staged = stage_grammar_bitmask(row_req_ids[:logits.shape[0]], scheduler_output, staging)
    if staged is None:
        return
    host_t, indices = staged
    device_mask = host_t.to(logits.device, non_blocking=True)
    apply_token_bitmask(logits, device_mask, indices, use_xgrammar=native, rows_match=True)
