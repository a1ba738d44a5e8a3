// The packed AVX-512 VNNI layout of int8_linear's weights and its dot products (included by
// int8_gemm.cpp), on CPUs with AVX-512 VNNI (Ice Lake / Cascade Lake Xeons, AMD Zen 4 and
// later). The weight is packed once, when the model is loaded (int8_pack), and the packed
// layout replaces the [N, K] one: the calls read it directly at every batch size, and the AMX
// path (int8_amx.h) reads the same words as its B tiles.
//
// Contract: the same exact int32 sums as the other paths, handed to the same epilogue, so the
// output is bit-identical whichever path a call takes and a row's result never depends on the
// other rows of the call (batch invariant).
//
// Layout: int32 [panels][kp / 4][16] (kp: K padded to a multiple of 64; panels: N / 16 rounded
// up to an even count, so that AMX's 32-column blocks are whole):
//  - panel p, word [q][c] holds the 4 bytes w[16 p + c, 4 q .. 4 q + 3], each stored as
//    u8 = w + 128 (sign bit flipped), u8 128 (w = 0) past N and K;
//  - per input quad q, vpdpbusd multiplies a panel's weight vector (16 columns x 4 bytes,
//    unsigned) by one activation row's 4 bytes broadcast to every lane (signed), so every
//    int32 lane accumulates one output column: no horizontal sums; a work item takes up to 4
//    panels (kBlockCols columns), kRows x 4 accumulators in registers, each panel streamed in
//    order; an AMX B tile is 16 consecutive words of one panel (1 KiB, contiguous);
//  - sum_k (w + 128) x = sum_k w x + 128 sum_k x: the caller's per-row 128 sum_k x is
//    subtracted at the end (exact int32 for K < 66,000: |sum| < K * 255 * 127 < 2^31).
#pragma once

#if defined(__AVX512VNNI__) && defined(__AVX512BW__) && defined(__AVX512F__)
#define I8_VNNI_PACKED 1

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

namespace int8_vnni {

constexpr int64_t kBlockCols = 64;  // columns per work item (4 vectors of 16 int32 lanes)
constexpr int64_t kPanelCols = 16;  // columns per panel of the packed layout (one vector)
constexpr int kRows = 3;            // activation rows per register tile: 3 x 4 accumulators
// (GCC 12 spills the accumulators of larger tiles: 3 x 8 ran at half the speed of 3 x 4 on a
// Zen 4 EPYC, 1 thread, although it needs fewer loads; 3 x 4 was the fastest of 9 shapes)

// Columns n0 .. n0 + cols of weight [N, K] as u8 words [kp / 4][cols] (kp: K padded to a
// multiple of 4 or more; zeros, u8 128, past N and K): one block of the packed layout.
inline void pack_block(const int8_t* w, int64_t N, int64_t K, int64_t kp, int64_t n0,
                       int64_t cols, uint32_t* packed) {
  const int64_t quads = kp / 4, full = K / 4;
  const int64_t valid = std::max<int64_t>(0, std::min(cols, N - n0));
  const int8_t* base = w + n0 * K;
  // quads outer: the stores are contiguous and the block's rows stay in L1 across 16 quads
  for (int64_t q = 0; q < full; ++q) {
    uint32_t* dst = packed + q * cols;
    for (int64_t c = 0; c < valid; ++c) {
      uint32_t word;
      std::memcpy(&word, base + c * K + 4 * q, 4);
      dst[c] = word ^ 0x80808080u;
    }
    for (int64_t c = valid; c < cols; ++c) dst[c] = 0x80808080u;
  }
  for (int64_t q = full; q < quads; ++q) {   // the partial quad, then the padding
    uint32_t* dst = packed + q * cols;
    const int64_t left = std::max<int64_t>(0, std::min<int64_t>(4, K - 4 * q));
    for (int64_t c = 0; c < cols; ++c) {
      uint32_t word = 0;
      if (c < valid) std::memcpy(&word, base + c * K + 4 * q, left);
      dst[c] = word ^ 0x80808080u;
    }
  }
}

// Panels of the packed layout for N outputs (N / 16 rounded up to an even count).
inline int64_t panels(int64_t N) { return (N + 2 * kPanelCols - 1) / (2 * kPanelCols) * 2; }

// The whole [N, K] weight in the packed layout (out: panels(N) x kp / 4 x 16 words).
inline void pack_weight(const int8_t* w, int64_t N, int64_t K, int64_t kp, uint32_t* out) {
  for (int64_t p = 0; p < panels(N); ++p)
    pack_block(w, N, K, kp, p * kPanelCols, kPanelCols, out + p * (kp / 4) * kPanelCols);
}

// acc[r][16 v + l] = sum_k u8(w[16 v + l, k]) * xq[m0 + r, k] over kp inputs for R rows and
// the C panels from `panel` (packed layout, kp / 4 x 16 words each); xq: the signed
// activations (row stride kp, zero past K).
template <int R, int C>
inline void block_rows(const int8_t* xq, int64_t kp, int64_t m0, const uint32_t* panel,
                       int32_t acc[][kBlockCols]) {
  __m512i a[R][C];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < C; ++v) a[r][v] = _mm512_setzero_si512();
  const int64_t quads = kp / 4, stride = quads * kPanelCols;
  const int8_t* x0 = xq + m0 * kp;
  for (int64_t q = 0; q < quads; ++q) {
    // R broadcasts, then one weight vector at a time: R x C accumulators + R + 1 registers
    __m512i xb[R];
    for (int r = 0; r < R; ++r) {
      int32_t x4;
      std::memcpy(&x4, x0 + r * kp + 4 * q, 4);
      xb[r] = _mm512_set1_epi32(x4);
    }
    const uint32_t* wq = panel + q * kPanelCols;
    for (int v = 0; v < C; ++v) {
      const __m512i wv = _mm512_loadu_si512(wq + v * stride);
      for (int r = 0; r < R; ++r) a[r][v] = _mm512_dpbusd_epi32(a[r][v], wv, xb[r]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < C; ++v) _mm512_storeu_si512(acc[r] + 16 * v, a[r][v]);
}

}  // namespace int8_vnni

#endif
