"""CpuWorker: the core TorchWorker with CPU threading and a RAM-based KV budget."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from vllm_core.devices import HOST
from vllm_core.logger import init_logger
from vllm_core.model_executor.layers.ops import TorchLayerOps
from vllm_core.worker.torch_worker import TorchWorker

logger = init_logger(__name__)

DEFAULT_KV_FRACTION = 0.25        # of the RAM available after loading the model
DEFAULT_KV_CAP_BYTES = 4 << 30    # never more than 4 GiB unless asked (VLLM_CPU_KVCACHE_SPACE)


class CpuWorker(TorchWorker):
    """KV budget: ``cache.cache_space_bytes`` (VLLM_CPU_KVCACHE_SPACE / --kv-cache-space-gib)
    when set, else min(25% of available RAM, 4 GiB). Threads: ``config.num_threads``."""

    def init_device(self) -> None:
        from vllm_core_cpu.platform import apply_thread_binding

        apply_thread_binding(self.config)        # core binding and torch intra-op threads
        super().init_device()
        logger.info("CPU worker: %d threads, dtype %s", torch.get_num_threads(),
                    self.config.model.dtype)

    def make_device(self) -> torch.device:
        return HOST

    def runner_class(self) -> type:
        """``CpuModelRunner``: decode-only steps through the fused C++ decoder stack where it
        applies (``decode_stack.py``; VLLM_CPU_FUSED_DECODE=0 turns it off)."""
        from vllm_core_cpu.model_runner import CpuModelRunner

        return CpuModelRunner

    def layer_ops(self) -> Any:
        return CpuLayerOps()

    def determine_available_memory(self) -> int:
        cache = self.config.cache
        if cache.cache_space_bytes is not None:
            return int(cache.cache_space_bytes)
        available = self.platform.free_memory_bytes()
        return int(min(available * DEFAULT_KV_FRACTION, DEFAULT_KV_CAP_BYTES))


class CpuLayerOps(TorchLayerOps):
    """Torch ops with a batch-invariant linear: oneDNN computes a single-row product with a
    different kernel (and rounding) than a multi-row one, so one row is computed as two.
    Quantized int4 / int8 weight-only layers (``quant_ops``), W8A8 INT8 layers (``int8_ops``),
    RMS norms and ``silu_and_mul`` (``norm_ops``) run the plugin's C++ kernels where they
    apply, else the core's reference. ``int8_activations`` (read once from
    VLLM_CPU_WNA16_ACTIVATIONS, honoured on x86 AVX2 builds): the int4 / int8 weight-only
    kernel quantizes activations to int8 (``quant_ops``). ``int8_amx`` (read once from
    VLLM_CPU_INT8_AMX): the W8A8 INT8 kernel may use AMX tiles; ``int8_packed`` (read once
    from VLLM_CPU_INT8_PACKED): W8A8 INT8 weights are packed at load for the AVX-512 VNNI /
    AMX paths (``prepare_quantized``, ``int8_ops.pack``)."""

    def __init__(self, int8_activations: bool | None = None,
                 int8_amx: bool | None = None, int8_packed: bool | None = None) -> None:
        from vllm_core_cpu import envs, quant_ops

        if int8_activations is None:
            int8_activations = envs.cpu_wna16_activations() == "int8"
        self.int8_activations = bool(int8_activations
                                     and quant_ops.int8_activations_available())
        self.int8_amx = envs.cpu_int8_amx() if int8_amx is None else bool(int8_amx)
        self.int8_packed = envs.cpu_int8_packed() if int8_packed is None else bool(int8_packed)

    def rms_norm(self, x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
        from vllm_core_cpu import norm_ops

        y = norm_ops.rms_norm(x, w, eps)
        return super().rms_norm(x, w, eps) if y is None else y

    def fused_add_rms_norm(self, x: torch.Tensor, residual: torch.Tensor, w: torch.Tensor,
                           eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        from vllm_core_cpu import norm_ops

        y = norm_ops.fused_add_rms_norm(x, residual, w, eps)
        return super().fused_add_rms_norm(x, residual, w, eps) if y is None else y

    def silu_and_mul(self, x: torch.Tensor) -> torch.Tensor:
        from vllm_core_cpu import norm_ops

        y = norm_ops.silu_and_mul(x)
        return super().silu_and_mul(x) if y is None else y

    def wna16_linear(self, x: torch.Tensor, w: Any,
                     bias: torch.Tensor | None = None) -> torch.Tensor:
        from vllm_core_cpu import quant_ops

        y = quant_ops.wna16_linear(x, w, bias, self.int8_activations)
        return super().wna16_linear(x, w, bias) if y is None else y

    def int8_linear(self, x: torch.Tensor, w: Any,
                    bias: torch.Tensor | None = None) -> torch.Tensor:
        from vllm_core_cpu import int8_ops

        y = int8_ops.int8_linear(x, w, bias, self.int8_amx)
        return super().int8_linear(x, w, bias) if y is None else y

    def prepare_quantized(self, kind: str, w: Any) -> Any:
        """W8A8 INT8 weights packed once for the VNNI / AMX paths where the build has them
        and ``int8_packed`` is on; everything else as it is."""
        from vllm_core.model_executor.quantization.quantized_weights import Int8Weight

        if kind == "int8" and self.int8_packed and isinstance(w, Int8Weight):
            from vllm_core_cpu import int8_ops

            packed = int8_ops.pack(w)
            if packed is not None:
                return packed
        return w

    def quant_kernel_name(self, kind: str, w: object) -> str:
        from vllm_core_cpu import quant_ops

        if kind == "wna16" and quant_ops.kernels_available() and quant_ops.kernel_fits(
                torch.empty(0, dtype=w.scales.dtype), w, None):
            return quant_ops.kernel_name(self.int8_activations)
        if kind == "int8":
            from vllm_core_cpu import int8_ops

            if isinstance(w, int8_ops.PackedInt8Weight):
                return int8_ops.kernel_name(self.int8_amx, packed=True)
            if int8_ops.kernels_available() and int8_ops.kernel_fits(
                    torch.empty(0, w.weight.shape[1]), w):
                return int8_ops.kernel_name(self.int8_amx)
        return super().quant_kernel_name(kind, w)

    def linear(self, x: torch.Tensor, weight: torch.Tensor,
               bias: torch.Tensor | None = None) -> torch.Tensor:
        if x.shape[0] == 1:
            return F.linear(torch.cat((x, x)), weight, bias)[:1]
        return F.linear(x, weight, bias)
