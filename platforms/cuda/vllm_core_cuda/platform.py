"""``CudaPlatform``: NVIDIA GPUs through torch's CUDA build.

Every torch.cuda call of vllm-core lives in this plugin (the core never imports them). Device
probes are small module functions (``device_capability`` ...), so tests fake them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from vllm_core.logger import init_logger
from vllm_core.platforms.interface import (
    PLATFORM_API_VERSION,
    PRIORITY_ACCELERATOR,
    DeviceFacts,
    Platform,
    PlatformKind,
)

if TYPE_CHECKING:  # pragma: no cover
    from vllm_core.config import EngineConfig

logger = init_logger(__name__)

MAX_GRAPH_BATCH_SIZE = 512


def default_graph_batch_sizes(max_num_seqs: int, limit: int = MAX_GRAPH_BATCH_SIZE) -> list[int]:
    """Batch sizes to capture: 1, 2, 4, then every multiple of 8 up to ``limit``.

    Sizes above ``max_num_seqs`` are dropped except the first one, so every batch the scheduler
    can form pads up to a captured size: [1, 2, 4, 8, 16, 24, 32, ..., 512] for 512 sequences.
    """
    if max_num_seqs < 1:
        raise ValueError(f"max_num_seqs must be >= 1, got {max_num_seqs}")
    candidates = [1, 2, 4, *range(8, limit + 1, 8)]
    sizes = [s for s in candidates if s < max_num_seqs]
    bigger = [s for s in candidates if s >= max_num_seqs]
    if bigger:
        sizes.append(bigger[0])
    return sizes


def micro_batch_graph_sizes(sizes: list[int], max_num_seqs: int, depth: int) -> list[int]:
    """The decode graph sizes worth capturing when pipeline micro-batching keeps ``depth``
    steps in flight: a decode-only step then holds at most ``ceil(max_num_seqs / depth)``
    running requests (``InFlightRequests.seat_cap``), so ``sizes`` (sorted) are cut after the
    first one that holds that many; a larger batch, which micro-batching never forms, would run
    eager. ``depth`` 1 (no micro-batching) keeps ``sizes`` as they are."""
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    if depth == 1 or not sizes:
        return list(sizes)
    cap = -(-max_num_seqs // depth)
    kept = [s for s in sizes if s < cap]
    bigger = [s for s in sizes if s >= cap]
    return kept + bigger[:1]


def device_capability(index: int = 0) -> tuple[int, int]:
    import torch

    return tuple(torch.cuda.get_device_capability(index))  # type: ignore[return-value]


def device_count() -> int:
    import torch

    return torch.cuda.device_count()


def device_properties(index: int = 0) -> Any:
    import torch

    return torch.cuda.get_device_properties(index)


class CudaPlatform(Platform):
    """NVIDIA GPUs. bfloat16 by default from compute capability 8.0 (Ampere), else float16."""

    name: ClassVar[str] = "cuda"
    kind: ClassVar[PlatformKind] = PlatformKind.ACCELERATOR
    priority: ClassVar[int] = PRIORITY_ACCELERATOR
    api_version: ClassVar[str] = PLATFORM_API_VERSION
    device_type: ClassVar[str] = "cuda"
    dist_backend: ClassVar[str] = "nccl"
    device_control_env_var: ClassVar[str] = "CUDA_VISIBLE_DEVICES"
    ray_device_key: ClassVar[str] = "GPU"
    supported_dtypes: ClassVar[tuple[str, ...]] = ("bfloat16", "float16", "float32")
    supported_kv_cache_dtypes: ClassVar[tuple[str, ...]] = ("auto", "fp8", "fp8_e4m3",
                                                             "fp8_e5m2")
    default_block_size: ClassVar[int] = 16
    min_bf16_capability: ClassVar[tuple[int, int]] = (8, 0)

    @classmethod
    def device_facts(cls) -> DeviceFacts:
        import torch

        count = device_count()
        if count == 0:
            return DeviceFacts(details={"cuda": torch.version.cuda})
        props = device_properties(0)
        major, minor = device_capability(0)
        return DeviceFacts(
            device_count=count,
            device_name=props.name,
            capability=f"{major}.{minor}",
            total_memory_bytes=int(props.total_memory),
            details={"cuda": torch.version.cuda,
                     "devices": [device_properties(i).name for i in range(count)]},
        )

    @classmethod
    def default_dtype(cls) -> str:
        return "bfloat16" if device_capability(0) >= cls.min_bf16_capability else "float16"

    @classmethod
    def total_memory_bytes(cls) -> int:
        return int(device_properties(0).total_memory)

    @classmethod
    def free_memory_bytes(cls) -> int:
        import torch

        free, _total = torch.cuda.mem_get_info()
        return int(free)

    @classmethod
    def attention_backends(cls) -> list[str]:
        return ["triton", "flash_attn", "flashinfer"]

    @classmethod
    def worker_class(cls) -> str:
        return "vllm_core_cuda.worker.CudaWorker"

    @classmethod
    def supports_graph_capture(cls) -> bool:
        return True

    @classmethod
    def communicator_class(cls) -> str:
        """NCCL, plus a graph-capturable symmetric-memory all-reduce for small messages."""
        return "vllm_core_cuda.communicator.CudaCommunicator"

    @classmethod
    def data_parallel_env(cls, dp_rank: int, world_size: int) -> dict[str, str]:
        """``CUDA_VISIBLE_DEVICES`` = this core's GPUs (``data_parallel_devices``)."""
        import os

        from vllm_core.distributed.data_parallel import data_parallel_devices

        var = cls.device_control_env_var
        visible = os.environ.get(var)
        count = 0 if visible else device_count()
        ids = data_parallel_devices(visible, count, dp_rank, world_size, var)
        return {var: ",".join(ids)}

    @classmethod
    def default_async_scheduling(cls) -> bool:
        """The GPU runs a step while the host schedules and prepares the next one."""
        return True

    @classmethod
    def default_engine_core_process(cls) -> bool:
        """The engine loop keeps one host core busy feeding the GPU; the HTTP front end gets
        its own process (issue 11: the single-process server made 62-73% of offline)."""
        return True

    @classmethod
    def default_max_num_batched_tokens(cls) -> int:
        """Large prefill chunks keep an accelerator's matmuls efficient."""
        return 8192

    @classmethod
    def check_and_update_config(cls, config: EngineConfig) -> None:
        """Base rules, then: bfloat16 needs ``min_bf16_capability``; graph batch sizes unless
        ``enforce_eager`` (user-given sizes are kept, sorted). With pipeline micro-batching
        the sizes stop at the half batch micro-batching forms (``micro_batch_graph_sizes``);
        every pipeline stage captures the same sizes (its graph takes the received
        intermediates from static buffers, ``stage_buffers.StageGraphBuffers``). Tensor
        parallelism keeps its graph sizes: the worker captures them only when the TP group's
        all-reduce is graph-safe (``CudaCommunicator.enable_fast_all_reduce``; NCCL inside a
        captured graph hung on the two-H200 host, hardware-notes.md), else it runs eager."""
        super().check_and_update_config(config)
        cls._check_dtype(config.model.dtype)
        if config.enforce_eager:
            config.graph_batch_sizes = []
        elif config.graph_batch_sizes:
            config.graph_batch_sizes = sorted(set(config.graph_batch_sizes))
        else:
            config.graph_batch_sizes = micro_batch_graph_sizes(
                default_graph_batch_sizes(config.scheduler.max_num_seqs),
                config.scheduler.max_num_seqs, config.parallel.max_concurrent_batches)

    @classmethod
    def _check_dtype(cls, dtype: str) -> None:
        if dtype == "bfloat16":
            cap = device_capability(0)
            if cap < cls.min_bf16_capability:
                raise ValueError(
                    f"dtype bfloat16 needs compute capability >= "
                    f"{cls.min_bf16_capability[0]}.{cls.min_bf16_capability[1]}, this GPU has "
                    f"{cap[0]}.{cap[1]}; use --dtype float16")

    # runtime helpers -------------------------------------------------------------------
    @classmethod
    def set_device(cls, index: int) -> None:
        import torch

        torch.cuda.set_device(index)

    @classmethod
    def seed_everything(cls, seed: int) -> None:
        import torch

        super().seed_everything(seed)
        torch.cuda.manual_seed_all(seed)

    @classmethod
    def synchronize(cls) -> None:
        import torch

        torch.cuda.synchronize()

    @classmethod
    def empty_cache(cls) -> None:
        import torch

        torch.cuda.empty_cache()
