"""``CudaLayerOps``: the Triton plugin's layer kernels (``TritonLayerOps``) plus this plugin's
own CUDA kernels where they are selected (``VLLM_CUDA_WNA16_KERNEL=cuda``, the default: the
tensor-core W4A16 decode GEMV, ``wna16_mma.py``). With ``VLLM_CUDA_WNA16_KERNEL=triton`` it is
``TritonLayerOps``."""

from __future__ import annotations

from typing import Any

import torch
from vllm_core_triton.ops import TritonLayerOps

from vllm_core.logger import init_logger

logger = init_logger(__name__)


class CudaLayerOps(TritonLayerOps):
    """``wna16_kernel`` ``"cuda"``: W4A16 linears over 1-8 rows whose weight the tensor-core
    GEMV serves run it, everything else the Triton kernels (prefill, larger batches,
    act-order, 8-bit; ``quant_kernel_name`` says which and why); ``wna16_pack``: its weights
    also get the packed layout at load (``prepare_quantized``; a second copy of the weight).
    The kernels are built (nvcc, cached) when the first W4A16 weight is prepared at load, so
    models without one never build them and no build happens during a CUDA-graph capture; if
    the build fails the ops stay on Triton (the reason logged). ``"triton"``:
    ``TritonLayerOps`` unchanged."""

    def __init__(self, gemv_max_rows: int = 0, wna16_kernel: str = "cuda",
                 wna16_pack: bool = False) -> None:
        super().__init__(gemv_max_rows)
        if wna16_kernel not in ("triton", "cuda"):
            raise ValueError(f"wna16_kernel: 'triton' or 'cuda', got {wna16_kernel!r}")
        self.wna16_kernel = wna16_kernel
        self.wna16_pack = wna16_pack

    def _cuda_gemv_ready(self) -> bool:
        """Whether the CUDA GEMV is selected and its kernels load (built on the first call);
        a failed build switches these ops to Triton, with the reason logged once."""
        if self.wna16_kernel != "cuda":
            return False
        from vllm_core_cuda.kernels import build_error

        error = build_error()
        if error is not None:
            logger.warning("VLLM_CUDA_WNA16_KERNEL=cuda: %s; W4A16 stays on Triton", error)
            self.wna16_kernel = "triton"
            return False
        return True

    def wna16_linear(self, x: torch.Tensor, w: Any,
                     bias: torch.Tensor | None = None) -> torch.Tensor:
        if self.wna16_kernel == "cuda":
            from vllm_core_cuda import wna16_mma

            if wna16_mma.serves(x, w):
                return wna16_mma.wna16_mma_linear(x, w, bias)
        return super().wna16_linear(x, w, bias)

    def prepare_quantized(self, kind: str, w: Any) -> Any:
        """Builds the CUDA kernels at the first W4A16 weight (at load, before any capture);
        with ``VLLM_CUDA_WNA16_PACK=1`` the weights the GEMV serves get its packed layout
        beside the GPTQ one (``wna16_mma.pack``)."""
        if kind == "wna16" and self._cuda_gemv_ready() and self.wna16_pack:
            from vllm_core_cuda import wna16_mma

            return wna16_mma.pack(w)
        return super().prepare_quantized(kind, w)

    def quant_kernel_name(self, kind: str, w: object) -> str:
        base = super().quant_kernel_name(kind, w)
        if self.wna16_kernel != "cuda" or kind != "wna16":
            return base
        from vllm_core_cuda import wna16_mma

        dtype = getattr(getattr(w, "scales", None), "dtype", None)
        reason = wna16_mma.unsupported_reason(w, dtype)
        if reason is None:
            layout = ("packed" if isinstance(w, wna16_mma.PackedWNA16Weight)
                      else "GPTQ layout as loaded")
            return f"{wna16_mma.KERNEL_NAME}, {layout}; over 8 rows: {base}"
        return f"{base} (the CUDA GEMV does not serve it: {reason})"
