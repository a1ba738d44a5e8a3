"""EngineArgs: the flat set of user options shared by ``LLM(...)`` and ``vllm-core serve``.

``add_cli_args`` defines the flags with vLLM's names; ``create_engine_config`` resolves the
model, reads its architecture, and lets the platform (and general plugins) adjust the result.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, fields
from typing import Any


@dataclass
class EngineArgs:
    model: str | None = None                 # None: the embedded default model
    tokenizer: str | None = None
    dtype: str = "auto"
    max_model_len: int | None = None
    seed: int = 0
    load_format: str = "auto"
    generation_config: str = "auto"
    chat_template: str | None = None
    served_model_name: str | None = None
    max_logprobs: int = 20
    block_size: int | None = None
    enable_prefix_caching: bool = True
    kv_cache_dtype: str = "auto"
    gpu_memory_utilization: float = 0.9
    kv_cache_space_gib: float | None = None
    num_gpu_blocks_override: int | None = None
    max_num_seqs: int = 256
    max_num_batched_tokens: int | None = None
    enable_chunked_prefill: bool = True
    scheduling_policy: str = "fcfs"
    tensor_parallel_size: int = 1
    attention_backend: str | None = None
    enforce_eager: bool = False
    disable_log_stats: bool = False

    @staticmethod
    def add_cli_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        """Add the engine flags (names as in ``vllm serve``). Import-light: no torch."""
        g = parser.add_argument_group("engine")
        g.add_argument("--tokenizer", default=None, help="tokenizer path (default: the model's)")
        g.add_argument("--dtype", default="auto",
                       help="auto, bfloat16 (bf16), float16 (half), float32 (float)")
        g.add_argument("--max-model-len", type=int, default=None,
                       help="context length (default: the model's)")
        g.add_argument("--seed", type=int, default=0)
        g.add_argument("--load-format", default="auto",
                       choices=["auto", "safetensors", "gguf", "dummy"])
        g.add_argument("--generation-config", default="auto",
                       help="'auto' (model's generation_config.json), 'vllm' (ignore it), or a folder")
        g.add_argument("--chat-template", default=None, help="a Jinja template file or string")
        g.add_argument("--served-model-name", default=None)
        g.add_argument("--max-logprobs", type=int, default=20)
        g.add_argument("--block-size", type=int, default=None)
        g.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction,
                       default=True)
        g.add_argument("--kv-cache-dtype", default="auto")
        g.add_argument("--gpu-memory-utilization", type=float, default=0.9)
        g.add_argument("--kv-cache-space-gib", type=float, default=None,
                       help="KV cache size in GiB on CPU platforms (or VLLM_CPU_KVCACHE_SPACE)")
        g.add_argument("--num-gpu-blocks-override", type=int, default=None)
        g.add_argument("--max-num-seqs", type=int, default=256)
        g.add_argument("--max-num-batched-tokens", type=int, default=None)
        g.add_argument("--enable-chunked-prefill", action=argparse.BooleanOptionalAction,
                       default=True)
        g.add_argument("--scheduling-policy", default="fcfs", choices=["fcfs", "priority"])
        g.add_argument("--tensor-parallel-size", "-tp", type=int, default=1)
        g.add_argument("--attention-backend", default=None)
        g.add_argument("--enforce-eager", action="store_true")
        g.add_argument("--disable-log-stats", action="store_true")
        return parser

    @classmethod
    def from_cli_args(cls, args: argparse.Namespace) -> EngineArgs:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in vars(args).items() if k in names})

    def replace(self, **changes: Any) -> EngineArgs:
        return dataclasses.replace(self, **changes)
