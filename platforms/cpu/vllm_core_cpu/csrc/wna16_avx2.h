// The x86 AVX2 path of wna16_linear (included by wna16_gemm.cpp): int8 activations against the
// packed int4 / int8 weights with integer dot products, on the core's WNA16Weight layout as
// loaded (qweight int32 [K / P, N], P = 32 / bits values per word, least significant first;
// scales, zeros [G, N] in the activation dtype).
//
// Contract (what the tests check):
//  - each row of x is quantized once per call to int8 in blocks of kAB = 32 inputs (or the
//    whole group when the group size is not a multiple of 32): d = max|x| / 127,
//    qx = round(x / d) in [-127, 127]; the weight integers q are exact, so
//        y[n] = sum_g s[g, n] * (sum_{b in g} d_b * sum_{k in b} qx[k] q[k, n]
//                                - z[g, n] * sum_{b in g} d_b * sum_{k in b} qx[k]) + bias[n]
//    with every inner sum an exact integer; the only error against the float product is the
//    activation rounding, |x - d qx| <= d / 2 per input (the same trade as llama.cpp's
//    Q4_1 x Q8_1 dot products);
//  - one computation order per row whatever the number of rows, the threads or the column
//    split (float math through explicit FMA intrinsics, never contracted differently): batch
//    invariant;
//  - integer overflow cannot happen: a 4-bit word gives 4 products per int16 lane
//    (4 * 15 * 127 = 7620), at most 4 words are summed in int16 (30480 < 32767) before the
//    widening madd; 8-bit words go through the sign trick (|q - 128| <= 128, 2 * 128 * 127 =
//    32512 per lane) and are widened word by word.
//
// Memory order: the work is split over column tiles of kTileCols; inside a tile the loop runs
// group by group over the whole tile, so every qweight row segment (kTileCols * 4 bytes,
// contiguous) is read once, front to back, and the rows of a group are adjacent: the stream is
// sequential at batch 1. The per-row fp32 accumulators of a tile stay in L1.
#pragma once

#include <immintrin.h>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "cpu_vec.h"

namespace wna16_avx2 {

// Rows m0 .. m0 + rows of out, columns [c0, c1): the fp32 tile ybuf ([rows, width]) plus the
// bias, cast to T.
template <typename T>
inline void store_tile(const float* ybuf, const T* bias, T* out, int64_t m0, int rows,
                       int64_t N, int64_t width, int64_t c0, int64_t c1) {
  for (int m = 0; m < rows; ++m) {
    T* o = out + (m0 + m) * N;
    const float* y = ybuf + m * width;
    for (int64_t c = c0; c < c1; ++c)
      o[c] = static_cast<T>(bias != nullptr ? y[c - c0] + static_cast<float>(bias[c])
                                            : y[c - c0]);
  }
}

constexpr int64_t kAB = 32;            // activation quantization block (inputs)
constexpr int64_t kTileCols = 1024;    // columns per tile (multiple of 8)
constexpr int kRowChunk = 4;           // rows sharing one unpacking of the weight words
// columns x inputs (x rows) below which a call stays on one thread: on a 2-vCPU EPYC (AVX2,
// benchmarks/cpu_wna16_gemv.py) a second thread gained nothing on 576 x 960 / 576 x 576 and
// 1.3-1.4x on 576 x 3072, 1536 x 576 and the 576 x 49152 LM head
constexpr int64_t kMinParallelWork = 3 << 18;
// Software prefetch of the next group's cache lines (its wpg word rows, scales and zero points
// at columns [c, c + 16)) where rows are at most a page apart: o / down / qkv of a small model
// ran ~12% faster cold on an AMD EPYC (AVX2); on wide layers (a 49152-column LM head) it cost
// 35%, the hardware prefetchers do better there.
constexpr int64_t kPrefetchMaxCols = 1024;

template <typename T>
inline void prefetch_group(const int32_t* qw, const T* scales, const T* zeros, int64_t N,
                           int64_t wpg, int64_t g, int64_t c) {
  for (int64_t kk = g * wpg; kk < (g + 1) * wpg; ++kk)
    _mm_prefetch(reinterpret_cast<const char*>(qw + kk * N + c), _MM_HINT_T0);
  _mm_prefetch(reinterpret_cast<const char*>(scales + g * N + c), _MM_HINT_T0);
  _mm_prefetch(reinterpret_cast<const char*>(zeros + g * N + c), _MM_HINT_T0);
}

inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const c10::BFloat16* p) {
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16));
}
inline __m256 load8(const c10::Half* p) {
#if defined(__F16C__)
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
#else
  alignas(32) float f[8];
  for (int i = 0; i < 8; ++i) f[i] = static_cast<float>(p[i]);
  return _mm256_load_ps(f);
#endif
}

// One call's activations, quantized per block; words laid out for the weight words they meet.
struct QuantizedRows {
  int64_t K = 0, ab = 0, nb = 0, G = 0;
  // 4-bit: per row K / 8 pairs (even bytes q0 q2 q4 q6, odd bytes q1 q3 q5 q7) of one weight
  // word's inputs; 8-bit: per row K / 4 words (q0 q1 q2 q3).
  std::vector<int32_t> words;
  int64_t words_per_row = 0;
  std::vector<float> d;          // [M, nb] block scales
  std::vector<int32_t> qsum;     // [M, nb] sum of a block's qx
  std::vector<float> gsum;       // [M, G] sum over the group's blocks of d_b * qsum_b

  const int32_t* row_words(int64_t m) const { return words.data() + m * words_per_row; }
};

template <int BITS, typename T>
QuantizedRows quantize_rows(const T* x, int64_t M, int64_t K, int64_t group_size) {
  QuantizedRows r;
  r.K = K;
  r.ab = group_size % kAB == 0 ? kAB : group_size;
  r.nb = K / r.ab;
  r.G = K / group_size;
  r.words_per_row = K / 4;     // 4-bit: 2 words per 8 inputs; 8-bit: 1 per 4
  r.words.assign(M * r.words_per_row, 0);
  r.d.assign(M * r.nb, 0.0f);
  r.qsum.assign(M * r.nb, 0);
  r.gsum.assign(M * r.G, 0.0f);
  const int64_t blocks_per_group = group_size / r.ab;
  std::vector<int8_t> q(K);
  for (int64_t m = 0; m < M; ++m) {
    const T* xr = x + m * K;
    for (int64_t b = 0; b < r.nb; ++b) {
      float amax = 0.0f;
      for (int64_t k = b * r.ab; k < (b + 1) * r.ab; ++k)
        amax = std::max(amax, std::fabs(static_cast<float>(xr[k])));
      const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
      int32_t s = 0;
      for (int64_t k = b * r.ab; k < (b + 1) * r.ab; ++k) {
        const int v = static_cast<int>(std::nearbyint(static_cast<float>(xr[k]) * inv));
        q[k] = static_cast<int8_t>(std::min(127, std::max(-127, v)));
        s += q[k];
      }
      r.d[m * r.nb + b] = amax / 127.0f;
      r.qsum[m * r.nb + b] = s;
    }
    for (int64_t g = 0; g < r.G; ++g) {
      float s = 0.0f;
      for (int64_t b = g * blocks_per_group; b < (g + 1) * blocks_per_group; ++b)
        s += r.d[m * r.nb + b] * static_cast<float>(r.qsum[m * r.nb + b]);
      r.gsum[m * r.G + g] = s;
    }
    int32_t* w = r.words.data() + m * r.words_per_row;
    auto byte = [](int8_t v) { return static_cast<uint32_t>(static_cast<uint8_t>(v)); };
    if (BITS == 4) {
      for (int64_t kk = 0; kk < K / 8; ++kk) {
        const int8_t* p = q.data() + kk * 8;
        w[2 * kk] = static_cast<int32_t>(byte(p[0]) | byte(p[2]) << 8 | byte(p[4]) << 16 |
                                         byte(p[6]) << 24);
        w[2 * kk + 1] = static_cast<int32_t>(byte(p[1]) | byte(p[3]) << 8 |
                                             byte(p[5]) << 16 | byte(p[7]) << 24);
      }
    } else {
      for (int64_t kk = 0; kk < K / 4; ++kk) {
        const int8_t* p = q.data() + kk * 4;
        w[kk] = static_cast<int32_t>(byte(p[0]) | byte(p[1]) << 8 | byte(p[2]) << 16 |
                                     byte(p[3]) << 24);
      }
    }
  }
  return r;
}

// One word row kk of 8-bit weights (4 inputs x 8 columns) into iacc[m] for MB rows:
// iacc[m] += sum (q - 128) * qx[m] (the caller adds 128 * qsum back). maddubs needs an unsigned
// operand: |q - 128| against qx carrying the sign of q - 128.
template <int MB>
inline void dot8_word(const int32_t* qw, int64_t N, int64_t kk, const int32_t* const* xw,
                      __m256i* iacc) {
  const __m256i word = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qw + kk * N));
  const __m256i ws = _mm256_xor_si256(word, _mm256_set1_epi8(static_cast<char>(0x80)));
  const __m256i wa = _mm256_abs_epi8(ws);
  for (int m = 0; m < MB; ++m) {
    const __m256i xs = _mm256_sign_epi8(_mm256_set1_epi32(xw[m][kk]), ws);
    iacc[m] = _mm256_add_epi32(
        iacc[m], _mm256_madd_epi16(_mm256_maddubs_epi16(wa, xs), _mm256_set1_epi16(1)));
  }
}

// Integer dot products of one block (WPB words starting at word row kk0) for 8 columns and MB
// rows: iacc[m] = sum_{k in block} qx[m, k] * q[k, n] (8-bit: minus 128 * qsum, added back by
// the caller).
template <int BITS, int MB>
inline void block_dot(const int32_t* qw, int64_t N, int64_t kk0, int64_t wpb,
                      const int32_t* const* xw, __m256i* iacc) {
  const __m256i ones = _mm256_set1_epi16(1);
  for (int m = 0; m < MB; ++m) iacc[m] = _mm256_setzero_si256();
  if (BITS == 4) {
    const __m256i mask = _mm256_set1_epi8(0x0F);
    for (int64_t u0 = 0; u0 < wpb; u0 += 4) {
      const int64_t u1 = std::min<int64_t>(u0 + 4, wpb);
      __m256i acc16[MB];
      for (int m = 0; m < MB; ++m) acc16[m] = _mm256_setzero_si256();
      for (int64_t u = u0; u < u1; ++u) {
        const __m256i word =
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qw + (kk0 + u) * N));
        const __m256i lo = _mm256_and_si256(word, mask);
        const __m256i hi = _mm256_and_si256(_mm256_srli_epi32(word, 4), mask);
        for (int m = 0; m < MB; ++m) {
          const int32_t* xp = xw[m] + 2 * (kk0 + u);
          acc16[m] = _mm256_add_epi16(
              acc16[m], _mm256_maddubs_epi16(lo, _mm256_set1_epi32(xp[0])));
          acc16[m] = _mm256_add_epi16(
              acc16[m], _mm256_maddubs_epi16(hi, _mm256_set1_epi32(xp[1])));
        }
      }
      for (int m = 0; m < MB; ++m)
        iacc[m] = _mm256_add_epi32(iacc[m], _mm256_madd_epi16(acc16[m], ones));
    }
  } else {
    for (int64_t u = 0; u < wpb; ++u) dot8_word<MB>(qw, N, kk0 + u, xw, iacc);
  }
}

// block_dot with the block's word count known at compile time (the 32-input blocks: 4 words
// of 4 bits, 8 of 8 bits): fully unrolled, two independent int16 chains for 4 bits (the low
// and the high nibbles, each <= 4 * 2 * 15 * 127 = 15240, their sum <= 30480).
template <int BITS, int MB, int WPB>
inline void block_dot_fixed(const int32_t* qw, int64_t N, int64_t kk0,
                            const int32_t* const* xw, __m256i* iacc) {
  const __m256i ones = _mm256_set1_epi16(1);
  if (BITS == 4) {
    const __m256i mask = _mm256_set1_epi8(0x0F);
    __m256i lo[WPB], hi[WPB];
#pragma GCC unroll 8
    for (int u = 0; u < WPB; ++u) {
      const __m256i word =
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qw + (kk0 + u) * N));
      lo[u] = _mm256_and_si256(word, mask);
      hi[u] = _mm256_and_si256(_mm256_srli_epi32(word, 4), mask);
    }
    for (int m = 0; m < MB; ++m) {
      const int32_t* xp = xw[m] + 2 * kk0;
      __m256i a = _mm256_maddubs_epi16(lo[0], _mm256_set1_epi32(xp[0]));
      __m256i b = _mm256_maddubs_epi16(hi[0], _mm256_set1_epi32(xp[1]));
#pragma GCC unroll 8
      for (int u = 1; u < WPB; ++u) {
        a = _mm256_add_epi16(a, _mm256_maddubs_epi16(lo[u], _mm256_set1_epi32(xp[2 * u])));
        b = _mm256_add_epi16(b, _mm256_maddubs_epi16(hi[u],
                                                     _mm256_set1_epi32(xp[2 * u + 1])));
      }
      iacc[m] = _mm256_madd_epi16(_mm256_add_epi16(a, b), ones);
    }
  } else {
    for (int m = 0; m < MB; ++m) iacc[m] = _mm256_setzero_si256();
#pragma GCC unroll 8
    for (int u = 0; u < WPB; ++u) dot8_word<MB>(qw, N, kk0 + u, xw, iacc);
  }
}

// Rows [m0, m0 + MB) x columns [c0, c1) of the output (c1 - c0 <= kTileCols, multiples of 8).
// WPB > 0: blocks of WPB words (block_dot_fixed); 0: any block size (block_dot).
template <int BITS, int MB, int WPB, typename T>
void tile(const QuantizedRows& qx, const int32_t* qw, const T* scales, const T* zeros,
          const T* bias, T* out, int64_t N, int64_t group_size, int64_t m0, int64_t c0,
          int64_t c1, float* ybuf) {
  constexpr int64_t P = 32 / BITS;
  const int64_t wpb = qx.ab / P, blocks_per_group = group_size / qx.ab;
  const int64_t width = c1 - c0;
  const int32_t* xw[MB];
  for (int m = 0; m < MB; ++m) xw[m] = qx.row_words(m0 + m);
  std::fill(ybuf, ybuf + MB * width, 0.0f);
  for (int64_t g = 0; g < qx.G; ++g) {
    __m256 gs[MB];
    for (int m = 0; m < MB; ++m) gs[m] = _mm256_set1_ps(qx.gsum[(m0 + m) * qx.G + g]);
    for (int64_t c = c0; c < c1; c += 8) {
      if (N <= kPrefetchMaxCols && g + 1 < qx.G && ((c - c0) & 15) == 0)
        prefetch_group(qw, scales, zeros, N, group_size / P, g + 1, c);
      __m256 f[MB];
      for (int m = 0; m < MB; ++m) f[m] = _mm256_setzero_ps();
      for (int64_t b = g * blocks_per_group; b < (g + 1) * blocks_per_group; ++b) {
        __m256i iacc[MB];
        if (WPB > 0)
          block_dot_fixed<BITS, MB, (WPB > 0 ? WPB : 1)>(qw + c, N, b * wpb, xw, iacc);
        else
          block_dot<BITS, MB>(qw + c, N, b * wpb, wpb, xw, iacc);
        for (int m = 0; m < MB; ++m) {
          if (BITS == 8)
            iacc[m] = _mm256_add_epi32(
                iacc[m], _mm256_set1_epi32(128 * qx.qsum[(m0 + m) * qx.nb + b]));
          f[m] = _mm256_fmadd_ps(_mm256_set1_ps(qx.d[(m0 + m) * qx.nb + b]),
                                 _mm256_cvtepi32_ps(iacc[m]), f[m]);
        }
      }
      const __m256 s = load8(scales + g * N + c);
      const __m256 z = load8(zeros + g * N + c);
      for (int m = 0; m < MB; ++m) {
        float* y = ybuf + m * width + (c - c0);
        // y += s * (f - z * gsum)
        const __m256 t = _mm256_fnmadd_ps(z, gs[m], f[m]);
        _mm256_storeu_ps(y, _mm256_fmadd_ps(s, t, _mm256_loadu_ps(y)));
      }
    }
  }
  store_tile(ybuf, bias, out, m0, MB, N, width, c0, c1);
}

template <int BITS, int WPB, typename T>
void columns(const QuantizedRows& qx, const int32_t* qw, const T* scales, const T* zeros,
             const T* bias, T* out, int64_t M, int64_t N, int64_t group_size, int64_t c0,
             int64_t c1) {
  std::vector<float> ybuf(kRowChunk * kTileCols);
  for (int64_t t0 = c0; t0 < c1; t0 += kTileCols) {
    const int64_t t1 = std::min(t0 + kTileCols, c1);
    int64_t m0 = 0;
    for (; m0 + kRowChunk <= M; m0 += kRowChunk)
      tile<BITS, kRowChunk, WPB>(qx, qw, scales, zeros, bias, out, N, group_size, m0, t0, t1,
                                 ybuf.data());
    switch (M - m0) {
      case 3: tile<BITS, 3, WPB>(qx, qw, scales, zeros, bias, out, N, group_size, m0, t0, t1,
                                 ybuf.data()); break;
      case 2: tile<BITS, 2, WPB>(qx, qw, scales, zeros, bias, out, N, group_size, m0, t0, t1,
                                 ybuf.data()); break;
      case 1: tile<BITS, 1, WPB>(qx, qw, scales, zeros, bias, out, N, group_size, m0, t0, t1,
                                 ybuf.data()); break;
      default: break;
    }
  }
}

// out [M, N] = x [M, K] @ W^T (+ bias), see the contract at the top of this file.
template <int BITS, typename T>
void linear(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scales,
            const at::Tensor& zeros, const c10::optional<at::Tensor>& bias, at::Tensor& out,
            int64_t group_size) {
  const int64_t M = x.size(0), K = x.size(1), N = out.size(1);
  const QuantizedRows qx = quantize_rows<BITS>(x.data_ptr<T>(), M, K, group_size);
  const int32_t* qw = qweight.data_ptr<int32_t>();
  const T* sp = scales.data_ptr<T>();
  const T* zp = zeros.data_ptr<T>();
  const T* bp = bias.has_value() ? bias->data_ptr<T>() : nullptr;
  T* op = out.data_ptr<T>();
  const int64_t vectors = N / 8;
  // grain: one thread below kMinParallelWork columns x inputs (x rows), else >= 8 columns each
  const int64_t work = N * K * std::max<int64_t>(M, 1);
  const int64_t grain = work < kMinParallelWork ? vectors : 1;
  constexpr int kFixed = kAB / (32 / BITS);        // words in a 32-input block
  at::parallel_for(0, vectors, grain, [&](int64_t begin, int64_t end) {
    if (qx.ab == kAB)
      columns<BITS, kFixed>(qx, qw, sp, zp, bp, op, M, N, group_size, begin * 8, end * 8);
    else
      columns<BITS, 0>(qx, qw, sp, zp, bp, op, M, N, group_size, begin * 8, end * 8);
  });
}

// ---------------------------------------------------------------------------------------
// The float path (the default: activations as given, fp32 products): the same column tiles
// and group-major memory order as above, each weight integer converted to fp32 and multiplied
// by x[k] with FMAs. Per row and group: g = sum_k x[k] q[k, n] in four interleaved partial
// sums (k mod 4, combined as (p0 + p1) + (p2 + p3)), then y += s * (g - z * sum_k x[k]); one
// order per row at any batch size (batch invariant), error the fp32 rounding of those sums.
//
// PRE (pre-scaled activations, the fast form of the same numbers): the integer at bit offset
// s = BITS * j of a word (j < P - 1) is converted in place, as q * 2^s (one AND instead of a
// shift and an AND), against the activation pre-multiplied by 2^-s. Both scalings are exact
// (a power of two, q * 2^s < 2^31, x * 2^-s a normal float: the caller checks every |x|), so
// each product, and every FMA's rounding, is the unscaled one's: results are bitwise equal.
template <int BITS, int MB, bool PRE, typename T>
void tile_float(const float* xf, const float* xsum, const int32_t* qw, const T* scales,
                const T* zeros, const T* bias, T* out, int64_t K, int64_t N, int64_t G,
                int64_t group_size, int64_t m0, int64_t c0, int64_t c1, float* ybuf) {
  constexpr int P = 32 / BITS;
  const __m256i mask = _mm256_set1_epi32((1 << BITS) - 1);
  const int64_t wpg = group_size / P, width = c1 - c0;
  const float* xr[MB];
  for (int m = 0; m < MB; ++m) xr[m] = xf + (m0 + m) * K;
  std::fill(ybuf, ybuf + MB * width, 0.0f);
  for (int64_t g = 0; g < G; ++g) {
    for (int64_t c = c0; c < c1; c += 8) {
      if (N <= kPrefetchMaxCols && g + 1 < G && ((c - c0) & 15) == 0)
        prefetch_group(qw, scales, zeros, N, wpg, g + 1, c);
      __m256 part[MB][4];
      for (int m = 0; m < MB; ++m)
        for (int i = 0; i < 4; ++i) part[m][i] = _mm256_setzero_ps();
      for (int64_t kk = g * wpg; kk < (g + 1) * wpg; ++kk) {
        const __m256i word =
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qw + kk * N + c));
#pragma GCC unroll 8
        for (int j = 0; j < P; ++j) {
          const __m256 q = _mm256_cvtepi32_ps(
              !PRE ? _mm256_and_si256(_mm256_srli_epi32(word, BITS * j), mask)
              : j < P - 1
                  ? _mm256_and_si256(word, _mm256_set1_epi32(((1 << BITS) - 1) << (BITS * j)))
                  : _mm256_srli_epi32(word, BITS * j));      // the top bits: the shift alone
          for (int m = 0; m < MB; ++m)
            part[m][j & 3] =
                _mm256_fmadd_ps(_mm256_set1_ps(xr[m][kk * P + j]), q, part[m][j & 3]);
        }
      }
      const __m256 sv = load8(scales + g * N + c);
      const __m256 zv = load8(zeros + g * N + c);
      for (int m = 0; m < MB; ++m) {
        const __m256 gsum = _mm256_add_ps(_mm256_add_ps(part[m][0], part[m][1]),
                                          _mm256_add_ps(part[m][2], part[m][3]));
        float* y = ybuf + m * width + (c - c0);
        const __m256 t = _mm256_fnmadd_ps(zv, _mm256_set1_ps(xsum[(m0 + m) * G + g]), gsum);
        _mm256_storeu_ps(y, _mm256_fmadd_ps(sv, t, _mm256_loadu_ps(y)));
      }
    }
  }
  store_tile(ybuf, bias, out, m0, MB, N, width, c0, c1);
}

// Rows [0, M) x columns [c0, c1) of the float path; xf: the activations (pre-scaled when PRE).
template <int BITS, bool PRE, typename T>
void float_columns(const float* xf, const float* xs, const int32_t* qw, const T* sp,
                   const T* zp, const T* bp, T* op, int64_t M, int64_t K, int64_t N, int64_t G,
                   int64_t group_size, int64_t c0, int64_t c1) {
  std::vector<float> ybuf(kRowChunk * kTileCols);
  for (int64_t t0 = c0; t0 < c1; t0 += kTileCols) {
    const int64_t t1 = std::min(t0 + kTileCols, c1);
    int64_t m0 = 0;
    for (; m0 + kRowChunk <= M; m0 += kRowChunk)
      tile_float<BITS, kRowChunk, PRE>(xf, xs, qw, sp, zp, bp, op, K, N, G, group_size, m0, t0,
                                       t1, ybuf.data());
    switch (M - m0) {
      case 3: tile_float<BITS, 3, PRE>(xf, xs, qw, sp, zp, bp, op, K, N, G, group_size, m0, t0,
                                       t1, ybuf.data()); break;
      case 2: tile_float<BITS, 2, PRE>(xf, xs, qw, sp, zp, bp, op, K, N, G, group_size, m0, t0,
                                       t1, ybuf.data()); break;
      case 1: tile_float<BITS, 1, PRE>(xf, xs, qw, sp, zp, bp, op, K, N, G, group_size, m0, t0,
                                       t1, ybuf.data()); break;
      default: break;
    }
  }
}

// xf scaled for tile_float<PRE = true>: input k (position j = k mod P in its word) times
// 2^-(BITS * j), except the last position. False (xp untouched: use the unscaled form) when
// some scaled value would not be a normal float (|x| below FLT_MIN * 2^(BITS (P - 2))).
template <int BITS>
bool prescale(const std::vector<float>& xf, std::vector<float>& xp) {
  constexpr int P = 32 / BITS;
  const float limit = std::ldexp(std::numeric_limits<float>::min(), BITS * (P - 2));
  for (float v : xf)
    if (v != 0.0f && std::fabs(v) < limit) return false;
  float scale[P];
  for (int j = 0; j < P; ++j) scale[j] = j < P - 1 ? std::ldexp(1.0f, -BITS * j) : 1.0f;
  xp.resize(xf.size());
  for (size_t i = 0; i < xf.size(); ++i) xp[i] = xf[i] * scale[i % P];
  return true;
}

template <int BITS, typename T>
void linear_float(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scales,
                  const at::Tensor& zeros, const c10::optional<at::Tensor>& bias,
                  at::Tensor& out, int64_t group_size) {
  const int64_t M = x.size(0), K = x.size(1), N = out.size(1), G = K / group_size;
  std::vector<float> xf, xs, xp;
  cpu_vec::rows_as_float_with_group_sums(x.data_ptr<T>(), M, K, group_size, xf, xs);
  const bool pre = prescale<BITS>(xf, xp);       // K is a multiple of P: i % P == k % P
  const int32_t* qw = qweight.data_ptr<int32_t>();
  const T* sp = scales.data_ptr<T>();
  const T* zp = zeros.data_ptr<T>();
  const T* bp = bias.has_value() ? bias->data_ptr<T>() : nullptr;
  T* op = out.data_ptr<T>();
  const int64_t vectors = N / 8;
  const int64_t grain = N * K * std::max<int64_t>(M, 1) < kMinParallelWork ? vectors : 1;
  at::parallel_for(0, vectors, grain, [&](int64_t begin, int64_t end) {
    if (pre)
      float_columns<BITS, true>(xp.data(), xs.data(), qw, sp, zp, bp, op, M, K, N, G,
                                group_size, begin * 8, end * 8);
    else
      float_columns<BITS, false>(xf.data(), xs.data(), qw, sp, zp, bp, op, M, K, N, G,
                                 group_size, begin * 8, end * 8);
  });
}

}  // namespace wna16_avx2
