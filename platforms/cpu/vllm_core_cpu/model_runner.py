"""CpuModelRunner: the core runner with decode-only steps through the fused decoder stack.

Overrides one hook, ``run_forward`` (API 2.0): a decode-only step (every request has one new
token, nothing padded, no input embeddings or pipeline-stage inputs) runs the model's decoder
layers as one C++ call (``decode_stack.py``) and the logits as before; any other step, or a
model / configuration the stack does not take, runs the module forward. The stack is built
on the first decode step after the KV cache exists (and again if the cache is replaced); the
reason it does not apply is logged once. Both paths give the same numbers.
"""

from __future__ import annotations

from typing import Any

from vllm_core.logger import init_logger
from vllm_core.worker.model_runner import ForwardOutput, ModelRunner, StepInputs, StepShape
from vllm_core.worker.step_plan import StepPlan

logger = init_logger(__name__)


class CpuModelRunner(ModelRunner):
    """``fused_decode`` (VLLM_CPU_FUSED_DECODE, read once here): allow the fused stack.
    ``num_fused_steps`` counts the steps it ran (tests, benchmarks)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        from vllm_core_cpu import envs

        super().__init__(*args, **kwargs)
        self.fused_decode = envs.cpu_fused_decode()
        self.num_fused_steps = 0
        self._stack: Any = None               # decode_stack.DecodeStack, or None
        self._stack_caches: list | None = None   # the kv_caches it was built over
        self.decode_stack_reason: str | None = None   # why it does not apply (None: it does)

    def decode_stack(self) -> Any:
        """The fused stack over the current KV cache, built on first use; None (with
        ``decode_stack_reason`` set) when it does not apply."""
        if self._stack_caches is self.kv_caches:
            return self._stack
        self._stack_caches = self.kv_caches
        self._stack = None
        reason = self._stack_refusal()
        if reason is None:
            from vllm_core_cpu.decode_stack import build_decode_stack

            built = build_decode_stack(self.model, self.kv_caches, self.dtype,
                                       bool(getattr(self.ops, "int8_activations", False)),
                                       bool(getattr(self.ops, "int8_amx", True)))
            if isinstance(built, str):
                reason = built
            else:
                self._stack = built
        self.decode_stack_reason = reason
        if reason is None:
            logger.info("decode steps run the fused C++ decoder stack (%d layers)",
                        self._stack.num_layers)
        else:
            logger.info("fused decoder stack off: %s", reason)
        return self._stack

    def _stack_refusal(self) -> str | None:
        """A runner-level reason not to fuse (None: ask the model)."""
        from vllm_core_cpu.attention import CpuAttentionMetadataBuilder

        if not self.fused_decode:
            return "VLLM_CPU_FUSED_DECODE=0"
        if self.lora is not None:
            return "LoRA adapters are enabled"
        if self.proposer is not None:
            return "speculative decoding runs a worker proposer"
        if self.mm is not None:
            return "the model takes multimodal inputs"
        if self.parallel.world_size > 1:
            return "tensor / pipeline parallelism"
        if type(self.builder) is not CpuAttentionMetadataBuilder:
            return f"the attention backend is {self.attn_backend.name}, not cpu_paged"
        return None

    def run_forward(self, plan: StepPlan, inputs: StepInputs,
                    shape: StepShape | None) -> ForwardOutput:
        if (not plan.is_decode_only or shape is not None or inputs.inputs_embeds is not None
                or inputs.intermediate is not None):
            return super().run_forward(plan, inputs, shape)
        stack = self.decode_stack()
        if stack is None:
            return super().run_forward(plan, inputs, shape)
        attn_metadata = self.builder.build(inputs.common)
        hidden = stack.forward(inputs.input_ids, inputs.positions, attn_metadata)
        self.num_fused_steps += 1
        logits = None
        num_logits = len(plan.logits_indices)
        if num_logits:
            # decode-only: when every token is a logits row, the rows are the tokens in order
            rows = hidden if num_logits == hidden.shape[0] else hidden[inputs.logits_indices]
            logits = self.model.compute_logits(rows)
        return ForwardOutput(hidden=hidden, logits=logits)
