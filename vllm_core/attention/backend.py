"""The AttentionBackend contract: paged attention over a mixed batch.

Batch layout (the model runner guarantees it): the scheduled requests of one step are ordered
with all decode requests (exactly one new token) first, then prefill chunks (more than one new
token, or the first token of a prompt). Their new tokens are concatenated in that order into one
flat token axis of length ``num_tokens``.

KV layout: one cache tensor per layer, shape ``backend.get_kv_cache_shape(...)``; the slot of a
token is ``block_id * block_size + offset``. Block 0 is never handed to a request (the block pool
reserves it as the null block), so padded block-table entries may point at 0.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch


@dataclass(slots=True)
class CommonAttentionMetadata:
    """Backend-neutral description of one step, built by the model runner.

    All index tensors are int32 or int64 on the model's device unless noted.
      query_start_loc  [num_reqs + 1]  cumulative new-token counts (0, q0, q0+q1, ...)
      seq_lens         [num_reqs]      tokens in the KV after this step (computed + new)
      context_lens     [num_reqs]      tokens already in the KV before this step
      block_table      [num_reqs, max_blocks_per_req]  block ids (padding = 0)
      slot_mapping     [num_tokens]    KV slot of every new token
      query_start_loc_cpu / seq_lens_cpu: the same on the host, for shape decisions
    Invariants: requests [0, num_decodes) have exactly one new token; max_query_len and
    max_seq_len are exact maxima over the batch.
    """

    query_start_loc: torch.Tensor
    seq_lens: torch.Tensor
    context_lens: torch.Tensor
    block_table: torch.Tensor
    slot_mapping: torch.Tensor
    query_start_loc_cpu: torch.Tensor
    seq_lens_cpu: torch.Tensor
    num_reqs: int
    num_tokens: int
    num_decodes: int
    max_query_len: int
    max_seq_len: int
    block_size: int


class AttentionMetadataBuilder(ABC):
    """Turns the common metadata into the backend's own, once per step (shared by all layers)."""

    def __init__(self, block_size: int, device: torch.device) -> None:
        self.block_size = block_size
        self.device = device

    @abstractmethod
    def build(self, common: CommonAttentionMetadata) -> Any:
        """Return the metadata object every layer's ``AttentionImpl.forward`` receives."""

    def build_for_capture(self, common: CommonAttentionMetadata, max_seq_len: int) -> Any:
        """Metadata for a graph capture (API 2.0): a padded batch of ``common.num_reqs``
        requests and ``common.num_tokens`` tokens whose launch plan is fixed for every context
        up to ``max_seq_len``. ``common.max_query_len`` 1: a decode-only batch; q > 1 (API 2.6,
        only when the backend sets ``supports_verify_graph_capture``): a verification batch
        whose requests each have at most q tokens except the last, which may hold up to
        ``num_tokens`` padding tokens. The graph replays with other lengths, read only from
        the device tensors of ``common`` (whose addresses stay fixed), so nothing in the
        result may depend on host copies of the lengths. Required when the backend sets
        ``supports_graph_capture``."""
        raise NotImplementedError(f"{type(self).__name__} cannot build metadata for a graph")


class AttentionImpl(ABC):
    """One layer's attention computation. Created once per layer at model construction.

    ``fuses_rotary`` (API 1.2): the implementation applies the rotary embedding itself in
    ``forward_with_rotary`` (for instance while writing K into the cache) and the model then
    hands it unrotated q/k; implementations that leave it False are called as before."""

    fuses_rotary: ClassVar[bool] = False
    # API 2.2 (additive): the implementation applies ``k_scale`` / ``v_scale`` (set by ``set_kv_scales``)
    # to a float8 KV cache as ``attention/kv_scales.py`` states; a backend that accepts an fp8
    # cache but leaves this False is refused for checkpoints with calibrated scales.
    supports_kv_scales: ClassVar[bool] = False
    k_scale: torch.Tensor | None = None
    v_scale: torch.Tensor | None = None

    def set_kv_scales(self, k_scale: torch.Tensor, v_scale: torch.Tensor) -> None:
        """Hand the layer's KV-cache scales (float32 scalars on the model's device) to the
        implementation, once after loading. Raises when they are not 1 and the
        implementation cannot apply them."""
        if not self.supports_kv_scales and bool((k_scale != 1).any() or (v_scale != 1).any()):
            raise ValueError(f"attention implementation {type(self).__name__} cannot apply "
                             "the checkpoint's calibrated KV-cache scales (k_scale / v_scale); "
                             "use --attention-backend triton (GPU) or reference")
        self.k_scale, self.v_scale = k_scale, v_scale

    def __init__(self, num_heads: int, head_size: int, scale: float, num_kv_heads: int,
                 sliding_window: int | None = None) -> None:
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads "
                             f"({num_kv_heads})")
        self.num_heads = num_heads
        self.head_size = head_size
        self.scale = scale
        self.num_kv_heads = num_kv_heads
        self.sliding_window = sliding_window

    @abstractmethod
    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                kv_cache: torch.Tensor, attn_metadata: Any) -> torch.Tensor:
        """Write ``key``/``value`` of the new tokens into ``kv_cache`` at ``slot_mapping``, then
        attend every new query to its request's whole context (cached + new, causal).

        query [num_tokens, num_heads, head_size]; key/value [num_tokens, num_kv_heads,
        head_size]; returns [num_tokens, num_heads * head_size] in the query's dtype.
        ``kv_cache`` may be an empty tensor during memory profiling: then skip the write and
        attend to the new tokens alone (each request's chunk is then its whole context).
        """

    def forward_with_rotary(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                            kv_cache: torch.Tensor, attn_metadata: Any, positions: torch.Tensor,
                            cos_sin_cache: torch.Tensor) -> torch.Tensor:
        """``forward`` after the neox-style rotary embedding of ``query`` and ``key`` at
        ``positions`` (``cos_sin_cache`` [max_position, rotary_dim] = cat(cos, sin)); only
        called when ``fuses_rotary`` is True."""
        raise NotImplementedError(f"{type(self).__name__} does not fuse the rotary embedding")


class AttentionBackend(ABC):
    """A family of attention kernels. Stateless; the registry maps names to these classes."""

    name: ClassVar[str] = ""
    supported_dtypes: ClassVar[tuple[str, ...]] = ("float32", "bfloat16", "float16")
    supported_kv_cache_dtypes: ClassVar[tuple[str, ...]] = ("auto",)
    supported_head_sizes: ClassVar[tuple[int, ...] | None] = None     # None: any
    supported_block_sizes: ClassVar[tuple[int, ...] | None] = None    # None: any
    supports_sliding_window: ClassVar[bool] = False
    preferred_block_size: ClassVar[int] = 16
    required_packages: ClassVar[tuple[str, ...]] = ()                  # importable modules
    # API 2.0: the block table's integer type, and whether a step may be captured in a device
    # graph (launch shapes fixed on the host, every length read from device tensors, the
    # metadata builder's ``build_for_capture`` implemented).
    block_table_dtype: ClassVar[torch.dtype] = torch.int64
    supports_graph_capture: ClassVar[bool] = False
    # API 2.6: graphs of several tokens per request (speculative verification; see
    # ``AttentionMetadataBuilder.build_for_capture``).
    supports_verify_graph_capture: ClassVar[bool] = False

    @classmethod
    def unsupported_reasons(cls, *, head_size: int, dtype: str, kv_cache_dtype: str,
                            block_size: int | None, sliding_window: int | None) -> list[str]:
        """Empty when this backend can serve the configuration; else why not, in words."""
        import importlib.util

        reasons = [f"package {p} is not installed" for p in cls.required_packages
                   if importlib.util.find_spec(p) is None]
        if dtype not in cls.supported_dtypes:
            reasons.append(f"dtype {dtype} not in {list(cls.supported_dtypes)}")
        if kv_cache_dtype not in cls.supported_kv_cache_dtypes:
            reasons.append(f"kv_cache_dtype {kv_cache_dtype} not in "
                           f"{list(cls.supported_kv_cache_dtypes)}")
        if cls.supported_head_sizes is not None and head_size not in cls.supported_head_sizes:
            reasons.append(f"head size {head_size} not in {list(cls.supported_head_sizes)}")
        if (block_size is not None and cls.supported_block_sizes is not None
                and block_size not in cls.supported_block_sizes):
            reasons.append(f"block size {block_size} not in {list(cls.supported_block_sizes)}")
        if sliding_window is not None and not cls.supports_sliding_window:
            reasons.append("sliding window attention is not supported")
        return reasons

    @staticmethod
    def get_kv_cache_shape(num_blocks: int, block_size: int, num_kv_heads: int,
                           head_size: int) -> tuple[int, ...]:
        """Shape of one layer's KV cache tensor for ``num_blocks`` blocks. The default layout
        is (K|V, block, offset in block, kv head, head dim); override for another one."""
        return (2, num_blocks, block_size, num_kv_heads, head_size)

    @staticmethod
    @abstractmethod
    def get_builder_cls() -> type[AttentionMetadataBuilder]:
        ...

    @staticmethod
    @abstractmethod
    def get_impl_cls() -> type[AttentionImpl]:
        ...
