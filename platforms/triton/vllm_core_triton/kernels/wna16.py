"""W4A16 / W8A16 linear layers with the de-quantization fused into the matmul.

Weights are the core's ``WNA16Weight`` layout (``vllm_core.model_executor.quantization.
quantized_weights``): ``qweight`` int32 ``[K / p, N]`` packed along K (``p = 32 / bits``,
least significant first), ``scales`` / ``zeros`` ``[G, N]`` in the activation dtype, optional
``g_idx`` ``[K]`` (act-order). Every weight element is de-quantized in registers as
``(q - zero[g(k), n]) * scale[g(k), n]`` in float32, rounded once to the activation dtype
(exactly the rounding of the reference, which de-quantizes to ``x.dtype`` and then calls
``F.linear``), and multiplied with float32 accumulation.

The kernels:

- ``_wna16_gemv_kernel`` (a few rows: decode): the layer is a stream of packed weights.
  Program ``(n block, k split, row)`` reads a ``[BLOCK_K / p, BLOCK_N]`` tile of ``qweight``
  per step (each int32 word holds ``p`` consecutive K values of one output: the tile is
  coalesced along N, each word loaded once), unpacks it to ``[BLOCK_K / p, p, BLOCK_N]``, and
  reduces it against the row of ``x``. K is split over
  ``SPLIT_K`` programs so that a decode step fills the GPU; partial sums go to a float32
  ``[SPLIT_K, M, N]`` buffer, and the program that finishes last for its ``(row, n block)``
  (an arrival counter per output block, ``_split_k_store``) sums them in split order (a
  chunk of splits per load, ``_sum_splits``), adds
  the bias and writes the result in the activation dtype: one launch per layer, no reduction
  or cast kernels after it (at batch 1 those were two of every three launches of a W4A16
  linear). Deterministic (the order of the sum is fixed whatever the arrival order) and row
  ``i`` of the result depends only on row ``i`` of ``x``. The counters are a per-device
  int32 buffer each launch leaves at zero; launches sharing it run in stream order (one
  compute stream per device).
- ``_wna16_gemm_kernel`` (prefill): ``[BLOCK_M, BLOCK_N]`` output tiles, the de-quantized
  ``[BLOCK_K, BLOCK_N]`` weight tile fed to ``tl.dot``.
- ``_wna16_gemv_factored_kernel`` (the default GEMV for weights without ``g_idx`` whose groups
  are a multiple of 128; ``VLLM_TRITON_WNA16_GEMV=exact`` turns it off): the group's scale
  and zero taken out of the inner product,
  ``y[n] = sum_g s[g, n] * (sum_{k in g} q[k, n] x[k] - z[g, n] * sum_{k in g} x[k])``, so a
  weight costs three or four full-rate operations instead of ~10: the integer is turned into a
  float without a conversion instruction (``bitcast(q | 0x4B000000) - 2^23``; for the nibbles
  inside the mantissa the mask is applied in place and the activation pre-scaled by the
  nibble's power of two, exact; fields past the mantissa are taken from the word shifted
  right by 16), then one FMA. A step's ``x`` is loaded once, as one contiguous vector, and
  split into the fields' inputs (``_x_fields``). The result is the exact product of the
  de-quantized weight in float32 (no rounding of W to the activation dtype): within float32
  reassociation of the reference, not bit-equal to it. On an H200 at the 8B projections
  (``benchmarks/wna16_gemv_gpu.py``, batch 1) it takes 0.82x the exact kernel's time at
  their best plans; ``gpu-8b-b1`` decodes 1.24x as fast as bf16 with it (``docs/quantization.md``).
- ``_wna16_gemv_tc_kernel`` (opt-in, ``VLLM_TRITON_WNA16_GEMV=tc``; measured slower than the
  factored kernel at 1 row, faster than the GEMM at 16): the
  factored sum on the tensor cores, for 4-bit weights without ``g_idx``, groups a multiple of
  128 and fp16 / bf16 activations of 1 to ``TC_MAX_ROWS`` (16) rows (the factored or exact
  GEMV, or the GEMM past 4 rows, serve the rest). Program ``(n block, k split)`` computes all
  the rows as one 16-row tile (rows past ``M`` masked). Per step of 128 inputs it loads the
  ``[16 words, BLOCK_N]`` tile once and, for nibble ``i`` in 0..3, makes two half-float
  operands with one AND / OR per 32-bit word: ``(word >> 4 i) & 0x000F000F | MAGIC`` holds
  ``OFF + q`` of input ``8 w + i`` in its low half and of ``8 w + i + 4`` in its high half
  (bf16 ``0x4300`` = 128, fp16 ``0x6400`` = 1024: exact, the last place is 1), each fed to a
  ``tl.dot`` with the matching ``[16, 16]`` slice of ``x`` (8 dots of K = 16 per step, float32
  accumulation). The offset is folded into the zero,
  ``acc += s * (part - (z + OFF) * sum x)``, so the result is the exact product of the
  de-quantized weight up to float32 reassociation and a cancellation of about
  ``2^-24 * OFF * sum |x|`` per group. Split-K partials are reduced in the kernel as above
  (``_split_k_store_tile``: one counter per n block); the split depends on the shape and plan,
  not on ``M``, so a row's result does not depend on the other rows.

``M`` (the rows of the batch) is not specialised on (``do_not_specialize``), so one compiled
variant serves every batch size of a path and the start-up warm-up covers it.

Without ``g_idx`` and with ``BLOCK_K`` dividing the group size, one scale / zero row serves a
whole K step (loaded once per tile); with ``g_idx`` they are gathered per K row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from vllm_core.model_executor.quantization.quantized_weights import WNA16Weight
from vllm_core_triton import envs

GEMV_MAX_ROWS = 4        # rows served by the exact and factored GEMVs
SPLIT_SUM_VALUES = 8192  # partial values one split-K sum loads at once (``_split_chunk``)
TC_MAX_ROWS = 16         # rows served by the tensor-core GEMV (one M tile)


@triton.jit
def _dequant_tile(qw_ptr, s_ptr, z_ptr, g_ptr, kk, offs_n, mask_k, mask_n, stride_q,
                  stride_s, stride_z, k0, BITS: tl.constexpr, GROUP: tl.constexpr,
                  HAS_GIDX: tl.constexpr, ROW_SCALES: tl.constexpr):
    """The float32 weight tile ``W.T[kk, offs_n]`` ([BLOCK_K, BLOCK_N])."""
    PACK: tl.constexpr = 32 // BITS
    MASK: tl.constexpr = (1 << BITS) - 1
    mask = mask_k[:, None] & mask_n[None, :]
    words = tl.load(qw_ptr + (kk // PACK).to(tl.int64)[:, None] * stride_q + offs_n[None, :],
                    mask=mask, other=0)
    q = ((words >> ((kk % PACK) * BITS)[:, None]) & MASK).to(tl.float32)
    if HAS_GIDX:
        g = tl.load(g_ptr + kk, mask=mask_k, other=0).to(tl.int64)
        s = tl.load(s_ptr + g[:, None] * stride_s + offs_n[None, :], mask=mask, other=0.0)
        z = tl.load(z_ptr + g[:, None] * stride_z + offs_n[None, :], mask=mask, other=0.0)
        return (q - z.to(tl.float32)) * s.to(tl.float32)
    elif ROW_SCALES:
        g0 = k0 // GROUP
        s = tl.load(s_ptr + g0 * stride_s + offs_n, mask=mask_n, other=0.0)
        z = tl.load(z_ptr + g0 * stride_z + offs_n, mask=mask_n, other=0.0)
        return (q - z.to(tl.float32)[None, :]) * s.to(tl.float32)[None, :]
    else:
        g = (kk // GROUP).to(tl.int64)
        s = tl.load(s_ptr + g[:, None] * stride_s + offs_n[None, :], mask=mask, other=0.0)
        z = tl.load(z_ptr + g[:, None] * stride_z + offs_n[None, :], mask=mask, other=0.0)
        return (q - z.to(tl.float32)) * s.to(tl.float32)


@triton.jit
def _gemv_program(N, BLOCK_N: tl.constexpr):
    """``(split, row, offs_n, mask_n)`` of a GEMV program ``(n block, k split, row)``."""
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    return tl.program_id(1), tl.program_id(2), offs_n, offs_n < N


@triton.jit
def _group_row(s_ptr, z_ptr, k0, K, offs_n, mask_n, stride_s, stride_z, GROUP: tl.constexpr):
    """float32 scale and zero of the group holding input ``k0`` (zero past ``K``: the last
    split may run past K, and no group row exists there)."""
    in_k = mask_n & (offs_n * 0 + k0 < K)
    g0 = k0 // GROUP
    sc = tl.load(s_ptr + g0 * stride_s + offs_n, mask=in_k, other=0.0).to(tl.float32)
    zp = tl.load(z_ptr + g0 * stride_z + offs_n, mask=in_k, other=0.0).to(tl.float32)
    return sc, zp


@triton.jit
def _x_fields(x_ptr, k_left, BLOCK_K: tl.constexpr, PACK: tl.constexpr):
    """``x[0:BLOCK_K]`` (zero from ``k_left`` on) in float32, loaded once as one contiguous
    vector and handed out as ``PACK`` vectors of ``BLOCK_K / PACK``: vector ``j`` holds
    ``x[w * PACK + j]``, the input of field ``j`` of packed word ``w``. (Loading each field's
    inputs on its own, a strided gather, cost more instructions than the weights' arithmetic.)
    """
    offs = tl.arange(0, BLOCK_K)
    x = tl.load(x_ptr + offs, mask=offs < k_left, other=0.0).to(tl.float32)
    if PACK == 8:
        t = tl.reshape(x, [BLOCK_K // 8, 2, 2, 2])       # [w, a, b, c] = x[8 w + 4 a + 2 b + c]
        c0, c1 = tl.split(t)
        c0b0, c0b1 = tl.split(c0)
        c1b0, c1b1 = tl.split(c1)
        x0, x4 = tl.split(c0b0)
        x2, x6 = tl.split(c0b1)
        x1, x5 = tl.split(c1b0)
        x3, x7 = tl.split(c1b1)
        return x0, x1, x2, x3, x4, x5, x6, x7
    else:                                                 # 8-bit fields, PACK 4
        t = tl.reshape(x, [BLOCK_K // 4, 2, 2])          # [w, a, b] = x[4 w + 2 a + b]
        b0, b1 = tl.split(t)
        x0, x2 = tl.split(b0)
        x1, x3 = tl.split(b1)
        return x0, x1, x2, x3


@triton.jit
def _field_times_x(words, xj, j: tl.constexpr, BITS: tl.constexpr):
    """``q_j(words) * x_j`` per element for field ``j`` (``BITS (j + 1) <= 23``: inside the
    float's mantissa). The integer becomes a float without a conversion instruction: the
    field is masked in place under the exponent of 2^23 and 2^23 taken away, which gives
    ``q 2^(BITS j)`` exactly; ``x`` is scaled by ``2^-(BITS j)`` to match (exact)."""
    MASK: tl.constexpr = (1 << BITS) - 1
    bits = (words & (MASK << (BITS * j))) | 0x4B000000
    q = bits.to(tl.float32, bitcast=True) - 8388608.0                # 2^23 + q - 2^23
    return q * (xj * (1.0 / (1 << (BITS * j))))[:, None]


@triton.jit
def _nibble_pairs_times_x(words, xs):
    """``sum_i (128 + q_i(words)) * x_i`` per element over the 8 nibbles of 4-bit words.

    ``(words >> 4 i) & 0x000F000F | 0x43004300`` holds the bf16 numbers ``128 + q`` of nibbles
    ``i`` (low half) and ``i + 4`` (high half): bf16 ``0x43..`` has a unit in the last place of
    1 from 128 to 256, so the pattern is exact. Each half becomes the float32 of the same value
    by a shift or a mask (a float32 whose low 16 bits are zero is that bf16), so a pair of
    weights costs one mask-or, two moves into float32 and two FMAs; the caller takes the
    128 away through the zero."""
    lo, hi = _nibble_pair(words)
    part = lo * xs[0][:, None]
    part += hi * xs[4][:, None]            # one accumulation per product: FMAs
    for i in tl.static_range(1, 4):
        lo, hi = _nibble_pair(words >> (4 * i))
        part += lo * xs[i][:, None]
        part += hi * xs[i + 4][:, None]
    return part


@triton.jit
def _nibble_pair(w):
    """float32 ``128 + q`` of the low nibbles of ``w``'s two 16-bit halves."""
    t = (w & 0x000F000F) | 0x43004300
    return (t << 16).to(tl.float32, bitcast=True), (t & -65536).to(tl.float32, bitcast=True)


@triton.jit
def _store_row(y_ptr, b_ptr, acc, row, offs_n, mask_n, stride_y, HAS_BIAS: tl.constexpr):
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    tl.store(y_ptr + row.to(tl.int64) * stride_y + offs_n, acc.to(y_ptr.dtype.element_ty),
             mask=mask_n)


@triton.jit
def _sum_splits(part_ptr, offs, mask, num_splits, split_stride, CHUNK: tl.constexpr):
    """``sum over s < num_splits of part[s * split_stride + offs]`` (``offs`` 1-D), in a fixed
    order: ``CHUNK`` splits per load, reduced as one tile, chunks added in split order. One
    memory round trip per chunk: a loop of one load per split made the last program to arrive
    wait for ``num_splits`` round trips in a row, about 20 us per GEMV on an H200 whatever
    the layer's size."""
    offs_c = tl.arange(0, CHUNK)
    total = tl.zeros(offs.shape, dtype=tl.float32)
    for s0 in range(0, num_splits, CHUNK):
        s = s0 + offs_c
        vals = tl.load(part_ptr + (s.to(tl.int64) * split_stride)[:, None] + offs[None, :],
                       mask=(s < num_splits)[:, None] & mask[None, :], other=0.0,
                       cache_modifier=".cg")
        total += tl.sum(vals, 0)
    return total


@triton.jit
def _split_k_store(y_ptr, part_ptr, lock_ptr, b_ptr, acc, pid_k, row, offs_n, mask_n, M, N,
                   num_splits, stride_y, HAS_BIAS: tl.constexpr, CHUNK: tl.constexpr):
    """Write this program's partial sum; the last of the ``num_splits`` programs of its
    ``(row, n block)`` to arrive sums all partials in split order (``_sum_splits``, ``CHUNK``
    splits per load) and stores the row block (module docstring), then sets the block's
    counter back to zero."""
    if num_splits == 1:
        _store_row(y_ptr, b_ptr, acc, row, offs_n, mask_n, stride_y, HAS_BIAS)
    else:
        offs = row.to(tl.int64) * N + offs_n
        tl.store(part_ptr + pid_k.to(tl.int64) * M * N + offs, acc, mask=mask_n)
        tl.debug_barrier()                        # every thread's partial is written
        lock = lock_ptr + row * tl.num_programs(0) + tl.program_id(0)
        arrived = tl.atomic_add(lock, 1, sem="acq_rel")
        if arrived == num_splits - 1:
            total = _sum_splits(part_ptr, offs, mask_n, num_splits, M * N, CHUNK)
            _store_row(y_ptr, b_ptr, total, row, offs_n, mask_n, stride_y, HAS_BIAS)
            tl.atomic_xchg(lock, 0)


@triton.jit(do_not_specialize=["M"])
def _wna16_gemv_kernel(y_ptr, part_ptr, lock_ptr, b_ptr, x_ptr, qw_ptr, s_ptr, z_ptr, g_ptr,
                       M, N, K, K_PER_SPLIT, num_splits,
                       stride_x, stride_q, stride_s, stride_z, stride_y,
                       BITS: tl.constexpr, GROUP: tl.constexpr, HAS_GIDX: tl.constexpr,
                       ROW_SCALES: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr,
                       BLOCK_K: tl.constexpr, SPLIT_CHUNK: tl.constexpr,
                       LOOP_STAGES: tl.constexpr):
    """Each packed word is loaded once and unpacked into a ``[words, PACK, BLOCK_N]`` tile
    (``k = word * PACK + j``), so the weight stream costs one load per 32 bits."""
    PACK: tl.constexpr = 32 // BITS
    MASK: tl.constexpr = (1 << BITS) - 1
    BLOCK_KW: tl.constexpr = BLOCK_K // PACK
    pid_k, row, offs_n, mask_n = _gemv_program(N, BLOCK_N)
    offs_w = tl.arange(0, BLOCK_KW)
    offs_j = tl.arange(0, PACK)
    shifts = (offs_j * BITS)[None, :, None]
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    k_start = pid_k * K_PER_SPLIT
    for k0 in tl.range(k_start, k_start + K_PER_SPLIT, BLOCK_K, num_stages=LOOP_STAGES):
        wrow = k0 // PACK + offs_w                                   # [BKW]
        kk = wrow[:, None] * PACK + offs_j[None, :]                  # [BKW, PACK]
        mask_k = kk < K
        mask_w = wrow * PACK < K
        words = tl.load(qw_ptr + wrow.to(tl.int64)[:, None] * stride_q + offs_n[None, :],
                        mask=mask_w[:, None] & mask_n[None, :], other=0)
        q = ((words[:, None, :] >> shifts) & MASK).to(tl.float32)    # [BKW, PACK, BN]
        if HAS_GIDX:
            g = tl.load(g_ptr + kk, mask=mask_k, other=0).to(tl.int64)[:, :, None]
            m3 = mask_k[:, :, None] & mask_n[None, None, :]
            sc = tl.load(s_ptr + g * stride_s + offs_n[None, None, :], mask=m3, other=0.0)
            zp = tl.load(z_ptr + g * stride_z + offs_n[None, None, :], mask=m3, other=0.0)
            w = (q - zp.to(tl.float32)) * sc.to(tl.float32)
        elif ROW_SCALES:
            sc, zp = _group_row(s_ptr, z_ptr, k0, K, offs_n, mask_n, stride_s, stride_z, GROUP)
            w = (q - zp[None, None, :]) * sc[None, None, :]
        else:
            g = (kk // GROUP).to(tl.int64)[:, :, None]
            m3 = mask_k[:, :, None] & mask_n[None, None, :]
            sc = tl.load(s_ptr + g * stride_s + offs_n[None, None, :], mask=m3, other=0.0)
            zp = tl.load(z_ptr + g * stride_z + offs_n[None, None, :], mask=m3, other=0.0)
            w = (q - zp.to(tl.float32)) * sc.to(tl.float32)
        x = tl.load(x_ptr + row * stride_x + kk, mask=mask_k, other=0.0)   # [BKW, PACK]
        w = w.to(x.dtype).to(tl.float32)          # the reference's rounding of W
        acc += tl.sum(tl.sum(w * x.to(tl.float32)[:, :, None], axis=0), axis=0)
    _split_k_store(y_ptr, part_ptr, lock_ptr, b_ptr, acc, pid_k, row, offs_n, mask_n, M, N,
                   num_splits, stride_y, HAS_BIAS, SPLIT_CHUNK)


@triton.jit(do_not_specialize=["M"])
def _wna16_gemv_factored_kernel(y_ptr, part_ptr, lock_ptr, b_ptr, x_ptr, qw_ptr, s_ptr, z_ptr,
                                M, N, K, K_PER_SPLIT, num_splits,
                                stride_x, stride_q, stride_s, stride_z, stride_y,
                                BITS: tl.constexpr, GROUP: tl.constexpr,
                                HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr,
                                BLOCK_K: tl.constexpr, EARLY_SCALES: tl.constexpr,
                                HALF_PAIRS: tl.constexpr, SPLIT_CHUNK: tl.constexpr,
                                LOOP_STAGES: tl.constexpr):
    """``BLOCK_K`` divides ``GROUP``: one scale / zero row per K step (module docstring).

    (Keeping a 2-D accumulator reduced once at the end, with the next step's words loaded
    ahead, was measured on an H200: no faster at 128 outputs a program, 2x slower at 256.)
    ``EARLY_SCALES`` loads the step's scale and zero rows together with its words, so that
    their latency is not paid after the step's arithmetic (same result; a plan option the
    sweep compares). ``HALF_PAIRS`` (4-bit): two nibbles per mask-or made bf16 numbers
    ``128 + q`` (``_nibble_pairs_times_x``), the offset folded into the zero, instead of one
    float per field with its 2^23 taken away; fewer instructions a weight, a cancellation of
    about ``2^-24 * 128 * sum |x|`` per group (a plan option, not measured yet)."""
    PACK: tl.constexpr = 32 // BITS
    BLOCK_KW: tl.constexpr = BLOCK_K // PACK
    pid_k, row, offs_n, mask_n = _gemv_program(N, BLOCK_N)
    offs_w = tl.arange(0, BLOCK_KW)
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    k_start = pid_k * K_PER_SPLIT
    for k0 in tl.range(k_start, k_start + K_PER_SPLIT, BLOCK_K, num_stages=LOOP_STAGES):
        wrow = k0 // PACK + offs_w                                   # [BKW]
        mask_w = wrow * PACK < K
        words = tl.load(qw_ptr + wrow.to(tl.int64)[:, None] * stride_q + offs_n[None, :],
                        mask=mask_w[:, None] & mask_n[None, :], other=0)
        if EARLY_SCALES:
            sc, zp = _group_row(s_ptr, z_ptr, k0, K, offs_n, mask_n, stride_s, stride_z, GROUP)
        xs = _x_fields(x_ptr + row * stride_x + k0, K - k0, BLOCK_K, PACK)
        x_sum = xs[0]
        for j in tl.static_range(1, PACK):
            x_sum += xs[j]                                           # x[word * PACK + j]
        if HALF_PAIRS:
            part = _nibble_pairs_times_x(words, xs)
            z_off = 128.0
        else:
            part = _field_times_x(words, xs[0], 0, BITS)   # [BLOCK_KW, BLOCK_N], no zero fill
            for j in tl.static_range(1, PACK):
                if BITS * (j + 1) <= 23:       # the field lies inside the float's mantissa
                    part += _field_times_x(words, xs[j], j, BITS)
                else:                          # moved into it: bit BITS j - 16 of words >> 16
                    part += _field_times_x(words >> 16, xs[j], j - 16 // BITS, BITS)
            z_off = 0.0
        if not EARLY_SCALES:
            sc, zp = _group_row(s_ptr, z_ptr, k0, K, offs_n, mask_n, stride_s, stride_z, GROUP)
        acc += sc * (tl.sum(part, 0) - (zp + z_off) * tl.sum(x_sum, 0))
    _split_k_store(y_ptr, part_ptr, lock_ptr, b_ptr, acc, pid_k, row, offs_n, mask_n, M, N,
                   num_splits, stride_y, HAS_BIAS, SPLIT_CHUNK)


@triton.jit
def _store_tile(y_ptr, b_ptr, acc, rows, offs_n, mask_n, mask, stride_y,
                HAS_BIAS: tl.constexpr):
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + rows * stride_y + offs_n[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=mask)


@triton.jit
def _split_k_store_tile(y_ptr, part_ptr, lock_ptr, b_ptr, acc, pid_k, offs_m, mask_m, offs_n,
                        mask_n, M, N, num_splits, stride_y, HAS_BIAS: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr):
    """``_split_k_store`` for a ``[BLOCK_M, BLOCK_N]`` tile of all the rows: one arrival
    counter per n block (``lock_ptr[n block]``); the last program to arrive sums the partials
    of every row in split order (the tile flattened for ``_sum_splits``), adds the bias,
    stores rows ``< M`` and sets the counter back to zero. Each element's sum is over its own
    row's partials only."""
    mask = mask_m[:, None] & mask_n[None, :]
    rows = offs_m.to(tl.int64)[:, None]
    if num_splits == 1:
        _store_tile(y_ptr, b_ptr, acc, rows, offs_n, mask_n, mask, stride_y, HAS_BIAS)
    else:
        offs = rows * N + offs_n[None, :]
        tl.store(part_ptr + pid_k.to(tl.int64) * M * N + offs, acc, mask=mask)
        tl.debug_barrier()                        # every thread's partial is written
        lock = lock_ptr + tl.program_id(0)
        arrived = tl.atomic_add(lock, 1, sem="acq_rel")
        if arrived == num_splits - 1:
            flat = _sum_splits(part_ptr, tl.reshape(offs, [BLOCK_M * BLOCK_N]),
                               tl.reshape(mask, [BLOCK_M * BLOCK_N]), num_splits, M * N, CHUNK)
            total = tl.reshape(flat, [BLOCK_M, BLOCK_N])
            _store_tile(y_ptr, b_ptr, total, rows, offs_n, mask_n, mask, stride_y, HAS_BIAS)
            tl.atomic_xchg(lock, 0)


@triton.jit(do_not_specialize=["M"])
def _wna16_gemv_tc_kernel(y_ptr, part_ptr, lock_ptr, b_ptr, x_ptr, qw_ptr, s_ptr, z_ptr,
                          M, N, K, K_PER_SPLIT, num_splits,
                          stride_x, stride_q, stride_s, stride_z, stride_y,
                          GROUP: tl.constexpr, HALF_MAGIC: tl.constexpr,
                          HALF_OFF: tl.constexpr, HAS_BIAS: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                          SPLIT_CHUNK: tl.constexpr):
    """4-bit weights, groups a multiple of 128, fp16 / bf16 ``x`` of at most ``BLOCK_M``
    rows (module docstring). Program ``(n block, k split)`` computes all the rows; a step is
    128 inputs = 16 packed words per output. ``HALF_MAGIC`` is the 16-bit pattern of the half
    float ``HALF_OFF`` twice (``OFF + q`` is exact for ``q < 16``: its unit in the last place
    is 1), so ``(word >> 4 i) & 0x000F000F | HALF_MAGIC`` holds ``OFF + q`` of nibble ``i``
    (input ``8 w + i``) in its low half and of nibble ``i + 4`` in its high half."""
    pid_n, pid_k = tl.program_id(0), tl.program_id(1)
    offs_m = tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    offs_w = tl.arange(0, 16)
    x_rows = x_ptr + offs_m.to(tl.int64)[:, None] * stride_x          # [BM, 1]
    half = x_ptr.dtype.element_ty
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    k_start = pid_k * K_PER_SPLIT
    k_end = tl.minimum(k_start + K_PER_SPLIT, K)          # K is a multiple of 128
    for k0 in range(k_start, k_end, 128):
        words = tl.load(qw_ptr + (k0 // 8 + offs_w).to(tl.int64)[:, None] * stride_q
                        + offs_n[None, :], mask=mask_n[None, :], other=0)   # [16, BN]
        part = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        x_acc = tl.zeros((BLOCK_M, 16), dtype=tl.float32)
        for i in tl.static_range(4):
            t = ((words >> (4 * i)) & 0x000F000F) | HALF_MAGIC
            w_lo = (t & 0xFFFF).to(tl.int16).to(half, bitcast=True)     # OFF + q[8 w + i]
            w_hi = (t >> 16).to(tl.int16).to(half, bitcast=True)        # OFF + q[8 w + i + 4]
            kk = k0 + offs_w * 8 + i
            x_lo = tl.load(x_rows + kk[None, :], mask=mask_m[:, None], other=0.0)
            x_hi = tl.load(x_rows + (kk + 4)[None, :], mask=mask_m[:, None], other=0.0)
            part = tl.dot(x_lo, w_lo, part)
            part = tl.dot(x_hi, w_hi, part)
            x_acc += x_lo.to(tl.float32) + x_hi.to(tl.float32)
        x_sum = tl.sum(x_acc, 1)                                        # [BM]
        sc, zp = _group_row(s_ptr, z_ptr, k0, K, offs_n, mask_n, stride_s, stride_z, GROUP)
        acc += sc[None, :] * (part - (zp + HALF_OFF)[None, :] * x_sum[:, None])
    _split_k_store_tile(y_ptr, part_ptr, lock_ptr, b_ptr, acc, pid_k, offs_m, mask_m, offs_n,
                        mask_n, M, N, num_splits, stride_y, HAS_BIAS, BLOCK_M, BLOCK_N,
                        SPLIT_CHUNK)


@triton.jit(do_not_specialize=["M"])
def _wna16_gemm_kernel(y_ptr, x_ptr, qw_ptr, s_ptr, z_ptr, g_ptr, b_ptr, M, N, K,
                       stride_x, stride_q, stride_s, stride_z, stride_y,
                       BITS: tl.constexpr, GROUP: tl.constexpr, HAS_GIDX: tl.constexpr,
                       ROW_SCALES: tl.constexpr, HAS_BIAS: tl.constexpr,
                       FP32: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                       BLOCK_K: tl.constexpr):
    pid_m, pid_n = tl.program_id(0), tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m, mask_n = offs_m < M, offs_n < N
    offs_k = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + offs_k
        mask_k = kk < K
        x = tl.load(x_ptr + offs_m.to(tl.int64)[:, None] * stride_x + kk[None, :],
                    mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        w = _dequant_tile(qw_ptr, s_ptr, z_ptr, g_ptr, kk, offs_n, mask_k, mask_n, stride_q,
                          stride_s, stride_z, k0, BITS, GROUP, HAS_GIDX, ROW_SCALES)
        if FP32:
            acc += tl.dot(x, w, input_precision="ieee")
        else:
            acc += tl.dot(x, w.to(x.dtype))
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + offs_m.to(tl.int64)[:, None] * stride_y + offs_n[None, :],
             acc.to(y_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4


@dataclass(frozen=True)
class GemvTiles:
    """Launch plan of the batch-1..4 GEMV: ``block_n`` outputs x ``block_k`` inputs per
    program step, ``waves`` programs per SM aimed at when splitting K; ``num_stages`` is also
    the depth to which the K loop's weight loads are software-pipelined (``tl.range(...,
    num_stages=)``: Triton pipelines loads that feed no ``tl.dot`` only in a loop that asks for
    it; 1 = none, each step's words loaded when the step starts); ``early_scales``
    (factored kernel only) loads a step's scales with its words; ``half_pairs`` (factored
    kernel, 4-bit weights) turns two nibbles at a time into bf16 ``128 + q``."""

    block_n: int
    block_k: int = 128
    num_warps: int = 4
    num_stages: int = 2
    waves: int = 2
    early_scales: bool = False
    half_pairs: bool = False

    def tag(self) -> str:
        """The plan as ``VLLM_TRITON_WNA16_GEMV_TILES`` writes it."""
        return (f"{self.block_n},{self.block_k},{self.num_warps},{self.num_stages},"
                f"{self.waves},{int(self.early_scales)},{int(self.half_pairs)}")


_SPLIT_LOCKS: dict[torch.device, torch.Tensor] = {}


def _split_locks(device: torch.device, count: int) -> torch.Tensor:
    """The device's zeroed arrival counters (at least ``count``); grown outside graph capture
    only (the start-up warm-up runs every GEMV shape before capture)."""
    locks = _SPLIT_LOCKS.get(device)
    if locks is None or locks.numel() < count:
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            raise RuntimeError("wna16 GEMV: split-K counters must be allocated before CUDA "
                               "graph capture (run the shape once eagerly first)")
        locks = torch.zeros(max(count, 1 << 14), dtype=torch.int32, device=device)
        _SPLIT_LOCKS[device] = locks
    return locks


def default_gemv_tiles(kernel: str) -> GemvTiles:
    """The plan of GEMV ``kernel`` (``exact``, ``factored`` or ``tc``) used unless
    ``VLLM_TRITON_WNA16_GEMV_TILES`` names one (ValueError for another kernel name)."""
    if kernel not in ("exact", "factored", "tc"):
        raise ValueError(f"unknown wna16 GEMV kernel {kernel!r}: expected 'exact', 'factored' "
                         "or 'tc'")
    tiles = envs.wna16_gemv_tiles()
    if tiles is not None:
        return GemvTiles(*tiles[:5], early_scales=bool(tiles[5]), half_pairs=bool(tiles[6]))
    if kernel == "factored":    # the best of 32 graph-timed plans on an H200 at the 8B shapes
        return GemvTiles(block_n=256, block_k=128, num_warps=4, num_stages=1, waves=4,
                         half_pairs=True)
    if kernel == "tc":          # the best of 18 plans at 1 row in two H200 runs
        return GemvTiles(block_n=128, block_k=128, num_warps=4, num_stages=2, waves=2)
    return GemvTiles(block_n=64, block_k=128, num_warps=4, num_stages=1, waves=4)


def _split_chunk(split: int, tile_elems: int) -> int:
    """Splits summed per load by the last program to arrive (``_sum_splits``): as many as
    ``split`` needs, at most ``SPLIT_SUM_VALUES`` partial values in registers (a power of two
    when the tile is; any count is correct)."""
    return max(1, min(triton.next_power_of_2(split), SPLIT_SUM_VALUES // tile_elems))


def _split_k_buffers(x: torch.Tensor, n: int, k_steps: int, blocks: int, locks_needed: int,
                     waves: int) -> tuple[int, int, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The K split of a split-K GEMV and its buffers: ``(split, steps_per_split, y, part,
    locks)``. ``blocks`` programs run per split; K is split until about ``waves`` programs per
    SM run, never into an empty split. Unsplit, ``part`` and ``locks`` are ``y`` (unused)."""
    split = max(1, min(k_steps, triton.cdiv(waves * _num_sms(x.device), blocks)))
    steps_per_split = triton.cdiv(k_steps, split)
    split = triton.cdiv(k_steps, steps_per_split)
    m = x.shape[0]
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if split == 1:
        return split, steps_per_split, y, y, y
    part = torch.empty((split, m, n), dtype=torch.float32, device=x.device)
    return split, steps_per_split, y, part, _split_locks(x.device, locks_needed)


def wna16_gemv(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
               zeros: torch.Tensor, g_idx: torch.Tensor | None, bits: int, group_size: int,
               bias: torch.Tensor | None, factored: bool, tiles: GemvTiles) -> torch.Tensor:
    """The GEMV path of ``wna16_linear`` with an explicit kernel and plan (benchmarks sweep
    them). ``factored`` needs no ``g_idx`` and ``tiles.block_k`` dividing the group size
    (ValueError otherwise)."""
    m, k = x.shape
    n = qweight.shape[1]
    block_n, block_k = tiles.block_n, tiles.block_k
    row_scales = g_idx is None and group_size % block_k == 0
    if factored and not row_scales:
        raise ValueError(f"factored GEMV needs no g_idx and block_k ({block_k}) dividing the "
                         f"group size ({group_size})")
    n_blocks, k_steps = triton.cdiv(n, block_n), triton.cdiv(k, block_k)
    split, steps_per_split, y, part, locks = _split_k_buffers(
        x, n, k_steps, n_blocks * m, m * n_blocks, tiles.waves)
    b_ptr = bias if bias is not None else y
    common = dict(BITS=bits, GROUP=group_size, HAS_BIAS=bias is not None, BLOCK_N=block_n,
                  BLOCK_K=block_k, SPLIT_CHUNK=_split_chunk(split, block_n),
                  LOOP_STAGES=tiles.num_stages, num_warps=tiles.num_warps,
                  num_stages=tiles.num_stages)
    if factored:
        _wna16_gemv_factored_kernel[(n_blocks, split, m)](
            y, part, locks, b_ptr, x, qweight, scales, zeros, m, n, k,
            steps_per_split * block_k, split, x.stride(0), qweight.stride(0),
            scales.stride(0), zeros.stride(0), y.stride(0), EARLY_SCALES=tiles.early_scales,
            HALF_PAIRS=tiles.half_pairs and bits == 4,
            **common)
    else:
        _wna16_gemv_kernel[(n_blocks, split, m)](
            y, part, locks, b_ptr, x, qweight, scales, zeros,
            g_idx if g_idx is not None else qweight, m, n, k, steps_per_split * block_k,
            split, x.stride(0), qweight.stride(0), scales.stride(0), zeros.stride(0),
            y.stride(0), HAS_GIDX=g_idx is not None, ROW_SCALES=row_scales, **common)
    return y


_TC_HALF = {torch.bfloat16: (0x43004300, 128.0), torch.float16: (0x64006400, 1024.0)}


def tc_gemv_serves(dtype: torch.dtype, bits: int, g_idx: torch.Tensor | None,
                   group_size: int, rows: int, tiles: GemvTiles) -> bool:
    """Whether the tensor-core GEMV takes this call: 4-bit weights without ``g_idx``, groups
    a multiple of 128, fp16 / bf16 activations, at most ``TC_MAX_ROWS`` rows, a plan with
    ``block_k`` 128 and ``block_n`` a power of two of at least 16."""
    return (bits == 4 and g_idx is None and group_size % 128 == 0 and dtype in _TC_HALF
            and 1 <= rows <= TC_MAX_ROWS and tiles.block_k == 128 and tiles.block_n >= 16
            and tiles.block_n & (tiles.block_n - 1) == 0)


def wna16_gemv_tc(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
                  zeros: torch.Tensor, group_size: int, bias: torch.Tensor | None,
                  tiles: GemvTiles) -> torch.Tensor:
    """The tensor-core GEMV (``_wna16_gemv_tc_kernel``) with an explicit plan; ValueError
    unless ``tc_gemv_serves`` (4-bit weights, no ``g_idx``, so no such argument). The K split
    depends on the shape and plan only, never on the number of rows, so a row's result is the
    same alone or in a batch."""
    m, k = x.shape
    n = qweight.shape[1]
    if not tc_gemv_serves(x.dtype, 4, None, group_size, m, tiles):
        raise ValueError(f"tc GEMV needs fp16/bf16 x of 1..{TC_MAX_ROWS} rows (got {x.dtype}, "
                         f"{m}), groups a multiple of 128 (got {group_size}) and block_k 128, "
                         f"block_n a power of two >= 16 (got {tiles.block_k}, "
                         f"{tiles.block_n})")
    if qweight.shape[0] * 8 != k:
        raise ValueError(f"qweight packs {qweight.shape[0] * 8} inputs, x has {k}")
    block_n = tiles.block_n
    n_blocks, k_steps = triton.cdiv(n, block_n), k // 128
    split, steps_per_split, y, part, locks = _split_k_buffers(
        x, n, k_steps, n_blocks, n_blocks, tiles.waves)
    magic, off = _TC_HALF[x.dtype]
    _wna16_gemv_tc_kernel[(n_blocks, split)](
        y, part, locks, bias if bias is not None else y, x, qweight, scales, zeros, m, n, k,
        steps_per_split * 128, split, x.stride(0), qweight.stride(0), scales.stride(0),
        zeros.stride(0), y.stride(0), GROUP=group_size, HALF_MAGIC=magic, HALF_OFF=off,
        HAS_BIAS=bias is not None, BLOCK_M=16, BLOCK_N=block_n,
        SPLIT_CHUNK=_split_chunk(split, 16 * block_n), num_warps=tiles.num_warps,
        num_stages=tiles.num_stages)
    return y


def gemv_kernel(mode: str, dtype: torch.dtype, bits: int, g_idx: torch.Tensor | None,
                group_size: int, rows: int) -> tuple[str, GemvTiles] | None:
    """The GEMV kernel (``tc``, ``factored`` or ``exact``) and plan serving ``rows`` rows
    under ``VLLM_TRITON_WNA16_GEMV=mode``; None: the GEMM path. ``tc`` falls back to
    ``factored`` and that to ``exact`` for what they cannot serve; only ``tc`` takes 5 to
    ``TC_MAX_ROWS`` rows."""
    if mode == "tc":
        tiles = default_gemv_tiles("tc")
        if tc_gemv_serves(dtype, bits, g_idx, group_size, rows, tiles):
            return "tc", tiles
    if rows > GEMV_MAX_ROWS:
        return None
    kernel = "exact" if mode == "exact" else "factored"
    tiles = default_gemv_tiles(kernel)
    if kernel == "factored" and not (g_idx is None and group_size % tiles.block_k == 0):
        kernel = "exact"
    return kernel, tiles


def decode_kernel_name(w: WNA16Weight) -> str:
    """What serves a one-row step of ``w`` under the current ``VLLM_TRITON_WNA16_GEMV``
    (activations taken to be in the scales' dtype) and from how many rows the GEMM takes over,
    for the start-up log, e.g. ``"GEMV tc to 16 rows, then GEMM"``."""
    gemv = gemv_kernel(envs.wna16_gemv(), w.scales.dtype, w.bits, w.g_idx, w.group_size, 1)
    kernel = "GEMM" if gemv is None else gemv[0]
    rows = TC_MAX_ROWS if kernel == "tc" else GEMV_MAX_ROWS
    return f"GEMV {kernel} to {rows} rows, then GEMM"


def wna16_linear(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
                 zeros: torch.Tensor, g_idx: torch.Tensor | None, bits: int, group_size: int,
                 bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ dequantize(W).T (+ bias)`` for ``x`` [M, K] (any float dtype, last dim
    contiguous); the result in ``x.dtype``."""
    if x.stride(-1) != 1:
        x = x.contiguous()
    m, k = x.shape
    n = qweight.shape[1]
    if qweight.shape[0] * (32 // bits) != k:
        raise ValueError(f"qweight packs {qweight.shape[0] * (32 // bits)} inputs, x has {k}")
    g_ptr = g_idx if g_idx is not None else qweight          # unused when HAS_GIDX is False
    gemv = gemv_kernel(envs.wna16_gemv(), x.dtype, bits, g_idx, group_size, m)
    if gemv is not None:
        kernel, tiles = gemv
        if kernel == "tc":
            return wna16_gemv_tc(x, qweight, scales, zeros, group_size, bias, tiles)
        return wna16_gemv(x, qweight, scales, zeros, g_idx, bits, group_size, bias,
                          kernel == "factored", tiles)
    block_m = 16 if m <= 16 else (32 if m <= 64 else 64)
    block_n, block_k = 64, 64
    row_scales = g_idx is None and group_size % block_k == 0
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n))
    _wna16_gemm_kernel[grid](
        y, x, qweight, scales, zeros, g_ptr, bias if bias is not None else y, m, n, k,
        x.stride(0), qweight.stride(0), scales.stride(0), zeros.stride(0), y.stride(0),
        BITS=bits, GROUP=group_size, HAS_GIDX=g_idx is not None, ROW_SCALES=row_scales,
        HAS_BIAS=bias is not None, FP32=x.dtype == torch.float32, BLOCK_M=block_m,
        BLOCK_N=block_n, BLOCK_K=block_k)
    return y
