"""EngineArgs: the flat set of user options shared by ``LLM(...)`` and ``vllm-core serve``.

``add_cli_args`` defines the flags with vLLM's names; ``create_engine_config`` resolves the
model, reads its architecture, and lets the platform (and general plugins) adjust the result.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, fields
from typing import Any

from vllm_core.config import RAY_PLACEMENT_STRATEGIES


@dataclass
class EngineArgs:
    model: str | None = None                 # None: the embedded default model; org/name: Hub
    tokenizer: str | None = None
    revision: str | None = None              # Hub branch, tag or commit (model and tokenizer)
    download_dir: str | None = None          # Hub cache folder (default: HF_HUB_CACHE)
    dtype: str = "auto"
    max_model_len: int | None = None
    seed: int = 0
    load_format: str = "auto"
    quantization: str | None = None          # None: the checkpoint's quantization_config
    gguf_dequantize: bool = False            # GGUF weights de-quantized at load (not kept)
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
    pipeline_parallel_size: int = 1
    data_parallel_size: int = 1              # engine cores behind one front end
    enable_expert_parallel: bool = False
    pipeline_micro_batching: bool = False     # measured slower on 2 H200s (docs/distributed.md)
    distributed_executor_backend: str | None = None   # None: uni for 1 rank, else mp
    ray_placement_strategy: str = "PACK"      # ray: how ranks spread over the cluster's nodes
    attention_backend: str | None = None
    enforce_eager: bool = False
    warmup: bool | None = None                # None: on for accelerators, off on CPU
    async_scheduling: bool | None = None      # None: the platform's default
    encoder_budget_tokens: int | None = None  # image tokens encoded per step (multimodal)
    disable_log_stats: bool = False
    structured_outputs_config: dict[str, Any] | str | None = None   # JSON text or a dict
    reasoning_parser: str | None = None
    speculative_config: dict[str, Any] | str | None = None   # JSON text or a dict
    enable_lora: bool = False
    max_loras: int = 1
    max_lora_rank: int = 16
    max_cpu_loras: int | None = None
    lora_kernel: str = "auto"
    limit_mm_per_prompt: dict[str, int] | str | None = None   # JSON text or a dict
    allowed_local_media_path: str | None = None
    allowed_media_domains: list[str] | None = None   # None: http(s) images from any host
    media_fetch_timeout: float | None = None  # None: VLLM_IMAGE_FETCH_TIMEOUT, else 5 s
    max_media_bytes: int = 20 * 2**20
    max_image_pixels: int = 2**25

    @staticmethod
    def add_cli_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        """Add the engine flags (names as in ``vllm serve``). Import-light: no torch."""
        g = parser.add_argument_group("engine")
        g.add_argument("--tokenizer", default=None, help="tokenizer path (default: the model's)")
        g.add_argument("--revision", default=None,
                       help="Hub model ids: the branch, tag or commit to use")
        g.add_argument("--download-dir", default=None,
                       help="Hub model ids: the cache folder (default: HF_HUB_CACHE)")
        g.add_argument("--dtype", default="auto",
                       help="auto, bfloat16 (bf16), float16 (half), float32 (float)")
        g.add_argument("--max-model-len", type=int, default=None,
                       help="context length (default: the model's)")
        g.add_argument("--seed", type=int, default=0)
        g.add_argument("--load-format", default="auto",
                       choices=["auto", "safetensors", "gguf", "dummy"])
        g.add_argument("--quantization", "-q", default=None,
                       help="weight quantization: read from the checkpoint's "
                            "quantization_config (gptq, awq, compressed-tensors, fp8) when "
                            "unset; 'fp8' / 'int8' (W8A8) quantize a float checkpoint (or a "
                            "de-quantized .gguf) at load; 'gguf' for "
                            ".gguf files (kept quantized; the default for them). See "
                            "docs/quantization.md")
        g.add_argument("--gguf-dequantize", action="store_true",
                       help="de-quantize a .gguf file's weights to the model dtype at load "
                            "instead of keeping them quantized")
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
                       help="KV cache size in GiB, instead of measuring free memory (the CPU "
                            "plugin also reads VLLM_CPU_KVCACHE_SPACE)")
        g.add_argument("--num-gpu-blocks-override", type=int, default=None)
        g.add_argument("--max-num-seqs", type=int, default=256)
        g.add_argument("--max-num-batched-tokens", type=int, default=None)
        g.add_argument("--enable-chunked-prefill", action=argparse.BooleanOptionalAction,
                       default=True)
        g.add_argument("--scheduling-policy", default="fcfs", choices=["fcfs", "priority"])
        g.add_argument("--tensor-parallel-size", "-tp", type=int, default=1,
                       help="ranks that split every layer (attention heads, MLP, vocabulary)")
        g.add_argument("--pipeline-parallel-size", "-pp", type=int, default=1,
                       help="pipeline stages the decoder layers are split over")
        g.add_argument("--data-parallel-size", "-dp", type=int, default=1,
                       help="engine cores (each of TP x PP ranks, with its own KV cache) "
                            "serving requests side by side behind one front end")
        g.add_argument("--pipeline-micro-batching", action=argparse.BooleanOptionalAction,
                       default=False,
                       help="with -pp > 1, keep one batch of distinct requests in flight per "
                            "stage so the stages run at once (off by default: on two H200s "
                            "it measured slower than one step at a time, see "
                            "docs/distributed.md)")
        g.add_argument("--enable-expert-parallel", "-ep", action="store_true",
                       help="mixture-of-experts models: shard whole experts over the TP ranks "
                            "(expert parallelism, EP size = TP size) instead of splitting "
                            "every expert's intermediate dimension")
        g.add_argument("--distributed-executor-backend", default=None,
                       choices=["uni", "mp", "ray"],
                       help="how ranks run: uni (one, in the engine process), mp (one "
                            "process per rank on this host; the default for several ranks), "
                            "ray (one Ray actor per rank, on this host or across the nodes of "
                            "a Ray cluster)")
        g.add_argument("--ray-placement-strategy", default="PACK",
                       choices=list(RAY_PLACEMENT_STRATEGIES),
                       help="ray: Ray's placement strategy for the ranks (PACK: one node when "
                            "they fit, else as few nodes as possible; STRICT_SPREAD: one rank "
                            "per node; see docs/distributed.md)")
        g.add_argument("--attention-backend", default=None)
        g.add_argument("--enforce-eager", action="store_true")
        g.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=None,
                       help="before serving, run steps that compile every kernel a request "
                            "can hit (prefill, mixed and decode shapes, each sampling "
                            "variant); compiled kernels persist under VLLM_CACHE_ROOT "
                            "(default: on for accelerators, off on CPU)")
        g.add_argument("--async-scheduling", action=argparse.BooleanOptionalAction,
                       default=None,
                       help="schedule and launch step N+1 while the device runs step N "
                            "(default: the platform's choice; on for CUDA)")
        g.add_argument("--disable-log-stats", action="store_true")
        g.add_argument("--structured-outputs-config", default=None,
                       help='JSON, e.g. \'{"backend": "guidance", "disable_any_whitespace": '
                            'true}\'; backend: auto (default), xgrammar, guidance, outlines')
        from vllm_core.plugins.registry import argparse_name_type
        from vllm_core.reasoning.registry import PARSERS as REASONING_PARSERS

        g.add_argument("--reasoning-parser", default=None,
                       type=argparse_name_type(REASONING_PARSERS),
                       help="split <think> reasoning into reasoning_content (deepseek_r1, "
                            "qwen3, or a plugin's); grammars apply after the reasoning ends")
        g.add_argument("--speculative-config", default=None,
                       help='JSON, e.g. \'{"method": "ngram", "num_speculative_tokens": 4, '
                            '"prompt_lookup_max": 4}\' (see docs/speculative-decoding.md)')
        g.add_argument("--enable-lora", action="store_true",
                       help="serve PEFT LoRA adapters (docs/lora.md)")
        g.add_argument("--max-loras", type=int, default=1,
                       help="LoRA adapters resident on the device (and running) at once")
        g.add_argument("--max-lora-rank", type=int, default=16, help="largest LoRA rank")
        g.add_argument("--max-cpu-loras", type=int, default=None,
                       help="loaded LoRA adapters kept in host memory (default: --max-loras)")
        g.add_argument("--lora-kernel", default="auto",
                       choices=["auto", "segment", "dense", "sgmv"],
                       help="batched LoRA product: auto (the platform's kernels, else torch)")
        from vllm_core.multimodal.media import add_media_cli_args

        add_media_cli_args(g)
        return parser

    @classmethod
    def from_cli_args(cls, args: argparse.Namespace) -> EngineArgs:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in vars(args).items() if k in names})

    def replace(self, **changes: Any) -> EngineArgs:
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ resolution
    def _validate(self) -> None:
        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"{name} {why}, got {getattr(self, name)!r}")

        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise bad("gpu_memory_utilization", "must be in (0, 1]")
        if self.max_num_seqs < 1:
            raise bad("max_num_seqs", "must be >= 1")
        if self.max_num_batched_tokens is not None and self.max_num_batched_tokens < 1:
            raise bad("max_num_batched_tokens", "must be >= 1")
        if self.max_model_len is not None and self.max_model_len < 2:
            raise bad("max_model_len", "must be >= 2")
        if self.block_size is not None and (self.block_size < 1
                                            or self.block_size & (self.block_size - 1)):
            raise bad("block_size", "must be a power of two")
        if self.tensor_parallel_size < 1:
            raise bad("tensor_parallel_size", "must be >= 1")
        if self.pipeline_parallel_size < 1:
            raise bad("pipeline_parallel_size", "must be >= 1")
        if self.data_parallel_size < 1:
            raise bad("data_parallel_size", "must be >= 1")
        if self.distributed_executor_backend not in (None, "uni", "mp", "ray"):
            raise bad("distributed_executor_backend", "must be one of uni, mp, ray")
        if self.ray_placement_strategy not in RAY_PLACEMENT_STRATEGIES:
            raise bad("ray_placement_strategy",
                      f"must be one of {', '.join(RAY_PLACEMENT_STRATEGIES)}")
        if (self.distributed_executor_backend == "uni"
                and self.tensor_parallel_size * self.pipeline_parallel_size > 1):
            raise ValueError("distributed_executor_backend 'uni' runs one rank; "
                             f"tensor_parallel_size={self.tensor_parallel_size} x "
                             f"pipeline_parallel_size={self.pipeline_parallel_size} needs 'mp'")
        if self.max_logprobs < 0:
            raise bad("max_logprobs", "must be >= 0")
        if self.kv_cache_space_gib is not None and self.kv_cache_space_gib <= 0:
            raise bad("kv_cache_space_gib", "must be positive")

    def structured_outputs(self) -> Any:
        """The StructuredOutputsConfig these arguments describe (ValueError naming the flag)."""
        import json

        from vllm_core.config import StructuredOutputsConfig

        raw = self.structured_outputs_config
        if isinstance(raw, str):
            try:
                raw = json.loads(raw)
            except json.JSONDecodeError as e:
                raise ValueError(f"structured_outputs_config is not valid JSON: {e}") from e
        raw = dict(raw or {})
        if not all(isinstance(k, str) for k in raw):
            raise ValueError("structured_outputs_config must be a JSON object")
        known = set(StructuredOutputsConfig.__dataclass_fields__)
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"structured_outputs_config has unknown keys {unknown}; known: "
                             f"{sorted(known)}")
        if self.reasoning_parser is not None:
            raw["reasoning_parser"] = self.reasoning_parser
        if raw.get("reasoning_parser") is not None:
            from vllm_core.reasoning.registry import resolve_reasoning_parser

            resolve_reasoning_parser(raw["reasoning_parser"])      # ValueError if unknown
        return StructuredOutputsConfig(**raw)

    def _lora_config(self) -> Any:
        from vllm_core.config import LoRAConfig

        if not self.enable_lora:
            return None
        return LoRAConfig(max_loras=self.max_loras, max_lora_rank=self.max_lora_rank,
                          max_cpu_loras=self.max_cpu_loras, kernel=self.lora_kernel)

    def multimodal_config(self) -> Any:
        """The MultiModalConfig these arguments describe (ValueError naming the flag)."""
        from vllm_core.multimodal.media import multimodal_config_from_args

        return multimodal_config_from_args(self)

    def _parallel_config(self, cls: type) -> Any:
        world = self.tensor_parallel_size * self.pipeline_parallel_size
        backend = self.distributed_executor_backend or ("uni" if world == 1 else "mp")
        return cls(tensor_parallel_size=self.tensor_parallel_size,
                   pipeline_parallel_size=self.pipeline_parallel_size,
                   distributed_executor_backend=backend,
                   data_parallel_size=self.data_parallel_size,
                   enable_expert_parallel=self.enable_expert_parallel,
                   ray_placement_strategy=self.ray_placement_strategy,
                   # drafts need every token of the step before: one step at a time
                   pipeline_micro_batching=(self.pipeline_micro_batching
                                            and not self.speculative_config))

    def create_engine_config(self) -> tuple[Any, Any]:
        """Resolve the model and platform into an EngineConfig. Returns (config, platform)."""
        from vllm_core import envs
        from vllm_core.config import (
            CacheConfig,
            EngineConfig,
            ModelConfig,
            ParallelConfig,
            SchedulerConfig,
            normalize_dtype,
        )
        from vllm_core.model_executor.hub import locate_model
        from vllm_core.model_executor.loader import load_arch_config, resolve_model
        from vllm_core.platforms import resolve_current_platform
        from vllm_core.platforms.interface import PlatformKind
        from vllm_core.plugins import apply_config_hooks, load_general_plugins

        self._validate()
        load_general_plugins()
        structured = self.structured_outputs()
        from vllm_core.spec_decode.config import parse_speculative_config

        speculative = parse_speculative_config(self.speculative_config)
        platform = resolve_current_platform()
        path = resolve_model(locate_model(self.model, self.revision, self.download_dir))
        tokenizer = locate_model(self.tokenizer, self.revision, self.download_dir)
        arch = load_arch_config(path, self.load_format)
        derived = arch.max_position_embeddings
        max_len = self.max_model_len or derived
        if max_len > derived:
            raise ValueError(f"max_model_len={max_len} exceeds the model's context length "
                             f"({derived} tokens, max_position_embeddings)")
        space = self.kv_cache_space_gib
        import os

        name = self.served_model_name or (self.model if self.model else
                                          os.path.splitext(os.path.basename(path))[0])
        model = ModelConfig(
            model=path, tokenizer=tokenizer, dtype=normalize_dtype(self.dtype),
            max_model_len=max_len, seed=self.seed, load_format=self.load_format,
            generation_config=self.generation_config, chat_template=self.chat_template,
            served_model_name=name, max_logprobs=self.max_logprobs, arch=arch)
        config = EngineConfig(
            model=model,
            cache=CacheConfig(block_size=self.block_size,
                              enable_prefix_caching=self.enable_prefix_caching,
                              kv_cache_dtype=self.kv_cache_dtype,
                              cache_space_bytes=int(space * 2**30) if space else None,
                              gpu_memory_utilization=self.gpu_memory_utilization,
                              num_blocks_override=self.num_gpu_blocks_override),
            scheduler=SchedulerConfig(max_num_seqs=self.max_num_seqs,
                                      max_num_batched_tokens=self.max_num_batched_tokens,
                                      enable_chunked_prefill=self.enable_chunked_prefill,
                                      policy=self.scheduling_policy, max_model_len=max_len,
                                      async_scheduling=self.async_scheduling,
                                      encoder_budget_tokens=self.encoder_budget_tokens),
            parallel=self._parallel_config(ParallelConfig),
            structured_outputs=structured,
            speculative=speculative,
            attention_backend=self.attention_backend or envs.attention_backend(),
            enforce_eager=self.enforce_eager,
            warmup=(platform.kind is not PlatformKind.CPU if self.warmup is None
                    else self.warmup),
            lora=self._lora_config(),
            multimodal=self.multimodal_config(),
        )
        _check_parallel_fits(config)
        platform.check_and_update_config(config)
        config.model.gguf_dequantize = self.gguf_dequantize
        _select_quantization(config, self.quantization)
        platform.verify_model(config)
        apply_config_hooks(config)
        return config, platform


def _select_quantization(config: Any, requested: str | None) -> None:
    """Fill ``config.model.quant_config`` (ValueError in words when the method cannot load
    this checkpoint or run on this platform with this dtype)."""
    from vllm_core.model_executor.quantization.selection import select_quantization

    model = config.model
    model.quantization = requested
    model.quant_config = select_quantization(
        model.arch.hf_config, requested, is_gguf=model.model.endswith(".gguf"),
        platform=config.platform_name, dtype=model.dtype,
        gguf_dequantize=model.gguf_dequantize)


def _check_parallel_fits(config: Any) -> None:
    """Refuse, before any process starts, a TP/PP layout the model cannot be split into (the
    messages name the numbers)."""
    from vllm_core.distributed.parallel_context import partition_layers
    from vllm_core.model_executor.layers.parallel_linear import kv_heads_per_rank

    arch, par = config.model.arch, config.parallel
    tp = par.tensor_parallel_size
    kv_heads_per_rank(arch.num_attention_heads, arch.num_key_value_heads, tp)
    if arch.intermediate_size % tp:
        raise ValueError(f"the model's intermediate_size ({arch.intermediate_size}) is not "
                         f"divisible by tensor_parallel_size={tp}")
    partition_layers(arch.num_hidden_layers, par.pipeline_parallel_size)
    from vllm_core.model_executor.layers.fused_moe.config import check_moe_parallel

    check_moe_parallel(arch, tp, par.enable_expert_parallel)
