"""``TpuModelRunner``: the core ModelRunner with every device input padded to a bucket.

XLA traces a step lazily and compiles one graph per distinct (shapes, ops) trace, so a step
must never expose a data-dependent shape to the device. The core lays the step out
(``StepPlan``) and stages it; this runner's hooks:

1. ``padded_shape``: the token axis padded to ``T_b = buckets.token_bucket(T)``, the request
   and logits axes to ``R_b = buckets.request_bucket(max(R, L))``; block tables always have
   ``pages_per_request = ceil(max_model_len / block_size)`` columns;
2. ``pad_inputs``: padding tokens (id 0, position 0, KV slot 0 in the null block) belong to no
   request; padding requests are empty (query start = T, length 0); padding logits rows read
   token 0;
3. ``upload_inputs`` / ``run_forward``: fresh device tensors of those shapes, the model forward
   over ``T_b`` tokens, the logits of ``R_b`` rows, then one ``torch_xla.sync()``: the whole step
   is a single graph keyed by ``(T_b, R_b)``. The logits come back to the host, where the core
   sampler runs (``sampling_device``): sampling options never reach the graph, so they cannot
   multiply the graph count. Prompt logprobs score the hidden states on the host with a host
   copy of the output projection.

Invariant: the set of graphs is ``Buckets.graphs()``; ``compile_or_warm_up`` compiles all of
them up front (when ``precompile``), so serving never compiles. Async scheduling is off on this
platform (inputs are rebuilt per step, see ``TpuPlatform.check_and_update_config``).
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from vllm_core.attention.backend import AttentionBackend, CommonAttentionMetadata
from vllm_core.config import EngineConfig
from vllm_core.devices import HOST
from vllm_core.logger import init_logger
from vllm_core.model_executor.layers.ops import LayerOps
from vllm_core.worker.model_runner import ForwardOutput, ModelRunner, StepInputs, StepShape
from vllm_core.worker.step_plan import StepPlan, plan_for_lengths
from vllm_core_tpu import runtime
from vllm_core_tpu.buckets import Buckets

logger = init_logger(__name__)


class TpuModelRunner(ModelRunner):
    """See the module docstring. ``buckets`` defaults to the config's limits."""

    pad_slot: ClassVar[int] = 0          # XLA's scatter cannot skip a slot: write the null block

    def __init__(self, config: EngineConfig, device: torch.device,
                 attn_backend: type[AttentionBackend], ops: LayerOps | None = None,
                 buckets: Buckets | None = None, **kwargs: Any) -> None:
        super().__init__(config, device, attn_backend, ops, **kwargs)
        sched = config.scheduler
        self.buckets = buckets or Buckets.for_limits(int(sched.max_num_batched_tokens or 512),
                                                     sched.max_num_seqs)
        self.graphs_run: set[tuple[int, int]] = set()
        self.warmup_compiles = 0
        self.warmup_seconds = 0.0
        self._host_lm_weight: torch.Tensor | None = None

    # ------------------------------------------------------------------ hooks
    @property
    def sampling_device(self) -> torch.device:
        return HOST

    def padded_shape(self, plan: StepPlan) -> StepShape:
        t_pad = self.buckets.token_bucket(max(plan.num_tokens, 1))
        r_pad = self.buckets.request_bucket(max(plan.num_reqs, len(plan.logits_indices), 1))
        return StepShape(t_pad, r_pad, r_pad)

    def pad_inputs(self, plan: StepPlan, shape: StepShape) -> None:
        b, t, r = self.buffers, plan.num_tokens, plan.num_reqs
        for arr, value in ((b.input_ids_np, 0), (b.positions_np, 0),
                           (b.slot_mapping_np, self.pad_slot)):
            arr[t:shape.num_tokens] = value
        b.query_start_loc_np[r + 1:shape.num_reqs + 1] = t
        b.seq_lens_np[r:shape.num_reqs] = 0
        b.context_lens_np[r:shape.num_reqs] = 0
        b.block_table_np[r:shape.num_reqs] = 0
        b.logits_indices_np[len(plan.logits_indices):shape.num_logits] = 0

    def upload_inputs(self, plan: StepPlan, shape: StepShape | None) -> StepInputs:
        """Host metadata (the XLA attention builders move what they need) and fresh device
        tensors of the bucket shapes."""
        b, dev = self.buffers, self.device
        t, r = shape.num_tokens, shape.num_reqs
        qsl, seq = b.query_start_loc_cpu[:r + 1].clone(), b.seq_lens_cpu[:r].clone()
        common = CommonAttentionMetadata(
            query_start_loc=qsl, seq_lens=seq, context_lens=b.context_lens_cpu[:r].clone(),
            block_table=b.block_table_cpu[:r].clone(), slot_mapping=b.slot_mapping_cpu[:t].clone(),
            query_start_loc_cpu=qsl, seq_lens_cpu=seq, num_reqs=plan.num_reqs,
            num_tokens=plan.num_tokens, num_decodes=plan.num_decodes,
            max_query_len=int(plan.num_scheduled.max(initial=0)),
            max_seq_len=int(seq.max()), block_size=self.block_size)
        return StepInputs(input_ids=b.input_ids_cpu[:t].clone().to(dev),
                          positions=b.positions_cpu[:t].clone().to(dev),
                          logits_indices=b.logits_indices_cpu[:shape.num_logits].clone().to(dev),
                          common=common)

    def run_forward(self, plan: StepPlan, inputs: StepInputs,
                    shape: StepShape | None, kv_caches: list[torch.Tensor] | None = None
                    ) -> ForwardOutput:
        attn_metadata = self.builder.build(inputs.common)
        hidden = self.model(inputs.input_ids, inputs.positions,
                            self.kv_caches if kv_caches is None else kv_caches, attn_metadata)
        logits = self.model.compute_logits(hidden[inputs.logits_indices])
        runtime.sync()
        self.graphs_run.add((shape.num_tokens, shape.num_reqs))
        return ForwardOutput(hidden=hidden, logits=logits.cpu())

    def prompt_logprobs(self, plan: StepPlan, hidden: torch.Tensor) -> dict:
        return super().prompt_logprobs(plan, hidden.cpu())

    def prompt_logits(self, hidden_rows: torch.Tensor) -> torch.Tensor:
        if self._host_lm_weight is None:
            head = getattr(self.model, "lm_head", None)
            weight = head.weight if head is not None else self.model.model.embed_tokens.weight
            self._host_lm_weight = weight.detach().cpu().float()
        return F.linear(hidden_rows.float(), self._host_lm_weight)

    # ------------------------------------------------------------------ warm-up / profiling
    def dummy_plan(self, num_tokens_padded: int, num_reqs_padded: int) -> StepPlan:
        """A step of exactly these bucket shapes: ``num_reqs_padded`` requests sharing the
        tokens, every one sampling, block tables all null (KV writes land in block 0)."""
        reqs = min(num_reqs_padded, num_tokens_padded)
        per = [num_tokens_padded // reqs] * reqs
        per[-1] += num_tokens_padded - sum(per)
        per = np.minimum(per, self.max_blocks_per_req * self.block_size)
        plan = plan_for_lengths(np.zeros(reqs, dtype=np.int64), per,
                                np.zeros((reqs, self.max_blocks_per_req), dtype=np.int64),
                                self.block_size)
        shape = self.padded_shape(plan)
        if (shape.num_tokens, shape.num_reqs) != (num_tokens_padded, num_reqs_padded):
            raise ValueError(f"cannot form a batch of buckets ({num_tokens_padded}, "
                             f"{num_reqs_padded}) under max_model_len")
        return plan

    def _run_dummy(self, t: int, r: int, kv_caches: list[torch.Tensor]) -> None:
        plan = self.dummy_plan(t, r)
        shape = self.padded_shape(plan)
        self.buffers.stage(plan, self.table)
        self.pad_inputs(plan, shape)
        self.run_forward(plan, self.upload_inputs(plan, shape), shape, kv_caches)

    @torch.no_grad()
    def profile_run(self) -> None:
        """The largest graph without a KV cache (activation peak)."""
        t, r = self.buckets.graphs()[-1]
        self._run_dummy(t, r, [torch.empty(0, device=self.device)] * self.arch.num_hidden_layers)

    @torch.no_grad()
    def compile_or_warm_up(self, precompile: bool = True) -> int:
        """Run every bucket graph once over the allocated KV cache (compiling each), and log
        the bucket list and the compile count. Returns the compiles this warm-up caused."""
        start_compiles = runtime.compile_count()
        start = time.perf_counter()
        if precompile:
            for t, r in self.buckets.graphs():
                self._run_dummy(t, r, self.kv_caches)
            runtime.wait_device_ops()
        self.warmup_compiles = runtime.compile_count() - start_compiles
        self.warmup_seconds = time.perf_counter() - start
        logger.info("TPU runner on %s: %s; warm-up %s %d graph(s) in %.1f s (XLA compiles so "
                    "far: %d)", runtime.pjrt_device_type() or "XLA", self.buckets.describe(),
                    "compiled" if precompile else "skipped (precompile off):",
                    self.warmup_compiles, self.warmup_seconds, runtime.compile_count())
        return self.warmup_compiles
