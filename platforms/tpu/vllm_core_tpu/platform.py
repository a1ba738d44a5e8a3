"""``TpuPlatform``: Google TPUs through torch_xla (PJRT).

torch_xla is reached only through ``vllm_core_tpu.runtime`` (tiny probe functions). The worker
(``TpuWorker``) pads every step to static-shape buckets (``vllm_core_tpu.buckets``) so XLA
compiles a bounded set of graphs; attention is torch_xla's ragged paged attention kernel on a
TPU and a pure-XLA implementation on any other XLA device (XLA's CPU device in CI).
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
from vllm_core_tpu import runtime
from vllm_core_tpu.buckets import Buckets
from vllm_core_tpu.detection import tpu_chip_count

logger = init_logger(__name__)

if TYPE_CHECKING:  # pragma: no cover
    from vllm_core.config import EngineConfig

DEFAULT_MAX_NUM_BATCHED_TOKENS = 512


class TpuPlatform(Platform):
    name: ClassVar[str] = "tpu"
    kind: ClassVar[PlatformKind] = PlatformKind.ACCELERATOR
    priority: ClassVar[int] = PRIORITY_ACCELERATOR
    api_version: ClassVar[str] = PLATFORM_API_VERSION
    device_type: ClassVar[str] = "xla"
    dist_backend: ClassVar[str] = "xla"
    device_control_env_var: ClassVar[str] = "TPU_VISIBLE_CHIPS"
    supported_dtypes: ClassVar[tuple[str, ...]] = ("bfloat16", "float32")
    default_block_size: ClassVar[int] = 16

    @classmethod
    def device_facts(cls) -> DeviceFacts:
        chips = tpu_chip_count()
        if chips == 0:
            return DeviceFacts()
        _free, total = runtime.memory_info()
        return DeviceFacts(device_count=chips, device_name=runtime.pjrt_device_type(),
                           capability=f"torch_xla {runtime.runtime_version()}",
                           total_memory_bytes=total)

    @classmethod
    def default_dtype(cls) -> str:
        return "bfloat16"

    @classmethod
    def free_memory_bytes(cls) -> int:
        return runtime.memory_info()[0]

    @classmethod
    def total_memory_bytes(cls) -> int:
        return runtime.memory_info()[1]

    @classmethod
    def attention_backends(cls) -> list[str]:
        """The Pallas kernel first (it refuses off-TPU), then the portable XLA one."""
        return ["pallas", "xla_paged"]

    @classmethod
    def worker_class(cls) -> str:
        return "vllm_core_tpu.worker.TpuWorker"

    @classmethod
    def default_max_num_batched_tokens(cls) -> int:
        return DEFAULT_MAX_NUM_BATCHED_TOKENS

    @classmethod
    def check_and_update_config(cls, config: EngineConfig) -> None:
        """Base rules, then: no CUDA-style graph sizes (XLA compiles whole steps itself); no
        async scheduling (each step's inputs are fresh bucket-shaped tensors, so a token in
        flight cannot be fed on the device: a warning when it was asked for); ``max_num_seqs`` capped at the token budget; the bucket plan is recorded in
        ``config.extra["tpu_buckets"]`` (token and request buckets, the graph bound);
        ``config.extra["tpu_precompile"]`` defaults to True (compile every bucket at start)."""
        super().check_and_update_config(config)
        sched = config.scheduler
        if sched.async_scheduling:
            logger.warning("async scheduling is not supported on TPU; running steps in order")
            sched.async_scheduling = False
        sched.max_num_seqs = min(sched.max_num_seqs, int(sched.max_num_batched_tokens))
        buckets = Buckets.for_limits(int(sched.max_num_batched_tokens), sched.max_num_seqs)
        config.extra["tpu_buckets"] = {"tokens": list(buckets.tokens),
                                       "requests": list(buckets.requests),
                                       "max_graphs": buckets.max_graphs}
        config.extra.setdefault("tpu_precompile", True)

    @classmethod
    def inference_mode(cls) -> Any:
        """``torch.no_grad()``: torch_xla traces plain tensors; inference tensors are not
        supported by every XLA lowering."""
        import torch

        return torch.no_grad()

    @classmethod
    def synchronize(cls) -> None:
        runtime.sync()
        runtime.wait_device_ops()

    @classmethod
    def seed_everything(cls, seed: int) -> None:
        super().seed_everything(seed)
        runtime.set_rng_state(seed)
