"""The Qwen2.5-VL vision encoder: pixels of one or more images -> one embedding per merged
patch (2x2 patches), in the language model's hidden size.

Math (the HF checkpoint's, written from the published architecture):

1. patch embedding: a Conv3d whose kernel equals its stride ``(T, P, P)`` over each patch's
   ``C * T * P * P`` values, i.e. one linear map of the flattened patch (no bias);
2. 2D rotary: a patch at grid row ``h``, column ``w`` rotates the first half of each head's
   frequencies by ``h`` and the second half by ``w`` (``head_dim / 4`` frequencies each, base
   ``rope_theta``), neox style, in float32;
3. ``depth`` pre-norm blocks (RMSNorm eps 1e-6, bidirectional attention with a fused ``qkv``,
   SwiGLU MLP with biases); blocks listed in ``fullatt_block_indexes`` attend over the whole
   image, the others within windows of ``window_size`` pixels (``window_size / patch_size /
   spatial_merge_size`` merged patches a side). To attend by window, tokens are permuted so that
   each window's merge groups are contiguous, and permuted back after the merger;
4. the patch merger: RMSNorm, then each group of ``spatial_merge_size ** 2`` neighbouring
   patches (contiguous in the processor's patch order) is concatenated and mapped by
   Linear -> GELU -> Linear to ``out_hidden_size``.

Images never attend to each other. The tower is replicated on every tensor-parallel rank.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass(slots=True, frozen=True)
class VisionConfig:
    """The vision tower's shape, read from ``config.json``'s ``vision_config``."""

    depth: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    out_hidden_size: int
    patch_size: int = 14
    temporal_patch_size: int = 2
    in_channels: int = 3
    spatial_merge_size: int = 2
    window_size: int = 112
    fullatt_block_indexes: tuple[int, ...] = (7, 15, 23, 31)
    rope_theta: float = 10000.0
    hidden_act: str = "silu"

    @classmethod
    def from_hf(cls, cfg: dict[str, Any]) -> VisionConfig:
        rope = cfg.get("rope_parameters") or {}
        act = cfg.get("hidden_act", "silu")
        if act not in ("silu", "swish"):
            raise ValueError(f"vision_config.hidden_act {act!r} is not supported (only silu)")
        return cls(
            depth=int(cfg["depth"]), hidden_size=int(cfg["hidden_size"]),
            intermediate_size=int(cfg["intermediate_size"]), num_heads=int(cfg["num_heads"]),
            out_hidden_size=int(cfg["out_hidden_size"]),
            patch_size=int(cfg.get("patch_size", 14)),
            temporal_patch_size=int(cfg.get("temporal_patch_size", 2)),
            in_channels=int(cfg.get("in_channels", cfg.get("in_chans", 3))),
            spatial_merge_size=int(cfg.get("spatial_merge_size", 2)),
            window_size=int(cfg.get("window_size", 112)),
            fullatt_block_indexes=tuple(int(i) for i in cfg.get("fullatt_block_indexes",
                                                                (7, 15, 23, 31))),
            rope_theta=float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0))),
            hidden_act=act)


@dataclass(slots=True)
class VisionLayout:
    """Host-side index arrays of one encoder batch (several images).

    ``hw`` [N, 2] the (row, column) of every patch in processor order; ``window_index`` [N / m]
    the merge groups in window order; ``cu_full`` / ``cu_window``: segment boundaries (in
    tokens, window order) of the full-attention and the window-attention blocks."""

    hw: np.ndarray
    window_index: np.ndarray
    cu_full: list[int]
    cu_window: list[int]


def vision_layout(grids: list[tuple[int, int, int]], cfg: VisionConfig) -> VisionLayout:
    """Patch positions and window segmentation of images with patch grids ``grids``."""
    m = cfg.spatial_merge_size
    unit = m * m
    win = cfg.window_size // m // cfg.patch_size        # merged patches per window side
    hw, windows, cu_full, cu_window = [], [], [0], [0]
    base = 0
    for t, h, w in grids:
        # positions in block-major order: (t, h/m, w/m, m, m)
        hh, ww = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        hh = hh.reshape(h // m, m, w // m, m).transpose(0, 2, 1, 3).reshape(-1)
        ww = ww.reshape(h // m, m, w // m, m).transpose(0, 2, 1, 3).reshape(-1)
        hw.append(np.tile(np.stack([hh, ww], axis=-1), (t, 1)))
        gh, gw = h // m, w // m
        index = np.arange(t * gh * gw).reshape(t, gh, gw)
        for ti in range(t):
            for wi in range(0, gh, win):
                for wj in range(0, gw, win):
                    ids = index[ti, wi:wi + win, wj:wj + win].reshape(-1)
                    windows.append(ids + base)
                    cu_window.append(cu_window[-1] + len(ids) * unit)
            cu_full.append(cu_full[-1] + gh * gw * unit)
        base += t * gh * gw
    return VisionLayout(np.concatenate(hw), np.concatenate(windows), cu_full, cu_window)


def segment_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      cu: list[int]) -> torch.Tensor:
    """Bidirectional attention within each segment ``[cu[i], cu[i + 1])`` of q/k/v
    ``[N, heads, d]``; segments of equal length run as one batched SDPA call."""
    out = torch.empty_like(q)
    by_len: dict[int, list[int]] = {}
    for a, b in zip(cu[:-1], cu[1:]):
        if b > a:
            by_len.setdefault(b - a, []).append(a)
    for length, starts in by_len.items():
        idx = (torch.tensor(starts, device=q.device)[:, None]
               + torch.arange(length, device=q.device)[None, :]).reshape(-1)
        n = len(starts)
        qs, ks, vs = (x.index_select(0, idx).reshape(n, length, *x.shape[1:]).transpose(1, 2)
                      for x in (q, k, v))
        o = F.scaled_dot_product_attention(qs, ks, vs)
        out.index_copy_(0, idx, o.transpose(1, 2).reshape(n * length, *q.shape[1:]))
    return out


class VisionRMSNorm(nn.Module):
    """``weight * (x / rms(x))``, computed in float32 and cast back before the weight."""

    def __init__(self, size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(size), requires_grad=False)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def _linear(n_in: int, n_out: int, bias: bool = True) -> nn.Linear:
    layer = nn.Linear(n_in, n_out, bias=bias)
    layer.requires_grad_(False)
    return layer


class VisionAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = _linear(dim, 3 * dim)
        self.proj = _linear(dim, dim)

    def forward(self, x: torch.Tensor, cu: list[int], cos: torch.Tensor,
                sin: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        q, k, v = self.qkv(x).reshape(n, 3, self.num_heads, self.head_dim).unbind(1)
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        return self.proj(segment_attention(q, k, v, cu).reshape(n, -1))


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Neox rotation of x [N, heads, d] by cos/sin [N, d], in float32."""
    xf = x.float()
    x1, x2 = xf.chunk(2, dim=-1)
    out = xf * cos[:, None] + torch.cat((-x2, x1), dim=-1) * sin[:, None]
    return out.to(x.dtype)


class VisionMLP(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.gate_proj = _linear(dim, hidden)
        self.up_proj = _linear(dim, hidden)
        self.down_proj = _linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class VisionBlock(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.norm1 = VisionRMSNorm(cfg.hidden_size)
        self.norm2 = VisionRMSNorm(cfg.hidden_size)
        self.attn = VisionAttention(cfg.hidden_size, cfg.num_heads)
        self.mlp = VisionMLP(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x: torch.Tensor, cu: list[int], cos: torch.Tensor,
                sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), cu, cos, sin)
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    """Conv3d with kernel = stride over each flattened patch: ``proj.weight`` keeps the
    checkpoint's ``[E, C, T, P, P]`` shape and is applied as a ``[E, C*T*P*P]`` matrix."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        p, t = cfg.patch_size, cfg.temporal_patch_size
        self.proj = nn.Module()
        self.proj.weight = nn.Parameter(torch.empty(cfg.hidden_size, cfg.in_channels, t, p, p),
                                        requires_grad=False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        w = self.proj.weight
        return F.linear(pixels.to(w.dtype), w.reshape(w.shape[0], -1))


class PatchMerger(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.unit_dim = cfg.hidden_size * cfg.spatial_merge_size ** 2
        self.ln_q = VisionRMSNorm(cfg.hidden_size)
        self.mlp = nn.Sequential(_linear(self.unit_dim, self.unit_dim), nn.GELU(),
                                 _linear(self.unit_dim, cfg.out_hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.ln_q(x).reshape(-1, self.unit_dim))


class Qwen2_5_VisionTransformer(nn.Module):
    """``forward(pixels [N, C*T*P*P], grids) -> [N / merge**2, out_hidden_size]``, the merged
    patches of all images in order (image ``i`` owns ``t*h*w / merge**2`` consecutive rows)."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg)
        self.blocks = nn.ModuleList(VisionBlock(cfg) for _ in range(cfg.depth))
        self.merger = PatchMerger(cfg)
        head_dim = cfg.hidden_size // cfg.num_heads
        spatial = head_dim // 2
        inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, spatial, 2, dtype=torch.float32,
                                                     device="cpu") / spatial))
        self.register_buffer("inv_freq", inv.to(torch.empty(0).device), persistent=False)

    def forward(self, pixels: torch.Tensor, grids: list[tuple[int, int, int]]) -> torch.Tensor:
        cfg = self.cfg
        unit = cfg.spatial_merge_size ** 2
        layout = vision_layout(grids, cfg)
        dev = pixels.device
        n = pixels.shape[0]
        # token order: merge groups in window order
        order = torch.from_numpy((layout.window_index[:, None] * unit
                                  + np.arange(unit)[None, :]).reshape(-1)).to(dev)
        x = self.patch_embed(pixels).index_select(0, order)
        hw = torch.from_numpy(layout.hw).to(dev).index_select(0, order).float()
        freqs = (hw[:, :, None] * self.inv_freq).reshape(n, -1)      # [N, d/2]: h then w
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos(), emb.sin()
        # full-attention segments are whole images: contiguous in window order too
        full = set(cfg.fullatt_block_indexes)
        for i, block in enumerate(self.blocks):
            x = block(x, layout.cu_full if i in full else layout.cu_window, cos, sin)
        merged = self.merger(x)
        reverse = torch.from_numpy(np.argsort(layout.window_index)).to(dev)
        return merged.index_select(0, reverse)
