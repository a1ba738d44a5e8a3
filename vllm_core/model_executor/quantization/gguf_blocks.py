"""GGUF (llama.cpp) quantized blocks -> the ``WNA16Weight`` layout, without de-quantizing.

A GGUF weight is ``[N rows (outputs), K columns (inputs)]`` stored row by row as blocks of
``block`` inputs. Each supported block type is exactly ``W = (q - z) * s`` per group of
``group`` inputs with an unsigned integer ``q`` (read from ggml's ``dequantize_row_*`` and the
``gguf`` package's ``dequantize_blocks``):

========  ======  =====  ====  ===========================  =========================
type      block   group  bits  s (scale)                    z (zero point)
========  ======  =====  ====  ===========================  =========================
Q4_0      32      32     4     ``d``                        8
Q4_1      32      32     4     ``d``                        ``-m / d`` (min ``m``)
Q8_0      32      32     8     ``d``                        128 (``q = int8 + 128``)
Q4_K      256     32     4     ``d * sc_j``                 ``dmin * m_j / (d * sc_j)``
Q5_K      256     32     5->8  ``d * sc_j``                 ``dmin * m_j / (d * sc_j)``
Q6_K      256     16     6->8  ``d * sc_j`` (int8 ``sc``)   32
========  ======  =====  ====  ===========================  =========================

``d``, ``dmin``, ``m`` are float16 in the file and widened to float32; ``sc_j`` / ``m_j`` are
the 6-bit sub-block scales and mins of the K types. 5- and 6-bit values are stored in 8-bit
words (``WNA16Weight`` has 4- and 8-bit layouts). The symmetric types and Q6_K are bit exact
after the conversion; the types with a min (Q4_1, Q4_K, Q5_K) compute ``(q - z) * s`` instead
of ggml's ``q * s - m'``: both are float32 expressions of the same value, equal up to float32
rounding of ``z`` (a few ulps of the weight; ``tests/model_executor/test_gguf_quantized.py``
bounds it against ``gguf.quants.dequantize``). A group whose scale is 0 holds one constant
``b`` (``W = a * q + b`` with ``a = 0``) whatever its integers; it is stored as ``q = 0``,
``z = 1``, ``s = -b``, which is exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from vllm_core.model_executor.quantization.quantized_weights import WNA16Weight

QK_K = 256


@dataclass(frozen=True, slots=True)
class BlockFormat:
    """What one GGML type becomes: inputs per block, bytes per block, group size, bits of the
    values, and the ``WNA16Weight`` storage bits (4 or 8)."""

    block: int
    block_bytes: int
    group: int
    value_bits: int

    @property
    def storage_bits(self) -> int:
        return 4 if self.value_bits <= 4 else 8


#: GGML type name -> its format (the types kept quantized)
FORMATS: dict[str, BlockFormat] = {
    "Q4_0": BlockFormat(32, 18, 32, 4),
    "Q4_1": BlockFormat(32, 20, 32, 4),
    "Q8_0": BlockFormat(32, 34, 32, 8),
    "Q4_K": BlockFormat(QK_K, 144, 32, 4),
    "Q5_K": BlockFormat(QK_K, 176, 32, 5),
    "Q6_K": BlockFormat(QK_K, 210, 16, 6),
}


@dataclass(slots=True)
class GroupQuantized:
    """A GGUF weight as unsigned integers with group scales and zero points (row major):
    ``q`` uint8 ``[N, K]``, ``scales`` / ``zeros`` float32 ``[N, K // group]``;
    ``W[n, k] = (q[n, k] - zeros[n, k // group]) * scales[n, k // group]``."""

    q: np.ndarray
    scales: np.ndarray
    zeros: np.ndarray
    group: int
    bits: int

    def regroup(self, group: int) -> GroupQuantized:
        """The same weight with a smaller group size (a divisor of ``self.group``):
        scales and zero points repeated."""
        if group == self.group:
            return self
        if self.group % group:
            raise ValueError(f"cannot regroup GGUF group {self.group} into {group}")
        r = self.group // group
        return GroupQuantized(self.q, np.repeat(self.scales, r, axis=1),
                              np.repeat(self.zeros, r, axis=1), group, self.bits)

    def rows(self, perm: torch.Tensor | None) -> GroupQuantized:
        """Rows reordered by the index tensor ``perm`` (None: unchanged)."""
        if perm is None:
            return self
        idx = perm.numpy()
        return GroupQuantized(self.q[idx], self.scales[idx], self.zeros[idx], self.group,
                              self.bits)

    def dequantize(self) -> np.ndarray:
        """float32 ``[N, K]`` (the tests' bridge to ``gguf.quants.dequantize``)."""
        g = self.group
        n, k = self.q.shape
        q = self.q.reshape(n, k // g, g).astype(np.float32)
        return ((q - self.zeros[..., None]) * self.scales[..., None]).reshape(n, k)

    def wna16_parts(self, bits: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor,
                                                                    torch.Tensor]:
        """``(qweight int32 [K // (32 // bits), N], scales [G, N], zeros [G, N])`` in the
        ``WNA16Weight`` layout, scales and zeros in ``dtype``."""
        if bits < self.bits:
            raise ValueError(f"{self.bits}-bit GGUF values do not fit {bits}-bit storage")
        qweight = torch.from_numpy(_pack_columns(self.q, bits))
        scales = torch.from_numpy(np.ascontiguousarray(self.scales.T)).to(dtype)
        zeros = torch.from_numpy(np.ascontiguousarray(self.zeros.T)).to(dtype)
        return qweight, scales, zeros

    def to_wna16(self, bits: int, dtype: torch.dtype = torch.float32) -> WNA16Weight:
        qweight, scales, zeros = self.wna16_parts(bits, dtype)
        n, k = self.q.shape
        return WNA16Weight(qweight, scales, zeros, None, bits, self.group, k, n)


def _pack_columns(q: np.ndarray, bits: int) -> np.ndarray:
    """uint8 ``[N, K]`` -> int32 ``[K // p, N]`` with input ``k`` in bits ``bits * (k % p)``
    of word ``k // p`` (``quantized_weights.pack_int32`` of ``q.T`` along dim 0, in numpy)."""
    p = 32 // bits
    n, k = q.shape
    qt = q.T.reshape(k // p, p, n)
    word = np.zeros((k // p, n), dtype=np.uint32)
    for j in range(p):
        word |= qt[:, j, :].astype(np.uint32) << np.uint32(bits * j)
    return word.view(np.int32)


def _f16(raw: np.ndarray) -> np.ndarray:
    """Little-endian float16 bytes ``[..., 2]`` -> float32 ``[...]``."""
    return np.ascontiguousarray(raw).view(np.float16)[..., 0].astype(np.float32)


def _nibbles(qs: np.ndarray, chunk: int) -> np.ndarray:
    """ggml's 4-bit packing: per ``chunk`` bytes, the low nibbles are the first ``chunk``
    values and the high nibbles the next ``chunk``."""
    nb = qs.shape[0]
    q = qs.reshape(nb, -1, 1, chunk) >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1)
    return (q & np.uint8(0x0F)).reshape(nb, -1)


def _k_scale_min(scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The eight 6-bit scales and mins of a Q4_K / Q5_K super-block (12 bytes)."""
    nb = scales.shape[0]
    s = scales.reshape(nb, 3, 4)
    d, m, md = s[:, 0], s[:, 1], s[:, 2]
    sc = np.concatenate([d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)], axis=-1)
    mn = np.concatenate([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], axis=-1)
    return sc.astype(np.float32), mn.astype(np.float32)


def _with_min(q: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, ...]:
    """``W = a * q + b`` per group -> ``(q, s, z)`` with ``W = (q - z) * s``; groups with
    ``a == 0`` (constant ``b``) become ``q = 0, z = 1, s = -b``."""
    flat = a == 0
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(flat, np.float32(1), -b / np.where(flat, np.float32(1), a))
    s = np.where(flat, -b, a).astype(np.float32)
    if flat.any():
        nb, groups = a.shape
        q = q.reshape(nb, groups, -1).copy()
        q[flat] = 0
        q = q.reshape(nb, -1)
    return q, s, z.astype(np.float32)


def _decode_blocks(kind: str, blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``blocks`` uint8 ``[nb, block_bytes]`` -> ``(q uint8 [nb, block], s, z float32
    [nb, block // group])``."""
    nb = blocks.shape[0]
    if kind == "Q4_0":
        d = _f16(blocks[:, 0:2].reshape(nb, 1, 2))
        return _nibbles(blocks[:, 2:], 16), d, np.full_like(d, 8.0)
    if kind == "Q4_1":
        d = _f16(blocks[:, 0:2].reshape(nb, 1, 2))
        m = _f16(blocks[:, 2:4].reshape(nb, 1, 2))
        return _with_min(_nibbles(blocks[:, 4:], 16), d, m)
    if kind == "Q8_0":
        d = _f16(blocks[:, 0:2].reshape(nb, 1, 2))
        q = (blocks[:, 2:].view(np.int8).astype(np.int16) + 128).astype(np.uint8)
        return q, d, np.full_like(d, 128.0)
    if kind in ("Q4_K", "Q5_K"):
        d = _f16(blocks[:, 0:2].reshape(nb, 1, 2))
        dmin = _f16(blocks[:, 2:4].reshape(nb, 1, 2))
        sc, mn = _k_scale_min(blocks[:, 4:16])
        if kind == "Q4_K":
            q = _nibbles(blocks[:, 16:], 32)
        else:
            qh = blocks[:, 16:48].reshape(nb, 1, 32) >> np.arange(8, dtype=np.uint8).reshape(
                1, 8, 1)
            q = _nibbles(blocks[:, 48:], 32) | ((qh & np.uint8(1)).reshape(nb, -1) << 4)
        return _with_min(q, d * sc, -(dmin * mn))
    if kind == "Q6_K":
        ql = _nibbles(blocks[:, 0:128], 64)                                   # [nb, 256]
        qh = blocks[:, 128:192].reshape(nb, 2, 1, 32) >> np.array(
            [0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)
        q = ql | ((qh & np.uint8(3)).reshape(nb, -1) << 4)
        sc = blocks[:, 192:208].view(np.int8).astype(np.float32)
        d = _f16(blocks[:, 208:210].reshape(nb, 1, 2))
        s = d * sc
        return q.astype(np.uint8), s, np.full_like(s, 32.0)
    raise ValueError(f"GGUF type {kind} is not kept quantized")


def decode_rows(kind: str, data: np.ndarray, in_features: int) -> GroupQuantized:
    """GGUF tensor bytes ``[N, K // block * block_bytes]`` (uint8, rows of blocks; any row
    range of the file's tensor) -> ``GroupQuantized`` of ``[N, K]``."""
    fmt = FORMATS.get(kind)
    if fmt is None:
        raise ValueError(f"GGUF type {kind} is not kept quantized (supported: "
                         f"{', '.join(FORMATS)})")
    if in_features % fmt.block:
        raise ValueError(f"{in_features} inputs are not a multiple of the {kind} block "
                         f"({fmt.block})")
    n = data.shape[0]
    blocks = np.ascontiguousarray(data).reshape(-1, fmt.block_bytes)
    q, s, z = _decode_blocks(kind, blocks)
    groups = in_features // fmt.group
    return GroupQuantized(q.reshape(n, in_features), s.reshape(n, groups).astype(np.float32),
                          z.reshape(n, groups).astype(np.float32), fmt.group, fmt.value_bits)
