// W8A8 INT8 linear for the CPU plugin, reading the core's Int8Weight layout
// (vllm_core/model_executor/quantization/quantized_weights.py) as it is:
//   weight int8 [N, K] (row n = output channel n, contiguous over k), weight_scale fp32 [N],
//   input_scale: none (dynamic: s_x = max|x_row| / 127 per row) or one fp32 value (static),
//   y[m, n] = float(sum_k xq[m, k] * w[n, k]) * s_x[m] * s_w[n] (+ bias[n]), in x's dtype.
//
// The activation quantization is fused: one pass per row computes the row's scale and its
// int8 values (round half to even, clamped to [-127, 127], exactly as
// quantize_per_token does), into a buffer zero-padded to a multiple of 64 inputs. The integer
// dot products are exact (int32), so the result of a row does not depend on the batch it is
// in, on the row chunking, or on the thread split: batch invariance comes for free; the float
// epilogue is the same expression for every row.
//
// Dot products, by ISA (the build is -march=native):
//  - AVX-512 VNNI (__AVX512VNNI__ + __AVX512BW__): vpdpbusd on 64-byte vectors, 4 products
//    summed into each int32 lane in one instruction (64 MACs). vpdpbusd multiplies unsigned by
//    signed bytes, so the activations are stored as u8 = x + 128 and the kernel subtracts
//    128 * sum_k w[n, k], accumulated alongside with a second vpdpbusd of all-ones bytes
//    (shared by every row of the chunk).
//  - AVX2: vpmaddubsw / vpmaddwd on 32-byte vectors (32 MACs in two multiply instructions),
//    with the sign trick: |w| (u8, up to 128) times x with w's sign applied (s8; x is in
//    [-127, 127], so negating it never overflows), each pair sum at most 2 * 128 * 127 = 32512:
//    vpmaddubsw never saturates, the result is exact, and int8 weights of -128 (which
//    compressed-tensors checkpoints may hold) are handled.
//  - otherwise: a plain C++ loop (exact, slower).
//  - AMX-INT8 (Sapphire Rapids and later, int8_amx.h), for calls of at least 16 rows when
//    the caller allows it and Linux grants the tile state: 16 x 16 x 64 tile products on the
//    weight repacked per call and per 32-column block (transposed in registers, ~0.1 ns per
//    weight byte), the same int32 sums (signed activations, no offset).
//
// Packed weights (int8_pack / int8_linear_packed, AVX-512 VNNI builds): the platform packs each
// weight once at load into int8_vnni.h's layout, which replaces [N, K]; every call then runs
// the packed VNNI dot products (each int32 lane one output column, activations broadcast 4
// bytes at a time), or from 16 rows the AMX tiles reading the packed words in place (tdpbsud),
// with nothing repacked per call. Same int32 sums, same epilogue, same output bit for bit.
//
// Tiling: output columns are split into blocks (parallel over ATen's intra-op threads); in a
// block, rows are taken 4 at a time (their int8 values stay in L1) against pairs of columns
// (the block's weights stay in L2), 4 x 2 int32 vector accumulators reduced horizontally at
// the end of the row.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "int8_amx.h"
#include "kernels.h"
#include "int8_vnni.h"

namespace {

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
#define I8_VNNI 1
constexpr int64_t kV = 64;               // bytes per vector
constexpr int kOffset = 128;             // activations stored as x + 128 (u8)
#elif defined(__AVX2__)
#define I8_AVX2 1
constexpr int64_t kV = 32;
constexpr int kOffset = 0;
#else
constexpr int64_t kV = 64;
constexpr int kOffset = 0;
#endif
constexpr int64_t kPad = 64;             // activation rows are padded to a multiple of this
constexpr int kRows = 4;
constexpr int kCols = 2;
constexpr int64_t kBlockCols = 32;       // columns per parallel work item

#if defined(I8_VNNI)
typedef __m512i vec;
inline vec vload(const void* p) { return _mm512_loadu_si512(p); }
inline int32_t hsum(vec v) { return _mm512_reduce_add_epi32(v); }
#elif defined(I8_AVX2)
typedef __m256i vec;
inline vec vload(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
inline int32_t hsum(vec v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
  return _mm_cvtsi128_si32(s);
}
#endif

// sum_k x[m, k] * w[n, k] for MB rows x NB columns (int32, exact). xq: [MB rows, stride kp]
// (zero-padded past K; u8 x + 128 on VNNI); w: NB row pointers into the [N, K] weight.
template <int MB, int NB>
inline void dot_tile(const int8_t* xq, int64_t kp, const int8_t* const* w, int64_t K,
                     int32_t out[MB][NB]) {
#if defined(I8_VNNI) || defined(I8_AVX2)
  vec acc[MB][NB];
  for (int m = 0; m < MB; ++m)
    for (int b = 0; b < NB; ++b) acc[m][b] = vec{};
#if defined(I8_VNNI)
  vec comp[NB];
  for (int b = 0; b < NB; ++b) comp[b] = vec{};
  const vec ones = _mm512_set1_epi8(1);
#else
  const __m256i ones16 = _mm256_set1_epi16(1);
#endif
  const int64_t full = K / kV;
  alignas(64) int8_t tail[NB][kV];
  const int64_t rest = K - full * kV;
  for (int64_t i = 0; i <= full; ++i) {
    vec wv[NB];
    if (i < full) {
      for (int b = 0; b < NB; ++b) wv[b] = vload(w[b] + i * kV);
    } else {
      if (rest == 0) break;
      // the last partial vector: copied so nothing past the weight's end is read (the
      // activations are zero there, so the padding's value would not matter otherwise)
      for (int b = 0; b < NB; ++b) {
        std::memset(tail[b], 0, kV);
        std::memcpy(tail[b], w[b] + i * kV, rest);
        wv[b] = vload(tail[b]);
      }
    }
#if defined(I8_VNNI)
    for (int b = 0; b < NB; ++b) comp[b] = _mm512_dpbusd_epi32(comp[b], ones, wv[b]);
    for (int m = 0; m < MB; ++m) {
      const vec xv = vload(xq + m * kp + i * kV);
      for (int b = 0; b < NB; ++b) acc[m][b] = _mm512_dpbusd_epi32(acc[m][b], xv, wv[b]);
    }
#else
    vec aw[NB];
    for (int b = 0; b < NB; ++b) aw[b] = _mm256_abs_epi8(wv[b]);
    for (int m = 0; m < MB; ++m) {
      const vec xv = vload(xq + m * kp + i * kV);
      for (int b = 0; b < NB; ++b) {
        const __m256i p = _mm256_maddubs_epi16(aw[b], _mm256_sign_epi8(xv, wv[b]));
        acc[m][b] = _mm256_add_epi32(acc[m][b], _mm256_madd_epi16(p, ones16));
      }
    }
#endif
  }
  for (int b = 0; b < NB; ++b) {
#if defined(I8_VNNI)
    // the padding past K holds u8 128 (x = 0) against zero weights: no correction needed
    const int32_t c = kOffset * hsum(comp[b]);
#else
    const int32_t c = 0;
#endif
    for (int m = 0; m < MB; ++m) out[m][b] = hsum(acc[m][b]) - c;
  }
#else
  for (int m = 0; m < MB; ++m)
    for (int b = 0; b < NB; ++b) {
      int32_t s = 0;
      for (int64_t k = 0; k < K; ++k)
        s += static_cast<int32_t>(xq[m * kp + k]) * static_cast<int32_t>(w[b][k]);
      out[m][b] = s;
    }
#endif
}

// y = float(acc) * sx * sw, then + bias: two roundings, in the reference's order (no FMA).
__attribute__((optimize("fp-contract=off"))) inline float epilogue(int32_t acc, float sx,
                                                                   float sw, const float* bias,
                                                                   int64_t n) {
  float y = static_cast<float>(acc) * sx;
  y = y * sw;
  if (bias != nullptr) y = y + bias[n];
  return y;
}

// out[n0 .. n0 + cols) of one row from its int32 sums acc[0 .. cols), less `sub` (the packed
// weights' 128 sum_k x, else 0): epilogue() for each, 16 at a time with the same three
// roundings (mul, mul, add; no FMA) on AVX-512.
template <typename T>
void epilogue_row(const int32_t* acc, int64_t cols, float sx, const float* sw,
                  const float* bias, int64_t n0, T* out, int32_t sub = 0) {
  int64_t c = 0;
#if defined(__AVX512F__)
  alignas(64) float y[16];
  const __m512 vsx = _mm512_set1_ps(sx);
  const __m512i vsub = _mm512_set1_epi32(sub);
  for (; c + 16 <= cols; c += 16) {
    const __m512i a = _mm512_sub_epi32(_mm512_loadu_si512(acc + c), vsub);
    __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(a), vsx);
    v = _mm512_mul_ps(v, _mm512_loadu_ps(sw + n0 + c));
    // an explicit-rounding add: the compiler must not contract it with the mul into an FMA
    if (bias != nullptr)
      v = _mm512_add_round_ps(v, _mm512_loadu_ps(bias + n0 + c),
                              _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    if constexpr (std::is_same_v<T, float>) {
      _mm512_storeu_ps(out + n0 + c, v);
#if defined(__AVX512BF16__)
    } else if constexpr (std::is_same_v<T, c10::BFloat16>) {   // round to nearest even
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + n0 + c),
                          reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(v)));
#endif
    } else {
      _mm512_store_ps(y, v);
      for (int i = 0; i < 16; ++i) out[n0 + c + i] = static_cast<T>(y[i]);
    }
  }
#endif
  for (; c < cols; ++c)
    out[n0 + c] = static_cast<T>(epilogue(acc[c] - sub, sx, sw[n0 + c], bias, n0 + c));
}

template <int MB, typename T>
void rows_block(const int8_t* xq, int64_t kp, const float* sx, const int8_t* weight,
                const float* sw, const float* bias, T* out, int64_t K, int64_t N, int64_t m0,
                int64_t n0, int64_t n1) {
  int32_t acc[MB][kCols];
  int64_t n = n0;
  for (; n + kCols <= n1; n += kCols) {
    const int8_t* wp[kCols];
    for (int b = 0; b < kCols; ++b) wp[b] = weight + (n + b) * K;
    dot_tile<MB, kCols>(xq + m0 * kp, kp, wp, K, acc);
    for (int m = 0; m < MB; ++m)
      for (int b = 0; b < kCols; ++b)
        out[(m0 + m) * N + n + b] =
            static_cast<T>(epilogue(acc[m][b], sx[m0 + m], sw[n + b], bias, n + b));
  }
  for (; n < n1; ++n) {
    const int8_t* wp[1] = {weight + n * K};
    int32_t one[MB][1];
    dot_tile<MB, 1>(xq + m0 * kp, kp, wp, K, one);
    for (int m = 0; m < MB; ++m)
      out[(m0 + m) * N + n] = static_cast<T>(epilogue(one[m][0], sx[m0 + m], sw[n], bias, n));
  }
}

#if defined(__AVX512F__)
// 16 values of x as fp32 (exact for every supported dtype).
inline __m512 load16(const float* x) { return _mm512_loadu_ps(x); }
inline __m512 load16(const c10::BFloat16* x) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
inline __m512 load16(const c10::Half* x) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x)));
}
#endif

// Quantize a row of x into xq (stride kp, padded with the offset: x = 0) and its scale into
// sx: q = round-half-even(clamp(x / s, -127, 127)), stored as q + offset (128 for the VNNI
// path's u8 activations, else 0). The AVX-512 loop does the same IEEE operations 16 at a time
// (division, clamp, conversion in the default round-to-nearest-even mode).
template <typename T>
void quantize_row(const T* x, int64_t K, int64_t kp, float static_scale, bool dynamic,
                  int offset, int8_t* xq, float* sx) {
  float s = static_scale;
  int64_t k = 0;
  if (dynamic) {
    float amax = 0.0f;
#if defined(__AVX512F__)
    __m512 vmax = _mm512_setzero_ps();
    for (; k + 16 <= K; k += 16) vmax = _mm512_max_ps(vmax, _mm512_abs_ps(load16(x + k)));
    amax = _mm512_reduce_max_ps(vmax);
#endif
    for (; k < K; ++k) amax = std::max(amax, std::fabs(static_cast<float>(x[k])));
    s = std::max(amax, 1e-12f) / 127.0f;
  }
  *sx = s;
  k = 0;
#if defined(__AVX512F__)
  const __m512 vs = _mm512_set1_ps(s), lo = _mm512_set1_ps(-127.0f),
               hi = _mm512_set1_ps(127.0f);
  const __m512i voff = _mm512_set1_epi32(offset);
  for (; k + 16 <= K; k += 16) {
    // max(x / s, lo) returns lo when x / s is NaN (its second operand): -127, as the scalar
    // loop below does
    const __m512 v = _mm512_min_ps(_mm512_max_ps(_mm512_div_ps(load16(x + k), vs), lo), hi);
    const __m512i q = _mm512_add_epi32(_mm512_cvtps_epi32(v), voff);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(xq + k), _mm512_cvtepi32_epi8(q));
  }
#endif
  for (; k < K; ++k) {
    float v = static_cast<float>(x[k]) / s;
    v = std::min(127.0f, std::max(-127.0f, v));
    const int q = static_cast<int>(std::nearbyint(v));      // half to even (default mode)
    xq[k] = static_cast<int8_t>(q + offset);                 // u8 bit pattern on VNNI
  }
  for (int64_t i = K; i < kp; ++i) xq[i] = static_cast<int8_t>(offset);
}

template <typename T>
void vector_path(const int8_t* xq, int64_t kp, const float* sx, const int8_t* wp,
                 const float* swp, const float* bp, T* op, int64_t M, int64_t K, int64_t N) {
  const int64_t blocks = (N + kBlockCols - 1) / kBlockCols;
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t n0 = blk * kBlockCols, n1 = std::min(N, n0 + kBlockCols);
      int64_t m0 = 0;
      for (; m0 + kRows <= M; m0 += kRows)
        rows_block<kRows, T>(xq, kp, sx, wp, swp, bp, op, K, N, m0, n0, n1);
      switch (M - m0) {
        case 3: rows_block<3, T>(xq, kp, sx, wp, swp, bp, op, K, N, m0, n0, n1); break;
        case 2: rows_block<2, T>(xq, kp, sx, wp, swp, bp, op, K, N, m0, n0, n1); break;
        case 1: rows_block<1, T>(xq, kp, sx, wp, swp, bp, op, K, N, m0, n0, n1); break;
        default: break;
      }
    }
  });
}

#if defined(I8_AMX)
// xq: the signed activations, rows zero-padded to a multiple of int8_amx::kBlockRows.
template <typename T>
void amx_path(const int8_t* xq, int64_t kp, const float* sx, const int8_t* wp,
              const float* swp, const float* bp, T* op, int64_t M, int64_t K, int64_t N) {
  constexpr int64_t bc = int8_amx::kBlockCols, br = int8_amx::kBlockRows;
  const int64_t blocks = (N + bc - 1) / bc;
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    int8_amx::configure();
    std::vector<int8_t> packed(kp * bc);
    alignas(64) int32_t acc[br * bc];
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t n0 = blk * bc, cols = std::min(bc, N - n0);
      int8_amx::pack_block(wp, N, K, kp, n0, packed.data());
      for (int64_t m0 = 0; m0 < M; m0 += br) {
        int8_amx::block_product(xq, kp, m0, packed.data(), acc);
        for (int64_t m = m0; m < std::min(M, m0 + br); ++m)
          epilogue_row<T>(acc + (m - m0) * bc, cols, sx[m], swp, bp, n0, op + m * N);
      }
    }
    _tile_release();
  });
}
#endif

// True when a call of M rows runs on the AMX tiles (built, granted, allowed, enough rows).
bool use_amx(int64_t M, bool allow_amx) {
#if defined(I8_AMX)
  return allow_amx && M >= int8_amx::kMinRows && int8_amx::ready();
#else
  (void)M;
  (void)allow_amx;
  return false;
#endif
}

// M rounded up to whole AMX row blocks (the quantized activations' rows on the AMX path).
int64_t amx_rows(int64_t M) {
#if defined(I8_AMX)
  return (M + int8_amx::kBlockRows - 1) / int8_amx::kBlockRows * int8_amx::kBlockRows;
#else
  return M;
#endif
}

// A call's activations quantized for the path it takes: amx (use_amx), xq [rows][kp] (rows:
// M, or amx_rows(M) on AMX, whose padded rows stay zero), each stored with no offset on AMX
// and `vector_offset` otherwise, and the row scales sx [M].
struct QuantizedCall {
  bool amx = false;
  std::vector<int8_t> xq;
  std::vector<float> sx;
};

template <typename T>
QuantizedCall quantize_call(const at::Tensor& x, int64_t kp, bool allow_amx, int vector_offset,
                            const c10::optional<at::Tensor>& input_scale) {
  const int64_t M = x.size(0), K = x.size(1);
  QuantizedCall q;
  q.amx = use_amx(M, allow_amx);
  const int offset = q.amx ? 0 : vector_offset;
  q.xq.assign((q.amx ? amx_rows(M) : M) * kp, 0);
  q.sx.assign(M, 0.0f);
  const bool dynamic = !input_scale.has_value();
  const float static_scale = dynamic ? 0.0f : input_scale->item<float>();
  const T* xp = x.data_ptr<T>();
  at::parallel_for(0, M, 16, [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m)
      quantize_row<T>(xp + m * K, K, kp, static_scale, dynamic, offset, q.xq.data() + m * kp,
                      q.sx.data() + m);
  });
  return q;
}

// y [M, N] for a weight in its [N, K] layout: AMX (repacking per call) from 16 rows where it
// runs, else the vector dot products.
template <typename T>
at::Tensor run(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& weight_scale,
               const c10::optional<at::Tensor>& input_scale,
               const c10::optional<at::Tensor>& bias, bool allow_amx) {
  const int64_t M = x.size(0), K = x.size(1), N = weight.size(0);
  const int64_t kp = (K + kPad - 1) / kPad * kPad;
  auto out = at::empty({M, N}, x.options());
  if (M == 0) return out;
  const QuantizedCall q = quantize_call<T>(x, kp, allow_amx, kOffset, input_scale);
  const int8_t* xq = q.xq.data();
  const float* sx = q.sx.data();
  const int8_t* wp = weight.data_ptr<int8_t>();
  const float* swp = weight_scale.data_ptr<float>();
  const float* bp = bias.has_value() ? bias->data_ptr<float>() : nullptr;
  T* op = out.data_ptr<T>();
#if defined(I8_AMX)
  if (q.amx) {
    amx_path<T>(xq, kp, sx, wp, swp, bp, op, M, K, N);
    return out;
  }
#endif
  vector_path<T>(xq, kp, sx, wp, swp, bp, op, M, K, N);
  return out;
}

#if defined(I8_VNNI_PACKED)
// 128 sum_k xq[m, k] of each row (the packed weights' offset, taken away from every sum); kp
// is a multiple of 64: one vpdpbusd of all-ones bytes sums 64 activations.
std::vector<int32_t> offset_sums(const int8_t* xq, int64_t kp, int64_t M) {
  std::vector<int32_t> comp(M);
  const __m512i ones = _mm512_set1_epi8(1);
  at::parallel_for(0, M, 64, [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m) {
      __m512i acc = _mm512_setzero_si512();
      for (int64_t k = 0; k < kp; k += 64)
        acc = _mm512_dpbusd_epi32(acc, ones, _mm512_loadu_si512(xq + m * kp + k));
      comp[m] = 128 * _mm512_reduce_add_epi32(acc);
    }
  });
  return comp;
}

// Work items (column block, chunk of rows) for `threads`: rows are chunked, in multiples of
// `unit` rows, only as far as the threads need items. Returns {chunks, rows per chunk}.
std::pair<int64_t, int64_t> row_chunks(int64_t M, int64_t unit, int64_t blocks) {
  const int64_t tiles = (M + unit - 1) / unit;
  const int64_t want = 4 * at::get_num_threads();
  const int64_t chunks = std::max<int64_t>(1, std::min(tiles, (want + blocks - 1) / blocks));
  return {chunks, (tiles + chunks - 1) / chunks * unit};
}

// R rows from m0 against a block of 16 C packed columns: their sums, less 128 sum_k x of each
// row, through the epilogue into out[m, n0 .. n0 + cols).
template <int R, int C, typename T>
void packed_rows(const int8_t* xq, int64_t kp, int64_t m0, const uint32_t* packed,
                 const int32_t* comp, const float* sx, const float* swp, const float* bp,
                 int64_t n0, int64_t cols, int64_t N, T* op) {
  alignas(64) int32_t acc[R][int8_vnni::kBlockCols];
  int8_vnni::block_rows<R, C>(xq, kp, m0, packed, acc);
  for (int r = 0; r < R; ++r) {
    const int64_t m = m0 + r;
    epilogue_row<T>(acc[r], cols, sx[m], swp, bp, n0, op + m * N, comp[m]);
  }
}

// Rows m0 .. m1 against one packed block (16 C columns), kRows at a time, then the tail.
template <int C, typename T>
void packed_block_rows(const int8_t* xq, int64_t kp, int64_t m0, int64_t m1,
                       const uint32_t* packed, const int32_t* comp, const float* sx,
                       const float* swp, const float* bp, int64_t n0, int64_t cols, int64_t N,
                       T* op) {
  constexpr int R = int8_vnni::kRows;
  static_assert(R == 3, "the tail below handles 1 or 2 rows");
  int64_t m = m0;
  for (; m + R <= m1; m += R)
    packed_rows<R, C, T>(xq, kp, m, packed, comp, sx, swp, bp, n0, cols, N, op);
  if (m1 - m == 2)
    packed_rows<2, C, T>(xq, kp, m, packed, comp, sx, swp, bp, n0, cols, N, op);
  else if (m1 - m == 1)
    packed_rows<1, C, T>(xq, kp, m, packed, comp, sx, swp, bp, n0, cols, N, op);
}

// The AVX-512 VNNI dot products on the packed weight pw (xq: signed activations, no offset):
// work items of up to 4 panels (the last one 2 when the panel count is not a multiple of 4).
template <typename T>
void vnni_packed_path(const int8_t* xq, int64_t kp, const float* sx, const int32_t* comp,
                      const uint32_t* pw, const float* swp, const float* bp, T* op, int64_t M,
                      int64_t N) {
  constexpr int64_t bc = int8_vnni::kBlockCols, pc = int8_vnni::kPanelCols;
  const int64_t blocks = (N + bc - 1) / bc, panels = int8_vnni::panels(N);
  const int64_t panel_words = kp / 4 * pc;
  const auto [chunks, chunk_rows] = row_chunks(M, int8_vnni::kRows, blocks);
  at::parallel_for(0, blocks * chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t blk = item / chunks, chunk = item % chunks;
      const int64_t n0 = blk * bc, cols = std::min(bc, N - n0);
      const int64_t m0 = chunk * chunk_rows, m1 = std::min(M, m0 + chunk_rows);
      const uint32_t* panel = pw + n0 / pc * panel_words;
      if (m0 >= m1) continue;
      if (panels - n0 / pc >= 4)
        packed_block_rows<4, T>(xq, kp, m0, m1, panel, comp, sx, swp, bp, n0, cols, N, op);
      else
        packed_block_rows<2, T>(xq, kp, m0, m1, panel, comp, sx, swp, bp, n0, cols, N, op);
    }
  });
}

#if defined(I8_AMX)
// The AMX tiles on the packed weight pw, read in place, 32 columns (two panels) per work item
// (xq: signed activations, rows padded with zeros to a multiple of 32).
template <typename T>
void amx_packed_path(const int8_t* xq, int64_t kp, const float* sx, const int32_t* comp,
                     const uint32_t* pw, const float* swp, const float* bp, T* op, int64_t M,
                     int64_t N) {
  constexpr int64_t bc = int8_amx::kBlockCols, br = int8_amx::kBlockRows;
  static_assert(bc == 2 * int8_vnni::kPanelCols, "an AMX column block is two panels");
  const int64_t blocks = (N + bc - 1) / bc;
  const auto [chunks, chunk_rows] = row_chunks(M, br, blocks);
  at::parallel_for(0, blocks * chunks, 1, [&](int64_t begin, int64_t end) {
    int8_amx::configure();
    alignas(64) int32_t acc[br * bc];
    for (int64_t item = begin; item < end; ++item) {
      const int64_t blk = item / chunks, chunk = item % chunks;
      const int64_t n0 = blk * bc, cols = std::min(bc, N - n0);
      const int64_t m1 = std::min(M, (chunk + 1) * chunk_rows);
      for (int64_t m0 = chunk * chunk_rows; m0 < m1; m0 += br) {
        int8_amx::packed_block_product(xq, kp, m0, pw + 2 * blk * (kp / 4 * 16), acc);
        for (int64_t m = m0; m < std::min(m1, m0 + br); ++m) {
          epilogue_row<T>(acc + (m - m0) * bc, cols, sx[m], swp, bp, n0, op + m * N, comp[m]);
        }
      }
    }
    _tile_release();
  });
}
#endif

// y [M, N] for a weight packed by int8_pack: AMX from 16 rows where it runs, else VNNI.
template <typename T>
at::Tensor run_packed(const at::Tensor& x, const at::Tensor& packed, int64_t N,
                      const at::Tensor& weight_scale,
                      const c10::optional<at::Tensor>& input_scale,
                      const c10::optional<at::Tensor>& bias, bool allow_amx) {
  const int64_t M = x.size(0), kp = packed.size(1) * 4;
  auto out = at::empty({M, N}, x.options());
  if (M == 0) return out;
  const QuantizedCall q = quantize_call<T>(x, kp, allow_amx, 0, input_scale);
  const int8_t* xq = q.xq.data();
  const float* sx = q.sx.data();
  const std::vector<int32_t> comp = offset_sums(xq, kp, M);
  const uint32_t* pw = reinterpret_cast<const uint32_t*>(packed.data_ptr<int32_t>());
  const float* swp = weight_scale.data_ptr<float>();
  const float* bp = bias.has_value() ? bias->data_ptr<float>() : nullptr;
  T* op = out.data_ptr<T>();
#if defined(I8_AMX)
  if (q.amx) {
    amx_packed_path<T>(xq, kp, sx, comp.data(), pw, swp, bp, op, M, N);
    return out;
  }
#endif
  vnni_packed_path<T>(xq, kp, sx, comp.data(), pw, swp, bp, op, M, N);
  return out;
}
#endif

// True when calls of at least 16 rows run on AMX tiles (built for AMX-INT8, tile state granted).
bool int8_amx_ready() {
#if defined(I8_AMX)
  return int8_amx::ready();
#else
  return false;
#endif
}

// True when weights can be packed at load for the AVX-512 VNNI / AMX paths (int8_pack).
bool int8_vnni_packed_built() {
#if defined(I8_VNNI_PACKED)
  return true;
#else
  return false;
#endif
}

void check_scales(const at::Tensor& weight_scale, const c10::optional<at::Tensor>& input_scale,
                  const c10::optional<at::Tensor>& bias, int64_t N) {
  TORCH_CHECK(weight_scale.scalar_type() == at::kFloat && weight_scale.numel() == N,
              "int8_linear: weight_scale must be float32 [N]");
  TORCH_CHECK(!input_scale.has_value() || (input_scale->scalar_type() == at::kFloat &&
                                           input_scale->numel() == 1),
              "int8_linear: input_scale must be one float32 value");
  TORCH_CHECK(!bias.has_value() || (bias->scalar_type() == at::kFloat && bias->numel() == N),
              "int8_linear: bias must be float32 [N]");
}

// y [M, N] = dequant(quant(x) @ weight^T) (+ bias); see the file comment for the contract.
at::Tensor int8_linear(const at::Tensor& x, const at::Tensor& weight,
                       const at::Tensor& weight_scale, const c10::optional<at::Tensor>& input_scale,
                       const c10::optional<at::Tensor>& bias, bool allow_amx) {
  TORCH_CHECK(x.dim() == 2 && weight.dim() == 2, "int8_linear: x [M, K], weight [N, K]");
  TORCH_CHECK(weight.scalar_type() == at::kChar, "int8_linear: weight must be int8");
  TORCH_CHECK(weight.size(1) == x.size(1), "int8_linear: weight has ", weight.size(1),
              " inputs, x has ", x.size(1));
  const int64_t N = weight.size(0);
  check_scales(weight_scale, input_scale, bias, N);
  auto xc = x.contiguous();
  auto wc = weight.contiguous();
  auto sc = weight_scale.contiguous().view({N});
  c10::optional<at::Tensor> bc;
  if (bias.has_value()) bc = bias->contiguous();
  switch (x.scalar_type()) {
    case at::kFloat: return run<float>(xc, wc, sc, input_scale, bc, allow_amx);
    case at::kBFloat16: return run<c10::BFloat16>(xc, wc, sc, input_scale, bc, allow_amx);
    case at::kHalf: return run<c10::Half>(xc, wc, sc, input_scale, bc, allow_amx);
    default: TORCH_CHECK(false, "int8_linear: unsupported dtype ", x.scalar_type());
  }
}

// The [N, K] int8 weight in the packed layout of int8_vnni.h (int32 [panels, kp / 4, 16]).
at::Tensor int8_pack(const at::Tensor& weight) {
  TORCH_CHECK(weight.dim() == 2 && weight.scalar_type() == at::kChar,
              "int8_pack: weight must be int8 [N, K]");
#if defined(I8_VNNI_PACKED)
  const int64_t N = weight.size(0), K = weight.size(1);
  const int64_t kp = (K + kPad - 1) / kPad * kPad;
  auto wc = weight.contiguous();
  auto out = at::empty({int8_vnni::panels(N), kp / 4, int8_vnni::kPanelCols},
                       weight.options().dtype(at::kInt));
  int8_vnni::pack_weight(wc.data_ptr<int8_t>(), N, K, kp,
                         reinterpret_cast<uint32_t*>(out.data_ptr<int32_t>()));
  return out;
#else
  TORCH_CHECK(false, "int8_pack: this build has no AVX-512 VNNI (int8_vnni_packed_built)");
#endif
}

}  // namespace

namespace vllm_core_cpu {

// int8_linear on a weight packed by int8_pack (n: its output features; the inputs are x's).
at::Tensor int8_linear_packed(const at::Tensor& x, const at::Tensor& packed, int64_t n,
                              const at::Tensor& weight_scale,
                              const c10::optional<at::Tensor>& input_scale,
                              const c10::optional<at::Tensor>& bias, bool allow_amx) {
#if defined(I8_VNNI_PACKED)
  TORCH_CHECK(x.dim() == 2, "int8_linear_packed: x [M, K]");
  TORCH_CHECK(packed.dim() == 3 && packed.scalar_type() == at::kInt &&
                  packed.size(2) == int8_vnni::kPanelCols && packed.is_contiguous(),
              "int8_linear_packed: packed must be int8_pack's int32 [panels, kp / 4, 16]");
  TORCH_CHECK(packed.size(1) * 4 == (x.size(1) + kPad - 1) / kPad * kPad,
              "int8_linear_packed: the packed weight has ", packed.size(1) * 4,
              " padded inputs, x has ", x.size(1));
  TORCH_CHECK(n > 0 && packed.size(0) == int8_vnni::panels(n),
              "int8_linear_packed: ", n, " outputs do not fit ", packed.size(0), " panels");
  check_scales(weight_scale, input_scale, bias, n);
  auto xc = x.contiguous();
  auto sc = weight_scale.contiguous().view({n});
  c10::optional<at::Tensor> bc2;
  if (bias.has_value()) bc2 = bias->contiguous();
  switch (x.scalar_type()) {
    case at::kFloat: return run_packed<float>(xc, packed, n, sc, input_scale, bc2, allow_amx);
    case at::kBFloat16:
      return run_packed<c10::BFloat16>(xc, packed, n, sc, input_scale, bc2, allow_amx);
    case at::kHalf: return run_packed<c10::Half>(xc, packed, n, sc, input_scale, bc2, allow_amx);
    default: TORCH_CHECK(false, "int8_linear_packed: unsupported dtype ", x.scalar_type());
  }
#else
  TORCH_CHECK(false, "int8_linear_packed: this build has no AVX-512 VNNI");
#endif
}

}  // namespace vllm_core_cpu

TORCH_LIBRARY_FRAGMENT(vllm_core_cpu, m) {
  m.def("int8_linear(Tensor x, Tensor weight, Tensor weight_scale, Tensor? input_scale, "
        "Tensor? bias, bool allow_amx=True) -> Tensor");
  m.def("int8_linear_packed(Tensor x, Tensor packed, int n, Tensor weight_scale, "
        "Tensor? input_scale, Tensor? bias, bool allow_amx=True) -> Tensor");
  m.def("int8_pack(Tensor weight) -> Tensor");
  m.def("int8_amx_ready() -> bool", &int8_amx_ready);
  m.def("int8_vnni_packed_built() -> bool", &int8_vnni_packed_built);
}

TORCH_LIBRARY_IMPL(vllm_core_cpu, CPU, m) {
  m.impl("int8_linear", &int8_linear);
  m.impl("int8_linear_packed", &vllm_core_cpu::int8_linear_packed);
  m.impl("int8_pack", &int8_pack);
}
