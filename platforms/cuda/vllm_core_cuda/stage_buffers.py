"""``StageGraphBuffers``: the static pipeline tensors of a stage's CUDA graphs.

A graph reads and writes fixed addresses, but under pipeline parallelism a stage's inputs
(the previous stage's hidden states and residual) arrive by ``recv`` into fresh tensors and
its outputs leave by ``send``. Send and recv stay outside the graph (NCCL point-to-point
inside a capture is not safe); around the replay:

* a stage other than the first copies the received ``IntermediateTensors`` into
  ``hidden_in`` / ``residual_in`` (``load``) before the replay; the graph was captured reading
  ``inputs(rows)``, views of those buffers;
* a stage other than the last captured its forward writing the model's
  ``IntermediateTensors`` into ``hidden_out`` / ``residual_out`` (``store``, inside the graph);
  after the replay ``outputs(rows)`` are views of them, which the runner sends;
* the last stage returns logits as without pipeline parallelism (``DecodeGraphs.logits``).

Invariants: every buffer is ``[max_rows, hidden_size]`` in the model dtype, zero-initialised
(padding rows of a capture hold finite values); the first ``rows`` rows of a view are the
step's token rows, padding included (every stage pads a step to the same captured size, so
the sender's and receiver's row counts agree). The output views are overwritten by the next
replay: the runner sends them before it launches another step (send orders the stream after
the transfer), so reusing them is safe. Device-independent: the CPU tests use CPU tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vllm_core.model_executor.models.interface import IntermediateTensors


@dataclass(slots=True)
class StageGraphBuffers:
    """See the module docstring. ``hidden_in`` / ``residual_in`` are None on the first stage,
    ``hidden_out`` / ``residual_out`` None on the last."""

    max_rows: int
    hidden_in: torch.Tensor | None = None
    residual_in: torch.Tensor | None = None
    hidden_out: torch.Tensor | None = None
    residual_out: torch.Tensor | None = None

    @classmethod
    def allocate(cls, max_rows: int, hidden_size: int, dtype: torch.dtype,
                 device: torch.device, is_first_stage: bool,
                 is_last_stage: bool) -> StageGraphBuffers:
        """Buffers of ``max_rows`` rows for a stage (none for a single-stage model)."""
        if max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {max_rows}")

        def zeros() -> torch.Tensor:
            return torch.zeros(max_rows, hidden_size, dtype=dtype, device=device)

        buffers = cls(max_rows)
        if not is_first_stage:
            buffers.hidden_in, buffers.residual_in = zeros(), zeros()
        if not is_last_stage:
            buffers.hidden_out, buffers.residual_out = zeros(), zeros()
        return buffers

    @property
    def takes_input(self) -> bool:
        return self.hidden_in is not None

    @property
    def gives_output(self) -> bool:
        return self.hidden_out is not None

    def _check_rows(self, rows: int) -> None:
        if not 0 < rows <= self.max_rows:
            raise ValueError(f"{rows} rows do not fit the stage's graph buffers of "
                             f"{self.max_rows} rows")

    def inputs(self, rows: int) -> IntermediateTensors:
        """Views of the static inputs' first ``rows`` rows (what a captured forward reads)."""
        if self.hidden_in is None:
            raise RuntimeError("the first pipeline stage has no intermediate inputs")
        self._check_rows(rows)
        return IntermediateTensors(self.hidden_in[:rows], self.residual_in[:rows])

    def load(self, received: IntermediateTensors) -> None:
        """Copy the received tensors (``[rows, hidden]`` each, the padded step rows) into the
        static inputs, before the replay."""
        rows = received.hidden.shape[0]
        if received.residual.shape[0] != rows:
            raise ValueError(f"hidden has {rows} rows, residual "
                             f"{received.residual.shape[0]}")
        view = self.inputs(rows)
        view.hidden.copy_(received.hidden, non_blocking=True)
        view.residual.copy_(received.residual, non_blocking=True)

    def store(self, produced: IntermediateTensors) -> None:
        """Copy the forward's output into the static outputs (recorded into the graph)."""
        rows = produced.hidden.shape[0]
        view = self.outputs(rows)
        view.hidden.copy_(produced.hidden)
        view.residual.copy_(produced.residual)

    def outputs(self, rows: int) -> IntermediateTensors:
        """Views of the static outputs' first ``rows`` rows (what the runner sends)."""
        if self.hidden_out is None:
            raise RuntimeError("the last pipeline stage sends no intermediate tensors")
        self._check_rows(rows)
        return IntermediateTensors(self.hidden_out[:rows], self.residual_out[:rows])


def stage_forward(model: torch.nn.Module, input_ids: torch.Tensor, positions: torch.Tensor,
                  kv_caches: list[torch.Tensor], attn_metadata: object,
                  stage: StageGraphBuffers | None) -> torch.Tensor | None:
    """The forward a stage's graph records over ``len(input_ids)`` rows: the model reads the
    static inputs (``stage.inputs``) on a stage other than the first; a stage other than the
    last stores its ``IntermediateTensors`` in the static outputs (``stage.store``) and returns
    None; the last stage (or a model without pipeline parallelism, ``stage`` None) returns
    this rank's logits (``model.compute_local_logits``)."""
    rows = input_ids.shape[0]
    extra = {}
    if stage is not None and stage.takes_input:
        extra["intermediate"] = stage.inputs(rows)
    hidden = model(input_ids, positions, kv_caches, attn_metadata, **extra)
    if stage is not None and stage.gives_output:
        stage.store(hidden)
        return None
    return model.compute_local_logits(hidden)
