// The AMX path of int8_linear (included by int8_gemm.cpp): the int8 tile units of Intel
// Sapphire Rapids and later (AMX-INT8), for calls with at least kMinRows activation rows.
//
// Contract: the same exact int32 sums as the vector paths (tdpbssd multiplies signed by signed
// bytes and accumulates in int32), handed to the same epilogue, so the output is bit-identical
// whichever path a call takes and a row's result never depends on the other rows of the call
// (batch invariant).
//
// Layout, per 32-column block of the output (the parallel work item):
//  - A tiles: 16 activation rows x 64 inputs of the quantized activations (signed, no offset),
//    rows padded with zeros to a multiple of 32 and inputs to a multiple of 64 by the caller;
//  - B tiles: 16 input quads x 16 columns x 4 bytes, the block's columns of the [N, K] weight
//    repacked by each call into a buffer of the work item (byte t of column c in quad r of
//    step s is w[n0 + c, 64 s + 4 r + t], zeros past N and K), read from L1 / L2 afterwards;
//  - C: 2 x 2 tiles of 16 x 16 int32 per 32 x 32 output block, stored to a small buffer for the
//    epilogue.
// On a weight packed at load (int8_vnni.h's layout, u8 = w + 128) the B tiles are read in place:
// a tile is 16 consecutive words of a 16-column panel (1 KiB, the same shape as the per-call
// repack's), multiplied by tdpbsud (signed activations x unsigned weights); the caller takes
// 128 sum_k x of each row away.
// The tile state is requested from Linux once per process (arch_prctl ARCH_REQ_XCOMP_PERM);
// when it is refused, ready() is false and the vector paths run.
#pragma once

#if defined(__AMX_INT8__) && defined(__AMX_TILE__) && defined(__AVX512F__) && \
    defined(__linux__)
#define I8_AMX 1

#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

namespace int8_amx {

constexpr int64_t kMinRows = 16;     // below this the vector dot products are faster
constexpr int64_t kBlockRows = 32;   // rows per C block (2 A tiles)
constexpr int64_t kBlockCols = 32;   // columns per work item (2 B tiles)
constexpr int64_t kStep = 64;        // inputs per tile step

// True once Linux granted this process the AMX tile data state.
inline bool ready() {
  static const bool granted = [] {
    constexpr long kReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return granted;
}

struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// Every tile 16 rows x 64 bytes: 0-3 C, 4-5 A, 6-7 B. Per thread, before any tile use.
inline void configure() {
  TileConfig cfg;
  for (int t = 0; t < 8; ++t) {
    cfg.rows[t] = 16;
    cfg.colsb[t] = 64;
  }
  _tile_loadconfig(&cfg);
}

// r[q] <- the q-th int32 of every r[c] (a 16 x 16 transpose of 32-bit elements).
inline void transpose16(__m512i r[16]) {
  __m512i t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {
    r[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
    r[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
    r[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
    r[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
  }
  for (int i = 0; i < 4; ++i) {
    t[i] = _mm512_shuffle_i32x4(r[i], r[i + 4], 0x88);
    t[i + 4] = _mm512_shuffle_i32x4(r[i], r[i + 4], 0xdd);
    t[i + 8] = _mm512_shuffle_i32x4(r[i + 8], r[i + 12], 0x88);
    t[i + 12] = _mm512_shuffle_i32x4(r[i + 8], r[i + 12], 0xdd);
  }
  for (int i = 0; i < 4; ++i) {
    r[i] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0x88);
    r[i + 8] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0xdd);
    r[i + 4] = _mm512_shuffle_i32x4(t[i + 4], t[i + 12], 0x88);
    r[i + 12] = _mm512_shuffle_i32x4(t[i + 4], t[i + 12], 0xdd);
  }
}

// Columns [n0, n0 + 32) of w [N, K] into b ([kp / 64 steps][2 tiles][16 quads][64 bytes]).
inline void pack_block(const int8_t* w, int64_t N, int64_t K, int64_t kp, int64_t n0,
                       int8_t* b) {
  const int64_t cols = std::min<int64_t>(kBlockCols, N - n0);
  if (cols == kBlockCols && K % kStep == 0) {
    // per tile: 64 inputs (16 quads) of 16 columns, loaded a column per vector, transposed so
    // that vector r holds quad r of the 16 columns: the tile's row r
    for (int64_t s = 0; s < kp / kStep; ++s)
      for (int64_t j = 0; j < 2; ++j) {
        __m512i r[16];
        for (int c = 0; c < 16; ++c)
          r[c] = _mm512_loadu_si512(w + (n0 + 16 * j + c) * K + s * kStep);
        transpose16(r);
        int8_t* dst = b + (s * 2 + j) * 1024;
        for (int q = 0; q < 16; ++q) _mm512_storeu_si512(dst + q * 64, r[q]);
      }
    return;
  }
  std::memset(b, 0, kp * kBlockCols);
  for (int64_t c = 0; c < cols; ++c) {
    const int8_t* src = w + (n0 + c) * K;
    const int64_t j = c / 16, cc = c % 16;
    for (int64_t k = 0; k < K; ++k) {
      const int64_t s = k / kStep, r = (k % kStep) / 4, t = k % 4;
      b[((s * 2 + j) * 16 + r) * 64 + cc * 4 + t] = src[k];
    }
  }
}

// acc [32][32] = xq rows [m0, m0 + 32) (stride kp) times two B tile columns: step s's tiles
// at b0 + s * step and b1 + s * step (bytes; rows `stride` bytes apart). kUnsigned: the B
// bytes are u8 (tdpbsud), else s8 (tdpbssd). Exact int32.
template <bool kUnsigned>
inline void tile_product(const int8_t* xq, int64_t kp, int64_t m0, const int8_t* b0,
                         const int8_t* b1, int64_t step, int64_t stride, int32_t* acc) {
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  const int8_t* a = xq + m0 * kp;
  for (int64_t s = 0; s < kp / kStep; ++s) {
    _tile_loadd(4, a + s * kStep, kp);
    _tile_loadd(5, a + 16 * kp + s * kStep, kp);
    _tile_loadd(6, b0 + s * step, stride);
    _tile_loadd(7, b1 + s * step, stride);
    if constexpr (kUnsigned) {
      _tile_dpbsud(0, 4, 6);
      _tile_dpbsud(1, 4, 7);
      _tile_dpbsud(2, 5, 6);
      _tile_dpbsud(3, 5, 7);
    } else {
      _tile_dpbssd(0, 4, 6);
      _tile_dpbssd(1, 4, 7);
      _tile_dpbssd(2, 5, 6);
      _tile_dpbssd(3, 5, 7);
    }
  }
  constexpr int64_t c_stride = kBlockCols * sizeof(int32_t);
  _tile_stored(0, acc, c_stride);
  _tile_stored(1, acc + 16, c_stride);
  _tile_stored(2, acc + 16 * kBlockCols, c_stride);
  _tile_stored(3, acc + 16 * kBlockCols + 16, c_stride);
}

// acc [32][32] = xq rows [m0, m0 + 32) (stride kp) times the block b packed per call
// (pack_block), exact int32.
inline void block_product(const int8_t* xq, int64_t kp, int64_t m0, const int8_t* b,
                          int32_t* acc) {
  tile_product<false>(xq, kp, m0, b, b + 1024, 2048, 64, acc);
}

// acc [32][32] = xq rows [m0, m0 + 32) (stride kp) times the two 16-column panels from `panel`
// of the weight packed at load (int8_vnni.h: kp / 4 x 16 words each, u8 = w + 128): exact
// int32 sums of x (w + 128). A panel's 16 consecutive words are one 1 KiB tile.
inline void packed_block_product(const int8_t* xq, int64_t kp, int64_t m0,
                                 const uint32_t* panel, int32_t* acc) {
  const int8_t* b0 = reinterpret_cast<const int8_t*>(panel);
  tile_product<true>(xq, kp, m0, b0, b0 + kp * 16, 1024, 64, acc);
}

}  // namespace int8_amx

#endif
