"""Structured outputs: constrain a request's tokens with a grammar (JSON schema, regex, choice,
EBNF/Lark, structural tags) through xgrammar (default), llguidance or outlines-core.

Data flow: ``SamplingParams.structured_outputs`` -> ``StructuredOutputManager.prepare`` (input
processing: validation, backend choice) -> ``submit`` (async compile; the request waits in the
scheduler as WAITING_FOR_GRAMMAR) -> each step ``attach_bitmask`` puts one bitmask for the batch
in the ``SchedulerOutput`` -> the runner applies it to the logits on the device
(``vllm_core.sampling.structured``) -> ``Scheduler.update_from_output`` advances the matchers
and stops a request whose grammar terminated.
"""

from vllm_core.structured_output.params import StructuredOutputsParams

__all__ = ["StructuredOutputsParams"]
