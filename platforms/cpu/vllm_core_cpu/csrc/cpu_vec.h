// Native-width float vectors for the CPU kernels, through GCC/Clang vector extensions:
// 16 lanes where AVX-512F is enabled (the build is -march=native), 8 otherwise (AVX2; NEON pairs
// on Arm). Wider-than-native vectors are avoided: their shuffles and lane loops lower to scalar
// code (~10x slower). Also: the fp32 copy of an activation matrix with its per-group sums, which
// the zero-point form of every grouped quantized product needs.
#pragma once

#include <ATen/ATen.h>

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace cpu_vec {

#if defined(__AVX512F__)
constexpr int64_t kLanes = 16;
#else
constexpr int64_t kLanes = 8;
#endif
// kLanes-wide vectors (the native width: 64 bytes of float with AVX-512, 32 without)
typedef float vf __attribute__((vector_size(kLanes * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(kLanes * sizeof(int32_t))));
typedef uint32_t vu __attribute__((vector_size(kLanes * sizeof(uint32_t))));
typedef uint16_t vh __attribute__((vector_size(kLanes * sizeof(uint16_t))));

// Load kLanes elements as floats.
inline vf loadv(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
// (bf16: one widening move and one shift; the generic vector conversion lowers to two halves)
inline vf loadv(const c10::BFloat16* p) {
  vf v;
#if defined(__AVX512F__)
  const __m512i w = _mm512_slli_epi32(
      _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16);
  std::memcpy(&v, &w, sizeof(v));
#elif defined(__AVX2__)
  const __m256i w = _mm256_slli_epi32(
      _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))), 16);
  std::memcpy(&v, &w, sizeof(v));
#else
  vh raw;
  std::memcpy(&raw, p, sizeof(raw));
  vu wide = __builtin_convertvector(raw, vu) << 16;
  std::memcpy(&v, &wide, sizeof(v));
#endif
  return v;
}
typedef uint8_t vb __attribute__((vector_size(kLanes)));

// kLanes IEEE half-precision bit patterns widened to floats, exactly: one vcvtph2ps with
// AVX-512F or F16C, a lane loop elsewhere.
inline vf half_bits_to_float(vh h) {
  vf v;
#if defined(__AVX512F__)
  __m256i raw;
  std::memcpy(&raw, &h, sizeof(raw));
  const __m512 f = _mm512_cvtph_ps(raw);
  std::memcpy(&v, &f, sizeof(v));
#elif defined(__F16C__) && defined(__AVX2__)
  __m128i raw;
  std::memcpy(&raw, &h, sizeof(raw));
  const __m256 f = _mm256_cvtph_ps(raw);
  std::memcpy(&v, &f, sizeof(v));
#else
  for (int i = 0; i < kLanes; ++i) {
    c10::Half x;
    x.x = h[i];
    v[i] = static_cast<float>(x);
  }
#endif
  return v;
}
inline vf loadv(const c10::Half* p) {
  vh raw;
  std::memcpy(&raw, p, sizeof(raw));
  return half_bits_to_float(raw);
}
// kLanes bytes widened to 16-bit lanes, zero- or sign-extended (one vpmovzxbw / vpmovsxbw).
template <bool kSigned>
inline vh widen_bytes(const void* p) {
  vh h;
#if defined(__AVX512F__)
  const __m128i raw = _mm_loadu_si128(static_cast<const __m128i*>(p));
  const __m256i w = kSigned ? _mm256_cvtepi8_epi16(raw) : _mm256_cvtepu8_epi16(raw);
  std::memcpy(&h, &w, sizeof(h));
#elif defined(__AVX2__)
  const __m128i raw = _mm_loadl_epi64(static_cast<const __m128i*>(p));
  const __m128i w = kSigned ? _mm_cvtepi8_epi16(raw) : _mm_cvtepu8_epi16(raw);
  std::memcpy(&h, &w, sizeof(h));
#else
  typedef int8_t vsb __attribute__((vector_size(kLanes)));
  typedef int16_t vsh __attribute__((vector_size(kLanes * sizeof(int16_t))));
  if constexpr (kSigned) {
    vsb raw;
    std::memcpy(&raw, p, sizeof(raw));
    const vsh w = __builtin_convertvector(raw, vsh);
    std::memcpy(&h, &w, sizeof(h));
  } else {
    vb raw;
    std::memcpy(&raw, p, sizeof(raw));
    h = __builtin_convertvector(raw, vh);
  }
#endif
  return h;
}
// float8 e5m2 is the upper byte of a half (same exponent bias): exact, inf / NaN included.
inline vf loadv(const c10::Float8_e5m2* p) {
  return half_bits_to_float(widen_bytes<false>(p) << 8);
}
// float8 e4m3fn: sign-extended to 16 bits and shifted by 7, the sign lands in the half's sign
// bit and the 7 exponent / mantissa bits under the half's (exponent bias 15 instead of 7; the
// sign's copy in bit 14 is cleared), then times 2^8: exact for normals and subnormals. The NaN
// pattern (0x7f / 0xff) reads as +-480; cache writers saturate, so it is never stored.
inline vf loadv(const c10::Float8_e4m3fn* p) {
  const vh h = (widen_bytes<true>(p) << 7) & 0xBF80;
  return half_bits_to_float(h) * 256.0f;
}

// Store kLanes floats as T, rounded as static_cast<T> rounds a finite float (bf16: to nearest
// even; float16 element by element).
inline void storev(float* p, vf v) { std::memcpy(p, &v, sizeof(v)); }
inline void storev(c10::BFloat16* p, vf v) {
  vu bits;
  std::memcpy(&bits, &v, sizeof(bits));
  const vh h = __builtin_convertvector((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16, vh);
  std::memcpy(p, &h, sizeof(h));
}
inline void storev(c10::Half* p, vf v) {
  for (int i = 0; i < kLanes; ++i) p[i] = static_cast<c10::Half>(v[i]);
}

// v rounded to T and back (identity for float): the reference's intermediate roundings.
inline vf roundv(vf v, const float*) { return v; }
inline vf roundv(vf v, const c10::BFloat16*) {
  vu bits;
  std::memcpy(&bits, &v, sizeof(bits));
  bits = ((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16) << 16;
  std::memcpy(&v, &bits, sizeof(v));
  return v;
}
inline vf roundv(vf v, const c10::Half*) {
  for (int i = 0; i < kLanes; ++i) v[i] = static_cast<float>(static_cast<c10::Half>(v[i]));
  return v;
}

// floor of each lane: one rounding instruction on x86 (AVX-512 / AVX2), a lane loop elsewhere.
inline vf floorv(vf v) {
#if defined(__AVX512F__)
  __m512 m;
  std::memcpy(&m, &v, sizeof(v));
  m = _mm512_roundscale_ps(m, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  std::memcpy(&v, &m, sizeof(v));
#elif defined(__AVX2__)
  __m256 m;
  std::memcpy(&m, &v, sizeof(v));
  m = _mm256_floor_ps(m);
  std::memcpy(&v, &m, sizeof(v));
#else
  for (int i = 0; i < kLanes; ++i) v[i] = std::floor(v[i]);
#endif
  return v;
}

// exp(x), x clamped to [-87, 88] (so never 0 or inf): 2^n * poly(r), n = floor(x log2e + 0.5),
// r = x - n ln2 (two-part ln2), a degree-6 Taylor polynomial on |r| <= ln2 / 2 (relative error
// ~2e-7, a few ulp against libm).
inline vf vexp(vf x) {
  const vf lo = vf{} - 87.0f, hi = vf{} + 88.0f;
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
  const vf nf = floorv(x * 1.44269504088896341f + 0.5f);
  const vi n = __builtin_convertvector(nf, vi);          // exact: nf is an integer
  const vf r = (x - nf * 0.693359375f) - nf * -2.12194440e-4f;
  vf p = r * (1.0f / 720) + (1.0f / 120);
  p = p * r + (1.0f / 24);
  p = p * r + (1.0f / 6);
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const vi bits = (n + 127) << 23;
  vf scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

// x [M, K] as fp32 (xf, M * K) and the sum of each row over each group of group_size inputs
// (xs, M * (K / group_size)), summed in input order.
template <typename T>
inline void rows_as_float_with_group_sums(const T* xp, int64_t M, int64_t K, int64_t group_size,
                                          std::vector<float>& xf, std::vector<float>& xs) {
  const int64_t G = K / group_size;
  xf.resize(M * K);
  xs.assign(M * G, 0.0f);
  for (int64_t i = 0; i < M * K; ++i) xf[i] = static_cast<float>(xp[i]);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t g = 0; g < G; ++g) {
      float s = 0.0f;
      for (int64_t k = g * group_size; k < (g + 1) * group_size; ++k) s += xf[m * K + k];
      xs[m * G + g] = s;
    }
}

}  // namespace cpu_vec
