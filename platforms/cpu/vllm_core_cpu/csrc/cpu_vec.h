// Native-width float vectors for the CPU kernels, through GCC/Clang vector extensions:
// 16 lanes where AVX-512F is enabled (the build is -march=native), 8 otherwise (AVX2; NEON pairs
// on Arm). Wider-than-native vectors are avoided: their shuffles and lane loops lower to scalar
// code (~10x slower). Also: the fp32 copy of an activation matrix with its per-group sums, which
// the zero-point form of every grouped quantized product needs.
#pragma once

#include <ATen/ATen.h>

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
inline vf loadv(const c10::BFloat16* p) {
  vh raw;
  std::memcpy(&raw, p, sizeof(raw));
  vu wide = __builtin_convertvector(raw, vu) << 16;
  vf v;
  std::memcpy(&v, &wide, sizeof(v));
  return v;
}
inline vf loadv(const c10::Half* p) {
  vf v;
  for (int i = 0; i < kLanes; ++i) v[i] = static_cast<float>(p[i]);
  return v;
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
