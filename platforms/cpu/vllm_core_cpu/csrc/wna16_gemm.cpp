// Weight-only int4 / int8 linear for the CPU plugin, reading the core's WNA16Weight layout
// (vllm_core/model_executor/quantization/quantized_weights.py) directly:
//   qweight int32 [K / P, N] (P = 32 / bits values per word, least significant first),
//   scales, zeros [G, N] in the activation dtype, W[n, k] = (q - zeros[g, n]) * scales[g, n],
//   g = k / group_size (no act-order g_idx: the Python side falls back to the reference).
//
// On x86 AVX2 builds both paths are in wna16_avx2.h, in group-major column tiles (a sequential
// weight stream at batch 1): the default fp32 products (linear_float), and with
// int8_activations=True (VLLM_CPU_WNA16_ACTIVATIONS=int8) activations quantized to int8 per
// block of 32 with integer dot products (its header states the contract and the error bound).
// The float kernel below is the portable path (Arm NEON, x86 without AVX2); its contract:
//
// Every batch size takes the same path: the packed words are streamed once per chunk of up to
// 4 rows (a column block's words stay in cache across the chunks of a prefill). Vector lanes run over output columns (one int32 word of qweight holds P inputs of one
// column, and a row of qweight is contiguous over columns); per group the kernel accumulates
// sum_k x[k] * q[k, n] in fp32 and applies the group's scale and zero point once:
//   y[n] += s[g, n] * (sum_k x[k] q[k, n] - z[g, n] * sum_k x[k]).
// Each row's result is computed in the same order whatever the number of rows, so a token's
// result does not depend on its batch, its prefill chunk or prefix-cache hits (batch invariant;
// measured on an AMD EPYC, AVX2: 512 x 576 -> 1536 takes 1.4x an fp32 F.linear of the
// de-quantized weight, 16 rows 0.9x).
//
// Vectors are GCC/Clang vector extensions: 16 lanes where AVX-512F is enabled (the build is
// -march=native), 8 lanes otherwise (AVX2 / FMA; NEON pairs on Arm). Work is split over
// blocks of output columns with ATen's intra-op thread pool (OpenMP).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "cpu_vec.h"
#include "kernels.h"

#if defined(__AVX2__) && defined(__FMA__)
#include "wna16_avx2.h"
#define VLLM_CORE_CPU_WNA16_AVX2 1
#endif

namespace {

using namespace cpu_vec;
constexpr int64_t kL = kLanes;
constexpr int kRowChunk = 4;

inline vi loadi(const int32_t* p) {
  vi v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
template <typename T>
inline void storev(T* p, vf v) {
  for (int i = 0; i < kL; ++i) p[i] = static_cast<T>(v[i]);
}
inline void storev(float* p, vf v) { std::memcpy(p, &v, sizeof(v)); }

// Rows [m0, m0 + MB) x columns [n0, n0 + NB * kL) of y.
// x: fp32 [M, K]; xsum: fp32 [M, G] (sum of x over each group).
template <int BITS, int MB, int NB, typename T>
void block_kernel(const float* x, const float* xsum, const int32_t* qw, const T* scales,
                  const T* zeros, const T* bias, T* out, int64_t K, int64_t N, int64_t G,
                  int64_t words_per_group, int64_t m0, int64_t n0) {
  constexpr int P = 32 / BITS;
  constexpr int32_t kMask = (1 << BITS) - 1;
  vf acc[MB][NB];
  for (int m = 0; m < MB; ++m)
    for (int b = 0; b < NB; ++b) acc[m][b] = vf{} ;
  const float* xr[MB];
  for (int m = 0; m < MB; ++m) xr[m] = x + (m0 + m) * K;
  for (int64_t g = 0; g < G; ++g) {
    vf gacc[MB][NB];
    for (int m = 0; m < MB; ++m)
      for (int b = 0; b < NB; ++b) gacc[m][b] = vf{};
    const int64_t kk0 = g * words_per_group;
    for (int64_t kk = kk0; kk < kk0 + words_per_group; ++kk) {
      const int32_t* row = qw + kk * N + n0;
      vi word[NB];
      for (int b = 0; b < NB; ++b) word[b] = loadi(row + b * kL);
#pragma GCC unroll 8
      for (int j = 0; j < P; ++j) {
        for (int b = 0; b < NB; ++b) {
          const vf q = __builtin_convertvector((word[b] >> (BITS * j)) & kMask, vf);
          for (int m = 0; m < MB; ++m) gacc[m][b] += xr[m][kk * P + j] * q;
        }
      }
    }
    for (int b = 0; b < NB; ++b) {
      const vf s = loadv(scales + g * N + n0 + b * kL);
      const vf z = loadv(zeros + g * N + n0 + b * kL);
      for (int m = 0; m < MB; ++m)
        acc[m][b] += s * (gacc[m][b] - z * xsum[(m0 + m) * G + g]);
    }
  }
  for (int b = 0; b < NB; ++b) {
    vf add = bias != nullptr ? loadv(bias + n0 + b * kL) : vf{};
    for (int m = 0; m < MB; ++m) storev(out + (m0 + m) * N + n0 + b * kL, acc[m][b] + add);
  }
}

template <int BITS, int NB, typename T>
void rows_kernel(const float* x, const float* xsum, const int32_t* qw, const T* scales,
                 const T* zeros, const T* bias, T* out, int64_t M, int64_t K, int64_t N,
                 int64_t G, int64_t wpg, int64_t n0) {
  int64_t m0 = 0;
  for (; m0 + kRowChunk <= M; m0 += kRowChunk)
    block_kernel<BITS, kRowChunk, NB>(x, xsum, qw, scales, zeros, bias, out, K, N, G, wpg, m0,
                                      n0);
  switch (M - m0) {
    case 3: block_kernel<BITS, 3, NB>(x, xsum, qw, scales, zeros, bias, out, K, N, G, wpg, m0,
                                      n0); break;
    case 2: block_kernel<BITS, 2, NB>(x, xsum, qw, scales, zeros, bias, out, K, N, G, wpg, m0,
                                      n0); break;
    case 1: block_kernel<BITS, 1, NB>(x, xsum, qw, scales, zeros, bias, out, K, N, G, wpg, m0,
                                      n0); break;
    default: break;
  }
}

template <int BITS, typename T>
void direct(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scales,
            const at::Tensor& zeros, const c10::optional<at::Tensor>& bias, at::Tensor& out,
            int64_t group_size) {
  const int64_t M = x.size(0), K = x.size(1), N = out.size(1);
  const int64_t G = K / group_size, wpg = group_size / (32 / BITS);
  std::vector<float> xf, xs;
  rows_as_float_with_group_sums(x.data_ptr<T>(), M, K, group_size, xf, xs);
  const int32_t* qw = qweight.data_ptr<int32_t>();
  const T* sp = scales.data_ptr<T>();
  const T* zp = zeros.data_ptr<T>();
  const T* bp = bias.has_value() ? bias->data_ptr<T>() : nullptr;
  T* op = out.data_ptr<T>();
  constexpr int64_t kWide = 2 * kL;
  const int64_t wide_blocks = N / kWide;
  const int64_t narrow = (N - wide_blocks * kWide) / kL;     // 0 or 1 trailing kL block
  at::parallel_for(0, wide_blocks + narrow, 1, [&](int64_t begin, int64_t end) {
    for (int64_t blk = begin; blk < end; ++blk) {
      if (blk < wide_blocks)
        rows_kernel<BITS, 2, T>(xf.data(), xs.data(), qw, sp, zp, bp, op, M, K, N, G, wpg,
                                blk * kWide);
      else
        rows_kernel<BITS, 1, T>(xf.data(), xs.data(), qw, sp, zp, bp, op, M, K, N, G, wpg,
                                wide_blocks * kWide);
    }
  });
}

template <typename T>
at::Tensor run(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scales,
               const at::Tensor& zeros, const c10::optional<at::Tensor>& bias, int64_t bits,
               int64_t group_size, bool int8_activations) {
  const int64_t M = x.size(0), N = qweight.size(1);
  auto out = at::empty({M, N}, x.options());
#if defined(VLLM_CORE_CPU_WNA16_AVX2)
  if (int8_activations) {
    if (bits == 4)
      wna16_avx2::linear<4, T>(x, qweight, scales, zeros, bias, out, group_size);
    else
      wna16_avx2::linear<8, T>(x, qweight, scales, zeros, bias, out, group_size);
    return out;
  }
  if (bits == 4)
    wna16_avx2::linear_float<4, T>(x, qweight, scales, zeros, bias, out, group_size);
  else
    wna16_avx2::linear_float<8, T>(x, qweight, scales, zeros, bias, out, group_size);
  return out;
#else
  TORCH_CHECK(!int8_activations, "wna16_linear: int8 activations need an x86 AVX2 build");
#endif
  if (bits == 4)
    direct<4, T>(x, qweight, scales, zeros, bias, out, group_size);
  else
    direct<8, T>(x, qweight, scales, zeros, bias, out, group_size);
  return out;
}

}  // namespace

namespace vllm_core_cpu {

// y [M, N] = x [M, K] @ W^T (+ bias); x, scales, zeros and bias share one dtype.
at::Tensor wna16_linear(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scales,
                        const at::Tensor& zeros, const c10::optional<at::Tensor>& bias,
                        int64_t bits, int64_t group_size, bool int8_activations) {
  TORCH_CHECK(bits == 4 || bits == 8, "wna16_linear: bits must be 4 or 8");
  TORCH_CHECK(x.dim() == 2 && qweight.dim() == 2, "wna16_linear: x [M, K], qweight [K/P, N]");
  TORCH_CHECK(qweight.scalar_type() == at::kInt, "wna16_linear: qweight must be int32");
  const int64_t K = x.size(1), N = qweight.size(1), P = 32 / bits;
  TORCH_CHECK(qweight.size(0) * P == K, "wna16_linear: qweight has ", qweight.size(0) * P,
              " inputs, x has ", K);
  TORCH_CHECK(group_size > 0 && K % group_size == 0 && group_size % P == 0,
              "wna16_linear: group_size must divide K and be a multiple of ", P);
  TORCH_CHECK(N % kL == 0, "wna16_linear: N must be a multiple of ", kL);
  TORCH_CHECK(scales.scalar_type() == x.scalar_type() && zeros.scalar_type() == x.scalar_type(),
              "wna16_linear: scales and zeros must have the activation dtype");
  TORCH_CHECK(scales.size(0) == K / group_size && scales.size(1) == N &&
                  zeros.sizes() == scales.sizes(),
              "wna16_linear: scales / zeros must be [K / group_size, N]");
  TORCH_CHECK(!bias.has_value() || (bias->scalar_type() == x.scalar_type() &&
                                    bias->numel() == N),
              "wna16_linear: bias must be [N] in the activation dtype");
  auto xc = x.contiguous();
  auto qc = qweight.contiguous();
  auto sc = scales.contiguous();
  auto zc = zeros.contiguous();
  c10::optional<at::Tensor> bc;
  if (bias.has_value()) bc = bias->contiguous();
  switch (x.scalar_type()) {
    case at::kFloat: return run<float>(xc, qc, sc, zc, bc, bits, group_size, int8_activations);
    case at::kBFloat16:
      return run<c10::BFloat16>(xc, qc, sc, zc, bc, bits, group_size, int8_activations);
    case at::kHalf:
      return run<c10::Half>(xc, qc, sc, zc, bc, bits, group_size, int8_activations);
    default: TORCH_CHECK(false, "wna16_linear: unsupported dtype ", x.scalar_type());
  }
}

// True when this build has the int8-activation path (x86 AVX2), which wna16_linear takes when
// asked (int8_activations=True); the float path is always there.
bool wna16_has_int8_activations() {
#if defined(VLLM_CORE_CPU_WNA16_AVX2)
  return true;
#else
  return false;
#endif
}

}  // namespace vllm_core_cpu

TORCH_LIBRARY_FRAGMENT(vllm_core_cpu, m) {
  m.def("wna16_linear(Tensor x, Tensor qweight, Tensor scales, Tensor zeros, Tensor? bias, "
        "int bits, int group_size, bool int8_activations=False) -> Tensor");
  m.def("wna16_has_int8_activations() -> bool", &vllm_core_cpu::wna16_has_int8_activations);
}

TORCH_LIBRARY_IMPL(vllm_core_cpu, CPU, m) { m.impl("wna16_linear", &vllm_core_cpu::wna16_linear); }
