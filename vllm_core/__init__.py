"""vllm-core: a high-throughput LLM inference engine built as a hardware-plugin platform.

Heavy imports (torch, transformers) happen lazily so that ``vllm_core`` and the CLI's
``--help`` / ``--version`` stay fast.
"""

from typing import TYPE_CHECKING, Any

from vllm_core.envs import apply_openmp_defaults
from vllm_core.version import __version__

apply_openmp_defaults()          # before torch loads libgomp (see envs.OPENMP_DEFAULTS)

__all__ = ["__version__", "LLM", "SamplingParams", "LLMEngine", "AsyncLLMEngine",
           "RequestOutput", "CompletionOutput", "EngineArgs", "LoRARequest"]

_LAZY = {
    "LLM": "vllm_core.entrypoints.llm",
    "SamplingParams": "vllm_core.sampling.params",
    "LLMEngine": "vllm_core.engine.llm_engine",
    "AsyncLLMEngine": "vllm_core.engine.async_llm_engine",
    "RequestOutput": "vllm_core.outputs",
    "CompletionOutput": "vllm_core.outputs",
    "EngineArgs": "vllm_core.engine.arg_utils",
    "LoRARequest": "vllm_core.lora.request",
}

if TYPE_CHECKING:  # pragma: no cover
    from vllm_core.engine.arg_utils import EngineArgs
    from vllm_core.engine.async_llm_engine import AsyncLLMEngine
    from vllm_core.engine.llm_engine import LLMEngine
    from vllm_core.entrypoints.llm import LLM
    from vllm_core.lora.request import LoRARequest
    from vllm_core.outputs import CompletionOutput, RequestOutput
    from vllm_core.sampling.params import SamplingParams


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vllm_core' has no attribute {name!r}")
