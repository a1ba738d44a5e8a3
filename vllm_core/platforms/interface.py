"""The Platform contract a hardware plugin implements.

One Platform class is active per process (``vllm_core.platforms.current_platform``). The core
calls these methods; a plugin overrides what differs for its hardware. Every method that the
engine calls says when. Versioned together with the AttentionBackend and Worker contracts by
``PLATFORM_API_VERSION``: a plugin declares the version it was written for in
``api_version`` and is skipped (loudly) when the major number differs from the core's.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:  # pragma: no cover
    from vllm_core.config import EngineConfig

PLATFORM_API_VERSION = "2.7"
"""MAJOR.MINOR. A plugin is compatible when its major equals ours and its minor <= ours.

1.1 (backward compatible with 1.0): ``AttentionBackend.required_packages`` and a default
``get_kv_cache_shape``; ``LayerOps.linear`` (batch-invariant matmul hook).

1.2: ``AttentionImpl.fuses_rotary`` / ``forward_with_rotary``; ``LayerOps.silu_and_mul_linear``;
``Worker.execute_model_async`` returning a ``PendingOutput``; ``Platform.default_async_scheduling``.

2.0 (breaking): the model runner is the core's for every platform. ``TorchWorker.runner_class()``
names a ``ModelRunner`` subclass, which overrides only the documented hooks (``pin_memory``,
``new_step_event``, ``sampling_device``, ``padded_shape``, ``pad_inputs``, ``upload_inputs``,
``run_forward``, ``capture_graphs``, ``prompt_logits``); the step layout is
``vllm_core.worker.step_plan.plan_step``. Graph safety is declared by the attention backend
(``AttentionBackend.supports_graph_capture`` and ``AttentionMetadataBuilder.build_for_capture``)
and ``Platform.supports_graph_capture()`` gates capture; ``AttentionBackend.block_table_dtype``.
The scheduler/worker messages moved to ``vllm_core.messages``. ``Platform.dispatch_key`` and
``Platform.supported_quantization`` were removed (nothing read them); ``Platform.inference_mode``
is the context the worker runs in. One registry rule for models, attention backends and
quantization methods (``vllm_core.plugins.registry``). Platform-only environment variables are
read by their plugins (``vllm_core_cpu.envs``, ``vllm_core_cuda.envs``). Requests enter through
``LLMEngine.add_request`` / ``process_inputs``.

2.1: distributed inference. ``Platform.communicator_class()`` names the collectives class
(``vllm_core.distributed.communicator.Communicator``) the TP/PP groups use, initialised on
``dist_backend``; ``TorchWorker`` takes ``distributed_init_method`` (pass extra keyword
arguments through in a subclass's ``__init__``); the model is built with a
``ParallelContext`` (``cls(arch, attn_backend, ops, parallel=...)``).
Additions within 2.1 (defaults keep existing plugins working): ``Platform.ray_device_key``
(the Ray resource one rank of the ``ray`` executor holds: ``"CPU"`` by default, ``"GPU"`` on
CUDA); the CUDA plugin's communicator adds ``enable_fast_all_reduce`` / ``graph_safe``; the
two-phase step for structured outputs (``Worker.supports_deferred_sampling``, default False):
a step launched with ``SchedulerOutput.defer_sampling`` stops before sampling
(``execute_model_async`` returns None) and ``Worker.sample_tokens(scheduler_output)`` finishes
it; ``TorchWorker`` sets ``supports_deferred_sampling`` and the core runner does both.

2.2 (additive; every new hook has a default, so 2.1 plugins keep working): kernel hooks on
``LayerOps`` for the wave-2 features: ``fused_moe`` (mixture-of-experts blocks), the quantized
linears ``wna16_linear`` / ``int8_linear`` / ``fp8_linear`` with ``quant_kernel_name`` (defaults:
de-quantize-then-matmul references), and ``lora_kernels()`` (batched LoRA shrink/expand; default
None: the core's torch paths). ``TorchWorker.add_lora`` / ``remove_lora`` are implemented.
``SchedulerOutput.scheduled_spec_decode_tokens`` carries speculative-decoding drafts (the core
runner verifies them; a platform runner that overrides only the documented hooks needs nothing).
Quantization methods are ``QuantizationConfig`` classes registered by name.

2.3 (additive; the default keeps 2.2 plugins working): ``Platform.default_engine_core_process``
(whether the server runs the engine core in its own process by default; base: no, CUDA: yes).

2.4 (additive; the default keeps 2.3 plugins working): ``Platform.data_parallel_env`` (the
environment of data-parallel engine core ``r``: which devices it sees; base: nothing, e.g. the
CPU; CUDA: ``CUDA_VISIBLE_DEVICES``).

2.5 (additive; every new hook has a default, so 2.4 plugins keep working):
``AttentionImpl.supports_kv_scales`` / ``set_kv_scales(k_scale, v_scale)`` (calibrated FP8
KV-cache scales, handed over once after loading; default: unsupported, scales must be 1);
``LayerOps.fused_moe_fp8`` (FP8 experts; default: the de-quantize-then-reference path);
``ModelRunner.proposer`` (worker-side speculative proposers, draft model / EAGLE: its KV bytes
join ``kv_cache_bytes_per_block`` and it observes each forward's hidden states); multimodal
step inputs (``NewRequestData.mm_features``, ``SchedulerOutput.scheduled_encoder_inputs`` /
``free_encoder_hashes``, ``StepInputs.inputs_embeds`` and ``[3, T]`` M-RoPE positions, which a
``run_forward`` that calls the model itself passes on); ``CachedRequestData.new_token_ids``
(pipeline micro-batching: tokens sampled on another rank, applied by the core runner).

2.6 (additive; defaults keep 2.5 plugins working): graphs of speculative verification steps.
``AttentionBackend.supports_verify_graph_capture`` (default False): ``build_for_capture`` also
takes a padded batch of several tokens per request (``common.max_query_len`` q > 1, the last
request holding the leftover padding tokens); ``StepShape.max_query_len`` (default 1: a
padded decode batch) marks such a step for ``pad_inputs`` / ``run_forward``, and
``StepBuffers.pad_token_batch`` lays it out; ``WorkerProposer.needs_target_hidden`` (default
False; EAGLE True): a proposer that reads the target's hidden states keeps its verification
steps off graphs that hide them.

2.7 (additive; the default keeps 2.6 plugins working): ``LayerOps.prepare_quantized(kind, w)``
(a quantized linear's weight in the platform's own layout, built once after loading, e.g. the
CPU plugin's W8A8 INT8 weights packed for AVX-512 VNNI / AMX; default: ``w`` unchanged).
"""


class PlatformKind(enum.Enum):
    CPU = "cpu"
    ACCELERATOR = "accelerator"


# Priorities: accelerators outrank the CPU. A plugin picks one of these or a value in between.
PRIORITY_CPU = 0
PRIORITY_ACCELERATOR = 100


@dataclass(slots=True)
class DeviceFacts:
    """What a platform knows about its devices (reported by ``vllm-core platforms``)."""

    device_count: int = 0
    device_name: str = ""
    capability: str = ""               # e.g. "9.0", "gfx942", "x86_64 AVX512_BF16"
    total_memory_bytes: int = 0
    details: dict[str, Any] = field(default_factory=dict)


class Platform:
    """Base class of every platform. Class attributes are the identity; methods the behaviour.

    Contract: a Platform subclass must be importable without its hardware present and must not
    touch the device at import time; ``detect`` in its entry point decides presence.
    """

    # identity ------------------------------------------------------------------------------
    name: ClassVar[str] = "unspecified"          # plugin/platform name, e.g. "cpu", "cuda"
    kind: ClassVar[PlatformKind] = PlatformKind.ACCELERATOR
    priority: ClassVar[int] = PRIORITY_ACCELERATOR
    api_version: ClassVar[str] = PLATFORM_API_VERSION
    device_type: ClassVar[str] = "cpu"           # torch device type
    dist_backend: ClassVar[str] = "gloo"
    device_control_env_var: ClassVar[str] = ""   # e.g. CUDA_VISIBLE_DEVICES
    ray_device_key: ClassVar[str] = "CPU"        # the Ray resource one rank holds (GPU...)
    supported_dtypes: ClassVar[tuple[str, ...]] = ("float32",)
    supported_kv_cache_dtypes: ClassVar[tuple[str, ...]] = ("auto",)
    default_block_size: ClassVar[int] = 16

    # device facts --------------------------------------------------------------------------
    @classmethod
    def device_facts(cls) -> DeviceFacts:
        """Describe the devices. Called by ``vllm-core platforms`` / ``collect-env``."""
        return DeviceFacts()

    @classmethod
    def default_dtype(cls) -> str:
        """The dtype used when the user asks for ``auto`` (a name in ``supported_dtypes``)."""
        return cls.supported_dtypes[0]

    @classmethod
    def total_memory_bytes(cls) -> int:
        return cls.device_facts().total_memory_bytes

    @classmethod
    def free_memory_bytes(cls) -> int:
        """Memory that could hold the KV cache now. The worker calls it after loading weights."""
        raise NotImplementedError

    # choices -------------------------------------------------------------------------------
    @classmethod
    def attention_backends(cls) -> list[str]:
        """Backend names in preference order (names resolved by the attention registry)."""
        return ["reference"]

    @classmethod
    def worker_class(cls) -> str:
        """Dotted path of this platform's Worker class (instantiated once per rank)."""
        return "vllm_core.worker.torch_worker.TorchWorker"

    @classmethod
    def communicator_class(cls) -> str:
        """Dotted path (or class) of the ``Communicator`` subclass the TP / PP / world groups
        use (API 2.1). The default calls ``torch.distributed`` on groups created with
        ``dist_backend``; a vendor with its own collective library (HCCL-style, a custom
        small-message all-reduce) returns its class. See ``vllm_core.distributed``."""
        return "vllm_core.distributed.communicator.TorchDistributedCommunicator"

    @classmethod
    def supports_graph_capture(cls) -> bool:
        """Whether this platform's runner captures device graphs (``ModelRunner.capture_graphs``).
        False clears ``config.graph_batch_sizes`` in ``check_and_update_config``."""
        return False

    @classmethod
    def default_max_num_batched_tokens(cls) -> int:
        return 2048

    @classmethod
    def default_async_scheduling(cls) -> bool:
        """Whether steps overlap by default (the worker launches a step and returns before it
        ends; see ``Worker.execute_model_async``). Worth it where the device runs
        asynchronously to the host."""
        return False

    @classmethod
    def default_engine_core_process(cls) -> bool:
        """Whether the server runs the engine core in its own process by default (the front
        end's HTTP, tokenization and detokenization then have a CPU core of their own; see
        ``vllm_core.engine.core_client``). Worth it where the engine loop keeps a host core
        busy and there are cores to spare; not on a small CPU-only host, where the two
        processes compete for the cores that compute."""
        return False

    @classmethod
    def data_parallel_env(cls, dp_rank: int, world_size: int) -> dict[str, str]:
        """Environment variables of data-parallel engine core ``dp_rank`` whose engine has
        ``world_size`` (TP x PP) ranks: typically the device-control variable naming its
        devices, ranks ``[dp_rank * world_size, (dp_rank + 1) * world_size)`` of the devices
        this process sees. Called in the front end before each core process is spawned (so it
        may query devices); the core process applies the result before it touches a device,
        and its worker processes inherit it. Raise ``ValueError`` saying how many devices are
        needed when there are too few. Default: nothing (devices not partitioned, e.g. the
        CPU, whose cores share the host)."""
        return {}

    # lifecycle hooks -----------------------------------------------------------------------
    @classmethod
    def check_and_update_config(cls, config: EngineConfig) -> None:
        """Validate and adjust ``config`` for this hardware, in place.

        Called once by ``EngineArgs.create_engine_config`` before the workers start. Must
        resolve ``config.model.dtype`` from "auto", set ``config.cache.block_size`` if None and
        ``config.scheduler.max_num_batched_tokens`` if None; raise ``ValueError`` with a clear
        message for a configuration this hardware cannot run (unsupported dtype...).
        """
        from vllm_core.config import normalize_dtype

        model = config.model
        dtype = normalize_dtype(model.dtype)
        if dtype == "auto":
            dtype = cls.default_dtype()
        if dtype not in cls.supported_dtypes:
            raise ValueError(f"platform {cls.name!r} does not support dtype {dtype!r}; "
                             f"supported: {', '.join(cls.supported_dtypes)}")
        model.dtype = dtype
        kv = config.cache.kv_cache_dtype
        if kv not in cls.supported_kv_cache_dtypes:
            raise ValueError(f"platform {cls.name!r} does not support kv_cache_dtype {kv!r}; "
                             f"supported: {', '.join(cls.supported_kv_cache_dtypes)}")
        if config.cache.block_size is None:
            config.cache.block_size = cls.default_block_size
        if config.scheduler.max_num_batched_tokens is None:
            config.scheduler.max_num_batched_tokens = cls.default_max_num_batched_tokens()
        if config.scheduler.async_scheduling is None:
            config.scheduler.async_scheduling = cls.default_async_scheduling()
        if not cls.supports_graph_capture():
            config.graph_batch_sizes = []
        if not config.scheduler.enable_chunked_prefill:
            # without chunking a whole prompt must fit one step
            config.scheduler.max_num_batched_tokens = max(
                config.scheduler.max_num_batched_tokens, config.scheduler.max_model_len)
        config.platform_name = cls.name

    @classmethod
    def verify_model(cls, config: EngineConfig) -> None:
        """Reject a model this platform cannot run (called after the architecture is known)."""

    # runtime helpers -----------------------------------------------------------------------
    @classmethod
    def set_device(cls, index: int) -> None:
        """Make device ``index`` current for this process (called by the worker at start)."""

    @classmethod
    def seed_everything(cls, seed: int) -> None:
        import random

        import torch

        random.seed(seed)
        torch.manual_seed(seed)

    @classmethod
    def synchronize(cls) -> None:
        """Wait for all queued device work."""

    @classmethod
    def empty_cache(cls) -> None:
        """Return cached allocator memory to the device."""

    @classmethod
    def inference_mode(cls) -> Any:
        """The context the worker runs the model in (profiling, graph capture, every step).
        ``torch.inference_mode()`` by default; a backend that cannot trace inference tensors
        returns ``torch.no_grad()``."""
        import torch

        return torch.inference_mode()

    @classmethod
    def describe(cls) -> str:
        """One line for logs: name, device and dtype default."""
        facts = cls.device_facts()
        return (f"{cls.name} ({facts.device_name or cls.device_type}"
                f"{', ' + facts.capability if facts.capability else ''})")
