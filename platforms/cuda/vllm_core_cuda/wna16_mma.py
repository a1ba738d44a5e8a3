"""The CUDA plugin's tensor-core W4A16 decode GEMV (``csrc/wna16_mma.cu``), behind
``CudaLayerOps`` when ``VLLM_CUDA_WNA16_KERNEL=cuda``.

Contract: ``wna16_mma_linear(x, w, bias)`` is ``x @ dequantize(w).T + bias`` in ``x.dtype`` for
the core's ``WNA16Weight`` (GPTQ layout: int32 ``qweight [K / 8, N]``, 4-bit fields least
significant first, ``scales`` / ``zeros`` ``[G, N]`` in the activation dtype) or its
``PackedWNA16Weight`` (``pack``), float32 accumulation, exact up to float32 reassociation (the
group scale is applied to each 128-input partial sum, as the Triton factored GEMV does). Rows
are independent: a row's result does not depend on the batch it is in. No workspace, no
atomics: capturable in CUDA graphs.

What it serves (``unsupported_reason`` names the first miss; ``serves`` adds the rows):
1-8 rows of float16 / bfloat16 activations, 4-bit weights without ``g_idx`` (no act-order),
groups a multiple of 128 dividing K (per-channel included), K a multiple of 128, N of 32, CUDA
tensors (``qweight`` 16-byte, ``scales`` / ``zeros`` 8-byte aligned), a GPU of compute
capability 8.0 or newer with the plugin's kernels built (``kernels.build_error``). Everything
else (prefill, larger batches, act-order, 8-bit) stays on the Triton kernels.

Layouts: the kernel reads the GPTQ words as they are (nibbles ``i`` and ``i + 4`` of a word
make one half pair of an MMA operand; the activations are permuted to match), so no bit is
moved at load. ``pack`` (``LayerOps.prepare_quantized``) only reorders whole 16-byte vectors so
that each block of 32 outputs streams one contiguous range (512 contiguous bytes a warp load,
GPTQ rows are ``4 N`` bytes apart) and puts each lane's 4 scales and 4 zero points in one
16-byte vector. The packed copy sits beside the GPTQ tensors, which the Triton kernels keep
reading (prefill, over 8 rows): W4A16 weights take twice their memory with it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields

import torch

from vllm_core.model_executor.quantization.quantized_weights import WNA16Weight

MAX_ROWS = 8                # the MMA's 8 B columns
WARPS = (2, 4, 8, 16)       # warps a block of 32 outputs (the kernel's launch plans)
KERNEL_NAME = "cuda wna16 mma GEMV (tensor cores; 1-8 rows)"


@dataclass(frozen=True, slots=True)
class MmaPlan:
    """A launch of the GEMV: blocks of ``warps`` warps, each serving 32 outputs with its warps
    splitting K by 128-input units; ``pdl``: programmatic dependent launch (the first weight
    loads overlap the end of the kernel before; sm_90)."""

    warps: int
    pdl: bool = False

    def __post_init__(self) -> None:
        if self.warps not in WARPS:
            raise ValueError(f"no GEMV plan with {self.warps} warps: one of {WARPS}")


@dataclass(slots=True)
class PackedWNA16Weight(WNA16Weight):
    """A ``WNA16Weight`` with its GEMV layout beside it (``pack``): ``packed`` int32
    ``[N / 32, K / 32, 32, 4]`` (block of 32 outputs, step of 32 inputs, lane ``4 g + t``: the
    GPTQ words of row ``4 step + t``, outputs ``32 block + 4 g .. + 3``), ``packed_scales``
    int32 ``[N / 32, G, 8, 4]`` (the halves ``s s s s z z z z`` of those 4 outputs in group G).
    Every other consumer reads it as the plain weight."""

    packed: torch.Tensor | None = None
    packed_scales: torch.Tensor | None = None


def unsupported_reason(w: object, dtype: torch.dtype | None) -> str | None:
    """None when the GEMV serves weight ``w`` with ``dtype`` activations (at 1-8 rows), else
    why not, in a few words (the start-up log's fallback reason)."""
    if not isinstance(w, WNA16Weight):
        return f"not a WNA16Weight ({type(w).__name__})"
    if w.bits != 4:
        return f"{w.bits}-bit weights"
    if w.g_idx is not None:
        return "act-order (g_idx)"
    if dtype not in (torch.bfloat16, torch.float16):
        return f"{dtype} activations"
    k, n = w.in_features, w.out_features
    if k % 128 or n % 32:
        return f"K={k} (needs a multiple of 128) or N={n} (of 32)"
    if w.group_size % 128 or k % w.group_size:
        return f"groups of {w.group_size} (needs a multiple of 128 dividing K)"
    if w.qweight.device.type != "cuda":
        return "weights not on a CUDA device"
    if w.scales.dtype != dtype:
        return f"{w.scales.dtype} scales for {dtype} activations"
    if isinstance(w, PackedWNA16Weight) and w.packed is not None:
        return _kernels_missing()
    if (w.qweight.shape != (k // 8, n) or not w.qweight.is_contiguous()
            or w.qweight.data_ptr() % 16):
        return "qweight not a contiguous, 16-byte aligned [K / 8, N]"
    for name in ("scales", "zeros"):
        t = getattr(w, name)
        if t.dtype != dtype or not t.is_contiguous() or t.data_ptr() % 8:
            return f"{name} not contiguous 8-byte aligned {dtype}"
    return _kernels_missing()


def _kernels_missing() -> str | None:
    from vllm_core_cuda.kernels import build_error

    return build_error()


def serves(x: torch.Tensor, w: object) -> bool:
    """Whether ``wna16_mma_linear`` takes this call (1-8 rows of a 2-D ``x``, weight served)."""
    return (x.dim() == 2 and 1 <= x.shape[0] <= MAX_ROWS
            and unsupported_reason(w, x.dtype) is None)


def default_plan(n: int) -> MmaPlan:
    """``VLLM_CUDA_WNA16_PLAN`` / ``VLLM_CUDA_WNA16_PDL`` when set; else the most warps a
    block whose ``N / 32`` blocks all fit on the GPU at once (one wave: no tail; more warps
    split K finer), and 4 when none does (measured best then)."""
    from vllm_core_cuda import envs

    forced, pdl = envs.cuda_wna16_plan(), envs.cuda_wna16_pdl()
    if forced is not None:
        return MmaPlan(forced, pdl)
    blocks = n // 32
    for warps in (16, 8, 4, 2):
        if blocks <= _resident_blocks(warps):
            return MmaPlan(warps, pdl)
    return MmaPlan(4, pdl)


@functools.cache
def _resident_blocks(warps: int) -> int:
    sms = torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count
    return sms * int(torch.ops.vllm_core_cuda.wna16_mma_blocks_per_sm(warps))


def wna16_mma_linear(x: torch.Tensor, w: WNA16Weight, bias: torch.Tensor | None = None,
                     plan: MmaPlan | None = None) -> torch.Tensor:
    """``x [M, K] @ dequantize(w).T + bias`` through the tensor-core GEMV (the packed layout
    when ``w`` has one); the caller checked ``serves(x, w)``. ``plan`` None: ``default_plan``."""
    if plan is None:
        plan = default_plan(w.out_features)
    if not x.is_contiguous() or x.data_ptr() % 16:
        x = x.clone(memory_format=torch.contiguous_format)
    if bias is not None and (bias.dtype != x.dtype or not bias.is_contiguous()):
        bias = bias.to(x.dtype).contiguous()
    if isinstance(w, PackedWNA16Weight) and w.packed is not None:
        qweight, scales, zeros = w.packed, w.packed_scales, None
    else:
        qweight, scales, zeros = w.qweight, w.scales, w.zeros
    return torch.ops.vllm_core_cuda.wna16_mma_gemv(x, qweight, scales, zeros, w.out_features,
                                                   w.group_size, bias, plan.warps, plan.pdl)


def pack(w: WNA16Weight) -> WNA16Weight:
    """``w`` with the GEMV's packed layout beside it (``PackedWNA16Weight``) when the GEMV
    serves it, else ``w`` itself; a reordering of 16-byte vectors (torch, on ``w``'s device)."""
    if unsupported_reason(w, w.scales.dtype) is not None or isinstance(w, PackedWNA16Weight):
        return w
    packed, packed_scales = packed_layout(w)
    parts = {f.name: getattr(w, f.name) for f in fields(WNA16Weight)}
    return PackedWNA16Weight(**parts, packed=packed, packed_scales=packed_scales)


def packed_layout(w: WNA16Weight) -> tuple[torch.Tensor, torch.Tensor]:
    """``(packed, packed_scales)`` of ``PackedWNA16Weight`` for ``w`` (any device; K % 32,
    N % 32 == 0, scales / zeros of a 16-bit dtype)."""
    k, n = w.in_features, w.out_features
    g = w.scales.shape[0]
    # GPTQ [K / 8, N] words as [step, t, block, g, word] -> [block, step, g, t, word]
    packed = w.qweight.view(k // 32, 4, n // 32, 8, 4).permute(2, 0, 3, 1, 4).contiguous()
    halves = torch.stack([w.scales.view(g, n // 32, 8, 4), w.zeros.view(g, n // 32, 8, 4)], 3)
    return packed, halves.permute(1, 0, 2, 3, 4).contiguous().view(torch.int32)
