"""Intel Extension for PyTorch (IPEX) on x86 CPUs: chosen by capability, never required.

``ipex_status()`` answers whether IPEX can be used in this process: the package must import
(IPEX refuses to import next to a torch of another major.minor release) and expose the LLM
paged-attention ops. When it can, the CPU platform lists the "ipex_paged" attention backend
first and the worker may use ``IpexLayerOps``; when it cannot, the reason is reported
(``vllm-core platforms``, the selector's refusal) and the torch paths run instead.

Probe boundary: ``import_ipex()`` is the only function that imports IPEX; tests replace it.

The "ipex_paged" backend: KV cache per layer ``(2, num_blocks, num_kv_heads, block_size,
head_size)`` (IPEX's paged layout); one ``PagedAttention.reshape_and_cache`` writes the new
K/V at ``slot_mapping``, one ``PagedAttention.flash_attn_varlen_func`` attends the whole mixed
batch (decodes are chunks of one query; causal masking is aligned to the end of each
request's keys). Memory profiling (an empty cache) falls back to the torch CPU backend.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from vllm_core.attention.backend import (
    AttentionBackend,
    AttentionImpl,
    AttentionMetadataBuilder,
    CommonAttentionMetadata,
)
from vllm_core.model_executor.layers.ops import TorchLayerOps

REQUIRED_OPS = ("reshape_and_cache", "flash_attn_varlen_func")


def import_ipex() -> Any:
    """``import intel_extension_for_pytorch`` (the only place it is imported)."""
    import intel_extension_for_pytorch

    return intel_extension_for_pytorch


@dataclass(frozen=True, slots=True)
class IpexStatus:
    available: bool
    version: str = ""
    reason: str = ""          # why not, when not available


@functools.lru_cache(maxsize=1)
def ipex_status() -> IpexStatus:
    """Probe once per process (the import is slow). ``ipex_status.cache_clear()`` re-probes."""
    try:
        ipex = import_ipex()
    except ImportError as e:
        return IpexStatus(False, reason=f"intel-extension-for-pytorch is not installed ({e})")
    except Exception as e:  # noqa: BLE001 - IPEX aborts on a torch version mismatch
        return IpexStatus(False, reason=f"intel-extension-for-pytorch failed to import: "
                                        f"{type(e).__name__}: {e}")
    version = str(getattr(ipex, "__version__", "?"))
    paged = getattr(getattr(getattr(ipex, "llm", None), "modules", None), "PagedAttention", None)
    missing = [op for op in REQUIRED_OPS if not hasattr(paged, op)]
    if missing:
        return IpexStatus(False, version, f"intel-extension-for-pytorch {version} lacks "
                                          f"PagedAttention.{', '.join(missing)}")
    return IpexStatus(True, version)


def _paged() -> Any:
    return import_ipex().llm.modules.PagedAttention


@dataclass(slots=True)
class IpexAttentionMetadata:
    slot_mapping: torch.Tensor
    cu_seqlens_q: torch.Tensor      # [R + 1] int32
    cu_seqlens_kv: torch.Tensor     # [R + 1] int32
    max_seqlen_q: int
    max_seqlen_kv: int
    block_table: torch.Tensor       # [R, max_blocks] int32
    common: CommonAttentionMetadata


class IpexAttentionMetadataBuilder(AttentionMetadataBuilder):
    def build(self, common: CommonAttentionMetadata) -> IpexAttentionMetadata:
        seq = common.seq_lens.to(torch.int32)
        cu_kv = torch.zeros(common.num_reqs + 1, dtype=torch.int32, device=seq.device)
        cu_kv[1:] = seq.cumsum(0)
        return IpexAttentionMetadata(
            slot_mapping=common.slot_mapping.long(),
            cu_seqlens_q=common.query_start_loc.to(torch.int32), cu_seqlens_kv=cu_kv,
            max_seqlen_q=common.max_query_len, max_seqlen_kv=common.max_seq_len,
            block_table=common.block_table.to(torch.int32), common=common)


class IpexPagedAttentionImpl(AttentionImpl):
    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                kv_cache: torch.Tensor, attn_metadata: IpexAttentionMetadata) -> torch.Tensor:
        md = attn_metadata
        if kv_cache.numel() == 0:
            from vllm_core.attention.backends.reference import ReferenceAttentionBackend

            builder = ReferenceAttentionBackend.get_builder_cls()(md.common.block_size,
                                                                  query.device)
            impl = ReferenceAttentionBackend.get_impl_cls()(
                self.num_heads, self.head_size, self.scale, self.num_kv_heads,
                self.sliding_window)
            return impl.forward(query, key, value, kv_cache, builder.build(md.common))
        paged = _paged()
        key_cache, value_cache = kv_cache[0], kv_cache[1]
        paged.reshape_and_cache(key, value, key_cache, value_cache, md.slot_mapping)
        out = torch.empty_like(query)
        window = -1 if self.sliding_window is None else self.sliding_window - 1
        paged.flash_attn_varlen_func(out, query.contiguous(), key_cache, value_cache,
                                     md.cu_seqlens_q, md.cu_seqlens_kv, md.max_seqlen_q,
                                     md.max_seqlen_kv, self.scale, True, md.block_table, None,
                                     window, -1)
        return out.view(query.shape[0], self.num_heads * self.head_size)


class IpexPagedAttentionBackend(AttentionBackend):
    """IPEX's CPU paged attention; refuses (with the reason) where IPEX cannot be used."""

    name: ClassVar[str] = "ipex_paged"
    supported_dtypes: ClassVar[tuple[str, ...]] = ("bfloat16", "float32")
    supported_head_sizes: ClassVar[tuple[int, ...] | None] = (32, 64, 80, 96, 112, 128, 256)
    supports_sliding_window: ClassVar[bool] = True
    preferred_block_size: ClassVar[int] = 16

    @classmethod
    def unsupported_reasons(cls, *, head_size: int, dtype: str, kv_cache_dtype: str,
                            block_size: int | None, sliding_window: int | None) -> list[str]:
        reasons = super().unsupported_reasons(
            head_size=head_size, dtype=dtype, kv_cache_dtype=kv_cache_dtype,
            block_size=block_size, sliding_window=sliding_window)
        status = ipex_status()
        if not status.available:
            reasons.insert(0, status.reason)
        return reasons

    @staticmethod
    def get_kv_cache_shape(num_blocks: int, block_size: int, num_kv_heads: int,
                           head_size: int) -> tuple[int, ...]:
        return (2, num_blocks, num_kv_heads, block_size, head_size)

    @staticmethod
    def get_builder_cls() -> type[AttentionMetadataBuilder]:
        return IpexAttentionMetadataBuilder

    @staticmethod
    def get_impl_cls() -> type[AttentionImpl]:
        return IpexPagedAttentionImpl


class IpexLayerOps(TorchLayerOps):
    """IPEX's fused RMSNorm, add+RMSNorm and SiLU-and-mul kernels; rotary and linear stay on
    torch (oneDNN). Use only when ``ipex_status().available``."""

    def __init__(self) -> None:
        self._f = import_ipex().llm.functional

    def rms_norm(self, x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
        return self._f.rms_norm(x, w, eps)

    def fused_add_rms_norm(self, x: torch.Tensor, residual: torch.Tensor, w: torch.Tensor,
                           eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        residual = residual.clone()
        out = self._f.add_rms_norm(residual, x, w, None, eps, True)
        return out, residual

    def silu_and_mul(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = x.chunk(2, dim=-1)
        return self._f.silu_mul(gate.contiguous(), up.contiguous())


def preferred_layer_ops() -> TorchLayerOps | None:
    """``IpexLayerOps()`` when IPEX is usable, else None (the worker's own ops)."""
    return IpexLayerOps() if ipex_status().available else None
