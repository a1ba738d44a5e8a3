"""``CudaModelRunner``: the core ``ModelRunner`` on an NVIDIA GPU.

The request table, step plan, staging buffers, async pipeline and sampling live in the core;
this subclass fills the platform hooks (API 2.0):

* ``pin_memory``: inputs are staged in pinned memory and uploaded without blocking;
* ``new_step_event``: CUDA events guard the staging memory and the sampled ids, so the host
  prepares step N+1 while the GPU runs step N;
* ``padded_shape`` / ``run_forward`` / ``capture_graphs``: decode-only steps whose every request
  samples replay a CUDA graph (``graphs.DecodeGraphs``) of the smallest captured batch size
  that holds them, padded by the core's ``pad_inputs``. Graphs are captured only for a backend
  that declares ``supports_graph_capture``; its ``build_for_capture`` fixes the launch plan.
  With speculative decoding (k drafts) a second set, the verification graphs, holds
  ``k + 1`` tokens per request: a step whose every token is a logits row and whose requests
  have at most ``k + 1`` tokens each (verifying requests and plain decodes, any mix) replays
  the graph of the smallest size that holds its requests, for the captured batch sizes up to
  the speculation limit (``disable_by_batch_size``; 64 when it is 0) whose tokens fit the
  step buffers and ``max_model_len``. Not for a proposer that reads the target's hidden states
  (EAGLE), nor on a backend without ``supports_verify_graph_capture``.
  With tensor parallelism a graph holds the forward (its all-reduces are the TP group's
  graph-safe ones, ``CudaCommunicator``) and this rank's vocabulary range of the logits; the
  logits are gathered on TP rank 0 after the replay (``model.gather_logits``, NCCL, eager).
  With pipeline parallelism every stage captures the same sizes (so all stages pad a step
  alike and the sent and received row counts agree); send/recv stay outside the graph. A
  stage other than the first copies the received ``IntermediateTensors`` into static inputs
  before the replay, a stage other than the last replays into static outputs that the core
  then sends; the last stage returns logits (``stage_buffers.StageGraphBuffers``).
  Verification graphs are not captured under pipeline parallelism (those steps run eager).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from vllm_core.attention.backend import CommonAttentionMetadata
from vllm_core.worker.model_runner import ForwardOutput, ModelRunner, StepInputs, StepShape
from vllm_core.worker.step_plan import StepPlan
from vllm_core_cuda.graphs import DecodeGraphs
from vllm_core_cuda.stage_buffers import StageGraphBuffers, stage_forward

# Verification graphs when speculation is never switched off (disable_by_batch_size 0): up to
# this many requests (their logits rows, k + 1 per request, are held in the graph's buffer).
FORCED_SPEC_GRAPH_LIMIT = 64


class CudaModelRunner(ModelRunner):
    """See the module docstring. ``graph_sizes`` (empty with ``enforce_eager`` or a backend that
    cannot be captured) are the decode batch sizes captured by ``capture_graphs``, into
    ``graphs_cls`` sets (a test may name a stand-in that replays by re-running the recorded
    forward over the same static buffers)."""

    pin_memory: ClassVar[bool] = True
    graphs_cls: ClassVar[type[DecodeGraphs]] = DecodeGraphs
    native_bitmask_kernel: ClassVar[bool] = True
    graphs: DecodeGraphs | None = None
    verify_graphs: DecodeGraphs | None = None
    stage_buffers: StageGraphBuffers | None = None     # pipeline parallelism: static I/O

    def new_step_event(self) -> Any | None:
        return torch.cuda.Event()

    def padded_shape(self, plan: StepPlan) -> StepShape | None:
        if self.graphs is None or len(plan.logits_indices) != plan.num_tokens:
            return None
        if plan.is_decode_only:
            size = self.graphs.padded_size(plan.num_reqs)
            return None if size is None else StepShape(size, size, size)
        vg = self.verify_graphs
        if vg is None or int(plan.num_scheduled.max()) > vg.query_len:
            return None
        size = vg.padded_size(plan.num_reqs)
        if size is None:
            return None
        tokens = size * vg.query_len
        return StepShape(tokens, size + 1, tokens, max_query_len=vg.query_len)

    def run_forward(self, plan: StepPlan, inputs: StepInputs,
                    shape: StepShape | None) -> ForwardOutput:
        if shape is None:
            return super().run_forward(plan, inputs, shape)
        stage = self.stage_buffers
        if stage is not None and stage.takes_input:     # received outside the graph
            stage.load(inputs.intermediate)
        if shape.max_query_len > 1:
            logits = self.verify_graphs.replay(shape.num_reqs - 1)
        else:
            logits = self.graphs.replay(shape.num_reqs)
        if stage is not None and stage.gives_output:    # sent by the core after this
            return ForwardOutput(hidden=stage.outputs(shape.num_tokens), logits=None)
        if self.parallel.tp_size > 1:      # the graph holds this rank's vocabulary range only
            logits = self.model.gather_logits(logits)
        return ForwardOutput(hidden=None, logits=logits)

    def capture_graphs(self) -> float:
        """Capture the decode graphs, then the verification graphs when speculative decoding
        allows them (no-op without sizes). Returns the capture seconds."""
        if not self.graph_sizes:
            return 0.0
        if not self.kv_caches:
            raise RuntimeError("initialize_cache must run before capture_graphs")
        par = self.parallel
        width = self.arch.vocab_size if par.is_last_stage else None
        if par.is_last_stage and par.tp_size > 1:   # local logits; gathered after replay
            probe = torch.zeros(1, self.arch.hidden_size, dtype=self.dtype, device=self.device)
            with torch.inference_mode():
                width = self.model.compute_local_logits(probe).shape[-1]
        if par.pp_size > 1:                          # decode graphs only: one row a request
            self.stage_buffers = StageGraphBuffers.allocate(
                self.graph_sizes[-1], self.arch.hidden_size, self.dtype, self.device,
                par.is_first_stage, par.is_last_stage)
        self._graph_metadata: dict[int, dict[int, Any]] = {}   # keeps the launch plans alive
        self.graphs = self.graphs_cls(self.graph_sizes, width, self.device)
        seconds = self._capture(self.graphs)
        sizes, q = self.verify_graph_sizes()
        if sizes:
            self.verify_graphs = self.graphs_cls(sizes, width, self.device, query_len=q)
            seconds += self._capture(self.verify_graphs, pool=self.graphs.pool)
        return seconds

    def verify_graph_sizes(self) -> tuple[list[int], int]:
        """``(sizes, q)``: the batch sizes of the verification graphs (empty when none are
        captured) and their tokens per request. None with pipeline parallelism (verification
        steps run eager there; the stage graphs are the decode ones)."""
        spec = self.config.speculative
        if (spec is None or not self.attn_backend.supports_verify_graph_capture
                or self.parallel.pp_size > 1
                or (self.proposer is not None and self.proposer.needs_target_hidden)):
            return [], 1
        q = spec.num_speculative_tokens + 1
        limit = spec.max_batch_size or FORCED_SPEC_GRAPH_LIMIT
        max_tokens = min(self.max_num_tokens, int(self.config.model.max_model_len))
        return [s for s in self.graph_sizes if s <= limit and s * q <= max_tokens], q

    def _capture(self, graphs: DecodeGraphs, pool: object | None = None) -> float:
        """Capture ``graphs`` (``query_len`` tokens per request) over dummy padded batches in
        the persistent buffers: decodes (``pad_decode_batch``) or verification batches
        (``pad_token_batch``)."""
        q = graphs.query_len
        max_len = int(self.config.model.max_model_len)
        metadata = self._graph_metadata.setdefault(q, {})
        b = self.buffers

        def prepare(size: int) -> None:
            b.query_start_loc_np[0] = 0
            if q == 1:
                b.pad_decode_batch(0, size, self.pad_slot)
            else:
                b.pad_token_batch(0, 0, size, size * q, self.pad_slot)
            b.upload(size * q, size if q == 1 else size + 1, 0)
            torch.cuda.current_stream(self.device).synchronize()   # staging reused next size

        stage = self.stage_buffers

        def forward(size: int) -> torch.Tensor | None:
            md = metadata.get(size)
            if md is None:
                md = metadata[size] = self.builder.build_for_capture(
                    self._graph_common(size, max_len, q), max_len)
            tokens = size * q
            return stage_forward(self.model, b.input_ids[:tokens], b.positions[:tokens],
                                 self.kv_caches, md, stage)

        mode = "thread_local" if self.parallel.world_size > 1 else "global"
        return graphs.capture(prepare, forward, capture_error_mode=mode, pool=pool)

    def _graph_common(self, size: int, max_len: int,
                      query_len: int = 1) -> CommonAttentionMetadata:
        """A padded batch of ``size`` requests over the persistent device buffers: a decode
        batch (``query_len`` 1) or a verification batch of ``size * query_len`` tokens over
        ``size + 1`` requests (``StepBuffers.pad_token_batch``)."""
        b = self.buffers
        tokens = size * query_len
        reqs = size if query_len == 1 else size + 1
        return CommonAttentionMetadata(
            query_start_loc=b.query_start_loc[:reqs + 1], seq_lens=b.seq_lens[:reqs],
            context_lens=b.context_lens[:reqs], block_table=b.block_table[:reqs],
            slot_mapping=b.slot_mapping[:tokens],
            query_start_loc_cpu=b.query_start_loc_cpu[:reqs + 1].clone(),
            seq_lens_cpu=torch.full((reqs,), max_len),
            num_reqs=reqs, num_tokens=tokens, num_decodes=size if query_len == 1 else 0,
            max_query_len=query_len, max_seq_len=max_len, block_size=self.block_size)
