"""Engine configuration: plain dataclasses, filled once by ``EngineArgs.create_engine_config``.

The platform's ``check_and_update_config`` may adjust the fields (block size, dtype, thread
count, graph sizes) before any worker starts; after that the config is read-only by contract.
Nothing here imports torch: dtypes are carried as strings ("bfloat16", "float16", "float32").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # pragma: no cover
    from vllm_core.spec_decode.config import SpeculativeConfig

DTYPE_NAMES = ("auto", "bfloat16", "float16", "float32")
_DTYPE_ALIASES = {"bf16": "bfloat16", "half": "float16", "fp16": "float16", "float": "float32",
                  "fp32": "float32"}


def normalize_dtype(name: str) -> str:
    """Map user spellings (``bf16``, ``half``, ``float``) to a canonical dtype name."""
    canon = _DTYPE_ALIASES.get(name, name)
    if canon not in DTYPE_NAMES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPE_NAMES)} (or bf16/half/float), "
                         f"got {name!r}")
    return canon


@dataclass(slots=True)
class ModelArchConfig:
    """The architecture facts every model and backend needs, whatever the file format.

    Built from a HuggingFace ``config.json``, from GGUF metadata, or given directly (dummy
    weights). ``head_dim`` may differ from ``hidden_size // num_attention_heads`` (Qwen3).
    """

    architecture: str                  # HF class name, e.g. "LlamaForCausalLM"
    model_type: str                    # "llama", "mistral", "qwen2", "qwen3"
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    attention_bias: bool = False       # q/k/v projection biases (Qwen2)
    qk_norm: bool = False              # per-head RMSNorm on q and k (Qwen3)
    sliding_window: int | None = None
    # per-family switches (issue 19); the defaults are the Llama decoder's
    hidden_act: str = "silu"                      # or "gelu_pytorch_tanh" (Gemma 3)
    partial_rotary_factor: float = 1.0            # rotary_dim = head_dim * this (Phi-4-mini)
    layer_types: tuple[str, ...] | None = None    # "sliding_attention" / "full_attention" per
    #   layer (Gemma 3); None: every layer uses ``sliding_window`` (None: full attention)
    local_rope_theta: float | None = None         # rope base of the sliding layers (Gemma 3)
    query_pre_attn_scalar: float | None = None    # attention scale = this ** -0.5 (Gemma)
    final_logit_softcapping: float | None = None  # logits = cap * tanh(logits / cap)
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    hf_config: dict[str, Any] = field(default_factory=dict)  # the raw config.json, if any


@dataclass(slots=True)
class ModelConfig:
    """What to load and how. ``dtype`` is resolved from "auto" by the platform."""

    model: str                                   # directory, .gguf file, or config for dummy
    tokenizer: str | None = None
    dtype: str = "auto"
    max_model_len: int | None = None
    seed: int = 0
    load_format: Literal["auto", "safetensors", "gguf", "dummy"] = "auto"
    generation_config: str = "auto"              # "auto" (model's file), "vllm", or a folder
    chat_template: str | None = None
    served_model_name: str | None = None
    max_logprobs: int = 20
    arch: ModelArchConfig | None = None          # filled by create_engine_config
    quantization: str | None = None              # --quantization (None: the checkpoint's)
    quant_config: Any = None                     # the selected QuantizationConfig, if any
    gguf_dequantize: bool = False                # --gguf-dequantize: GGUF weights as floats


@dataclass(slots=True)
class CacheConfig:
    """Paged KV cache. ``num_blocks`` is set after the worker measures free memory."""

    block_size: int | None = None                # None: the attention backend's preference
    enable_prefix_caching: bool = True
    kv_cache_dtype: str = "auto"                 # "auto" = model dtype
    cache_space_bytes: int | None = None         # explicit budget (CPU: VLLM_CPU_KVCACHE_SPACE)
    gpu_memory_utilization: float = 0.9
    num_blocks_override: int | None = None
    num_blocks: int | None = None


@dataclass(slots=True)
class SchedulerConfig:
    """Per-step budgets of continuous batching."""

    max_num_seqs: int = 256
    max_num_batched_tokens: int | None = None    # None: platform default
    enable_chunked_prefill: bool = True
    policy: Literal["fcfs", "priority"] = "fcfs"
    max_model_len: int = 0                       # copied from the model config
    async_scheduling: bool | None = None         # None: the platform's default
    # vision-encoder output rows (image tokens) encoded per step and held by the encoder
    # cache (None: max_num_batched_tokens); see engine/encoder_scheduler.py
    encoder_budget_tokens: int | None = None


STRUCTURED_OUTPUT_BACKENDS = ("auto", "xgrammar", "guidance", "outlines")


@dataclass(slots=True)
class StructuredOutputsConfig:
    """Structured outputs (``--structured-outputs-config`` JSON, ``--reasoning-parser``).

    ``backend``: "auto" (xgrammar, else llguidance when xgrammar refuses a constraint), or one
    library for every request. ``disable_any_whitespace``: JSON without free whitespace (small
    models otherwise tend to loop on it). ``reasoning_parser``: the grammar of a request starts
    only after the model's reasoning section ends (its end tag is found in the output), unless
    ``enable_in_reasoning``. ``compile_threads``: threads compiling grammars off the step loop.
    ``overlap_bitmask``: under async scheduling, build a step's bitmask while the device runs
    its forward (two-phase step; off: collect the step in flight first, the old path).
    ``fill_threads``: xgrammar's threads filling a large batch's bitmask (0: half the cores).
    """

    backend: str = "auto"
    disable_any_whitespace: bool = False
    reasoning_parser: str | None = None
    enable_in_reasoning: bool = False
    compile_threads: int = 2
    overlap_bitmask: bool = True
    fill_threads: int = 0

    def __post_init__(self) -> None:
        if self.backend not in STRUCTURED_OUTPUT_BACKENDS:
            raise ValueError(f"structured_outputs_config.backend must be one of "
                             f"{', '.join(STRUCTURED_OUTPUT_BACKENDS)}, got {self.backend!r}")
        if not isinstance(self.compile_threads, int) or self.compile_threads < 1:
            raise ValueError(f"structured_outputs_config.compile_threads must be an integer "
                             f">= 1, got {self.compile_threads!r}")
        if not isinstance(self.fill_threads, int) or self.fill_threads < 0:
            raise ValueError(f"structured_outputs_config.fill_threads must be an integer "
                             f">= 0, got {self.fill_threads!r}")
        if not isinstance(self.overlap_bitmask, bool):
            raise ValueError(f"structured_outputs_config.overlap_bitmask must be true or "
                             f"false, got {self.overlap_bitmask!r}")


#: Ray placement strategies of the ``ray`` executor's placement group (Ray's own names).
#: ``PACK``: the ranks on one node when they fit there, else on as few nodes as possible;
#: ``SPREAD``: over as many nodes as possible; ``STRICT_PACK``: one node or refused;
#: ``STRICT_SPREAD``: each rank on a different node or refused.
RAY_PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


@dataclass(slots=True)
class ParallelConfig:
    """How the model is spread over ranks: ``tensor_parallel_size`` x
    ``pipeline_parallel_size`` processes (rank = pp_rank * tp + tp_rank), driven by the
    ``distributed_executor_backend`` ("uni": one rank in the engine process; "mp": one process
    per rank on this host; "ray": one Ray actor per rank, placed with
    ``ray_placement_strategy``). ``data_parallel_size`` such engines (engine cores), each of
    ``world_size`` ranks, serve requests side by side (``vllm_core.engine.dp_client``)."""

    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    distributed_executor_backend: str = "uni"
    data_parallel_size: int = 1
    enable_expert_parallel: bool = False      # MoE experts sharded over the TP ranks (EP = TP)
    pipeline_micro_batching: bool = False     # PP > 1: one batch in flight per stage
    ray_placement_strategy: str = "PACK"      # "ray": Ray's strategy for the ranks' bundles

    @property
    def world_size(self) -> int:
        return self.tensor_parallel_size * self.pipeline_parallel_size

    @property
    def max_concurrent_batches(self) -> int:
        """Steps the engine keeps in flight at once: ``pipeline_parallel_size`` with pipeline
        micro-batching (disjoint requests, see ``engine/batch_queue.py``), else 1."""
        pp = self.pipeline_parallel_size
        return pp if pp > 1 and self.pipeline_micro_batching else 1


@dataclass(slots=True)
class LoRAConfig:
    """Multi-LoRA serving (``--enable-lora``; see docs/lora.md).

    ``max_loras``: adapters resident on the device at once (slots; also the most distinct
    adapters among the running requests); ``max_lora_rank``: the largest rank accepted (every
    slot is sized for it); ``max_cpu_loras``: loaded adapters kept in host memory (LRU; at
    least ``max_loras``); ``kernel``: how the batched product runs ("auto": the platform's
    LoRA kernels, else "segment" on host devices and "dense" on accelerators; see
    ``vllm_core.lora.batch``).
    """

    max_loras: int = 1
    max_lora_rank: int = 16
    max_cpu_loras: int | None = None
    kernel: str = "auto"

    def __post_init__(self) -> None:
        if self.max_loras < 1:
            raise ValueError(f"max_loras must be >= 1, got {self.max_loras}")
        if self.max_lora_rank < 1:
            raise ValueError(f"max_lora_rank must be >= 1, got {self.max_lora_rank}")
        if self.max_cpu_loras is None:
            self.max_cpu_loras = self.max_loras
        if self.max_cpu_loras < self.max_loras:
            raise ValueError(f"max_cpu_loras ({self.max_cpu_loras}) must be >= max_loras "
                             f"({self.max_loras})")
        if self.kernel not in ("auto", "segment", "dense", "sgmv"):
            raise ValueError(f"lora kernel must be auto, segment, dense or sgmv, got "
                             f"{self.kernel!r}")


MULTIMODAL_MODALITIES = ("image",)
DEFAULT_MM_LIMIT_PER_PROMPT = 999    # items of each modality per prompt when unset (vLLM's)


@dataclass(slots=True)
class MultiModalConfig:
    """Image inputs: how many a prompt may carry and where they may be read from
    (``--limit-mm-per-prompt``, ``--allowed-local-media-path``, ``--media-fetch-timeout``,
    ``--max-media-bytes``, ``--max-image-pixels``; see docs/image-inputs.md).

    ``limit_per_prompt``: modality -> most items in one prompt (a modality left out gets
    ``DEFAULT_MM_LIMIT_PER_PROMPT``). ``allowed_media_domains``: the hosts ``http(s)`` images
    may come from, redirects included (None: any). ``allowed_local_media_path``: the only
    directory
    ``file://`` URLs may read (None: no local files); stored resolved (symlinks followed).
    ``media_fetch_timeout_s``: the whole download of one ``http(s)`` image.
    ``max_media_bytes``: the largest encoded image (download, file or ``data:`` URL).
    ``max_image_pixels``: width x height above which an image is refused before decoding
    (decompression bombs). Read by the front ends (server, ``LLM``); the engine never fetches.
    """

    limit_per_prompt: dict[str, int] = field(default_factory=dict)
    allowed_local_media_path: str | None = None
    allowed_media_domains: tuple[str, ...] | None = None
    media_fetch_timeout_s: float = 5.0
    max_media_bytes: int = 20 * 2**20
    max_image_pixels: int = 2**25

    def __post_init__(self) -> None:
        import os

        for modality, limit in self.limit_per_prompt.items():
            if modality not in MULTIMODAL_MODALITIES:
                raise ValueError(f"limit_mm_per_prompt: unknown modality {modality!r}; known: "
                                 f"{', '.join(MULTIMODAL_MODALITIES)}")
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
                raise ValueError(f"limit_mm_per_prompt[{modality!r}] must be an integer >= 0, "
                                 f"got {limit!r}")
        if self.allowed_local_media_path is not None:
            path = os.path.realpath(os.path.expanduser(self.allowed_local_media_path))
            if not os.path.isdir(path):
                raise ValueError(f"allowed_local_media_path {self.allowed_local_media_path!r} "
                                 f"is not a directory")
            self.allowed_local_media_path = path
        if self.allowed_media_domains is not None:
            self.allowed_media_domains = tuple(d.strip().lower().rstrip(".")
                                               for d in self.allowed_media_domains)
        if not self.media_fetch_timeout_s > 0:
            raise ValueError(f"media_fetch_timeout must be > 0 seconds, "
                             f"got {self.media_fetch_timeout_s!r}")
        for name in ("max_media_bytes", "max_image_pixels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")

    def limit(self, modality: str) -> int:
        """The most items of ``modality`` one prompt may carry."""
        return self.limit_per_prompt.get(modality, DEFAULT_MM_LIMIT_PER_PROMPT)


@dataclass(slots=True)
class EngineConfig:
    """The whole configuration handed to the platform, the scheduler and the workers."""

    model: ModelConfig
    cache: CacheConfig = field(default_factory=CacheConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    structured_outputs: StructuredOutputsConfig = field(default_factory=StructuredOutputsConfig)
    speculative: SpeculativeConfig | None = None  # --speculative-config; None: no speculation
    lora: LoRAConfig | None = None                # None: LoRA adapters disabled
    multimodal: MultiModalConfig = field(default_factory=MultiModalConfig)  # image inputs
    attention_backend: str | None = None          # user's choice, else the platform's
    enforce_eager: bool = False
    warmup: bool = False                          # start-up warm-up (vllm_core.engine.warmup)
    graph_batch_sizes: list[int] = field(default_factory=list)
    num_threads: int | None = None                # CPU platforms: torch intra-op threads
    platform_name: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # plugin-specific settings
