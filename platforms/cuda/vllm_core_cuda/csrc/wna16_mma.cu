// W4A16 decode GEMV on the tensor cores (`torch.ops.vllm_core_cuda.wna16_mma_gemv`).
//
// Contract: y[M, N] = x[M, K] @ W.T (+ bias) for 1 <= M <= 8 rows of float16 / bfloat16
// activations, W[n, k] = (q[k, n] - z[g, n]) * s[g, n] with g = k / group_size and q the 4-bit
// field `k % 8` (least significant first) of the GPTQ word qweight[k / 8, n] (the core's
// `WNA16Weight` without `g_idx`). K % 128 == 0, N % 32 == 0, group_size % 128 == 0 dividing K.
// Accumulation in float32 (exact up to float32 reassociation); the result rounded once.
//
// Weights in one of two layouts (the same 16-byte vectors, only their order differs):
// - GPTQ, as loaded (`zeros` given): qweight int32 [K / 8, N], scales / zeros [K / gs, N];
// - packed once at load (`zeros` None, `wna16_mma.py` `pack`): qweight int32 [N / 32, K / 32,
//   32, 4], the vector lane l = 4g + t of a warp loads at block b, step kk being the GPTQ words
//   (kw = 4 kk + t, n = 32 b + 4 g .. + 3), so one warp load is 512 contiguous bytes and a
//   block streams one contiguous range; `scales` then holds int32 [N / 32, G, 8, 4], per (b,
//   group, g) the halves (s, s, s, s, z, z, z, z) of outputs 32 b + 4 g .. + 3.
//
// How (per warp, one m16n8k16 `mma.sync` per 256 weights, the weights as the 16-row A operand
// and the activation rows as the 8 B columns: "swap AB"):
// - Lane (g = lane / 4, t = lane % 4) loads one 16-byte vector per 32 inputs: the words of
//   outputs n0 + 4g .. + 3 at word row kw = k0 / 8 + t (eight inputs each); a warp covers 32
//   outputs x 32 inputs a load.
// - One LOP3 (and, for three of the four, a shift) turns nibbles i and i + 4 of a word into the
//   half pair (OFF + q_i, OFF + q_{i+4}): `(w >> 4i) & 0x000F000F | MAGIC` with MAGIC the
//   halves of OFF = 128 (bf16 0x4300) or 1024 (fp16 0x6400), exact floats; so a register of
//   nibbles becomes an A-fragment register with no layout conversion. Which input a fragment
//   column stands for is free (the MMA sums over them): columns 2t, 2t + 1 are inputs 8kw + 2h,
//   8kw + 2h + 4 and columns 2t + 8, 2t + 9 inputs 8kw + 2h + 1, 8kw + 2h + 5 (h = 0, 1), and
//   the activations are permuted to match (one PRMT per B register, shared by the warp's 32
//   outputs). Fragment rows g and g + 8 are two of the lane's four outputs (words 0 / 1 for
//   the first MMA, 2 / 3 for the second). Per 32-bit word of weights: 3 SHF + 4 LOP3 + 1 MMA.
// - Factored group scale: per 128 inputs (a unit) the MMAs accumulate sum (OFF + q) x into a
//   fresh float32 fragment, an MMA with an all-ones A gives sum x per activation row, and
//   y += s * (sum (OFF + q) x - (OFF + z) * sum x).
// - A block's `warps` warps serve the same 32 outputs and split K by units (warp w takes units
//   w, w + warps, ...; the next unit's weights load while the current one is computed); their
//   partial sums meet in shared memory in a fixed order: deterministic, no atomics and no
//   workspace, so CUDA-graph safe; a row's result does not depend on the other rows.
// - With `pdl` the launch allows programmatic dependent launch (sm_90): the block issues its
//   first weight and scale loads, then waits (`griddepcontrol.wait`) for the kernel before it
//   (which wrote x) to finish before it reads x.

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <torch/library.h>

#include <cstdint>
#include <optional>

namespace vllm_core_cuda {
namespace {

constexpr int kUnit = 128;        // inputs per unit: 4 steps of 32 (one 16-byte load each)
constexpr int kMaxRows = 8;       // the MMA's B columns

template <bool kBf16>
struct Half;

template <>
struct Half<true> {
  static constexpr uint32_t kMagic = 0x43004300u;   // bf16 128.0 twice: | q gives 128 + q
  static constexpr float kOffset = 128.0f;
  static constexpr uint32_t kOnes = 0x3F803F80u;    // bf16 1.0 twice
  __device__ __forceinline__ static float lo(uint32_t w) { return __uint_as_float(w << 16); }
  __device__ __forceinline__ static float hi(uint32_t w) {
    return __uint_as_float(w & 0xFFFF0000u);
  }
  __device__ __forceinline__ static float one(uint16_t b) {
    return __uint_as_float(static_cast<uint32_t>(b) << 16);
  }
  __device__ __forceinline__ static uint16_t round(float v) {
    return __bfloat16_as_ushort(__float2bfloat16_rn(v));
  }
  __device__ __forceinline__ static void mma(float (&d)[4], uint32_t a0, uint32_t a1,
                                             uint32_t a2, uint32_t a3, uint32_t b0,
                                             uint32_t b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  }
};

template <>
struct Half<false> {
  static constexpr uint32_t kMagic = 0x64006400u;   // fp16 1024.0 twice: | q gives 1024 + q
  static constexpr float kOffset = 1024.0f;
  static constexpr uint32_t kOnes = 0x3C003C00u;    // fp16 1.0 twice
  __device__ __forceinline__ static float lo(uint32_t w) {
    return __half2float(__ushort_as_half(static_cast<unsigned short>(w & 0xFFFFu)));
  }
  __device__ __forceinline__ static float hi(uint32_t w) {
    return __half2float(__ushort_as_half(static_cast<unsigned short>(w >> 16)));
  }
  __device__ __forceinline__ static float one(uint16_t b) {
    return __half2float(__ushort_as_half(b));
  }
  __device__ __forceinline__ static uint16_t round(float v) {
    return __half_as_ushort(__float2half_rn(v));
  }
  __device__ __forceinline__ static void mma(float (&d)[4], uint32_t a0, uint32_t a1,
                                             uint32_t a2, uint32_t a3, uint32_t b0,
                                             uint32_t b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  }
};

// Streamed once: no L1 allocation (the activations, re-read by every block, keep the L1).
__device__ __forceinline__ uint4 load_stream(const uint4* p) {
  uint4 v;
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];\n"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
      : "l"(p));
  return v;
}

// Waits for the grid this one depends on under programmatic dependent launch (no-op without).
__device__ __forceinline__ void wait_prior_grid() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}

// The half pair (OFF + nibble i, OFF + nibble i + 4) of word w: one LOP3 (the compiler splits
// the plain C `& |` into two).
template <bool kBf16, int kI>
__device__ __forceinline__ uint32_t nibble_pair(uint32_t w) {
  uint32_t r;
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;\n"     // (a & b) | c
      : "=r"(r)
      : "r"(w >> (4 * kI)), "n"(0x000F000F), "n"(Half<kBf16>::kMagic));
  return r;
}

// MMA half h of one step (32 inputs): B registers from the lane's 8 activations x0..x7 (the
// 4 words of `xv`): (x[2h], x[2h + 4]) and (x[2h + 1], x[2h + 5]).
template <bool kBf16, int kH>
__device__ __forceinline__ void step_half(const uint4& xv, const uint4& w,
                                          float (&tmp)[2][4], float (&xsum)[4]) {
  const uint32_t lo = kH ? xv.y : xv.x;     // (x[2h], x[2h + 1])
  const uint32_t hi = kH ? xv.w : xv.z;     // (x[2h + 4], x[2h + 5])
  const uint32_t b0 = __byte_perm(lo, hi, 0x5410);
  const uint32_t b1 = __byte_perm(lo, hi, 0x7632);
  constexpr uint32_t kOnes = Half<kBf16>::kOnes;
  Half<kBf16>::mma(xsum, kOnes, kOnes, kOnes, kOnes, b0, b1);
  Half<kBf16>::mma(tmp[0], nibble_pair<kBf16, 2 * kH>(w.x), nibble_pair<kBf16, 2 * kH>(w.y),
                   nibble_pair<kBf16, 2 * kH + 1>(w.x), nibble_pair<kBf16, 2 * kH + 1>(w.y), b0,
                   b1);
  Half<kBf16>::mma(tmp[1], nibble_pair<kBf16, 2 * kH>(w.z), nibble_pair<kBf16, 2 * kH>(w.w),
                   nibble_pair<kBf16, 2 * kH + 1>(w.z), nibble_pair<kBf16, 2 * kH + 1>(w.w), b0,
                   b1);
}

struct Args {
  const uint4* x;          // [M, K] as 16-byte vectors
  const uint4* qweight;    // GPTQ [K / 8, N / 4] or packed [N / 32, K / 32, 32] vectors
  const void* scales;      // GPTQ: uint2 [G, N / 4]; packed: uint4 [N / 32, G, 8]
  const uint2* zeros;      // GPTQ: uint2 [G, N / 4]; packed: unused
  const uint16_t* bias;    // [N] or null
  uint16_t* y;             // [M, N]
  int m, n, k, units_per_group;
};

template <bool kBf16, int kWarps, bool kPacked>
__global__ void __launch_bounds__(kWarps * 32, 1) wna16_mma_gemv_kernel(const Args a) {
  using H = Half<kBf16>;
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int g = lane >> 2;
  const int t = lane & 3;
  const int n0 = blockIdx.x * 32;
  const int units = a.k / kUnit;
  const int groups = units / a.units_per_group;
  const size_t n4 = static_cast<size_t>(a.n >> 2);
  // this lane's vector of the warp's first unit, and the step to the next 32 inputs
  const uint4* wp;
  size_t step_stride;
  if constexpr (kPacked) {
    wp = a.qweight + (static_cast<size_t>(blockIdx.x) * (a.k >> 5) + 4 * warp) * 32 + lane;
    step_stride = 32;
  } else {
    wp = a.qweight + static_cast<size_t>(16 * warp + t) * n4 + (n0 >> 2) + g;
    step_stride = 4 * n4;
  }
  const size_t unit_stride = 4 * kWarps * step_stride;
  // the group of unit u is u / units_per_group, advanced without a division per unit
  int grp = warp / a.units_per_group, grp_rem = warp % a.units_per_group;
  const int grp_step = kWarps / a.units_per_group, rem_step = kWarps % a.units_per_group;
  // the scales (and zeros) of this lane's 4 outputs in group grp
  auto load_scales = [&](uint4& sz) {
    if constexpr (kPacked) {
      sz = __ldg(static_cast<const uint4*>(a.scales) +
                 (static_cast<size_t>(blockIdx.x) * groups + grp) * 8 + g);
    } else {
      const size_t at = grp * n4 + (n0 >> 2) + g;
      const uint2 s = __ldg(static_cast<const uint2*>(a.scales) + at);
      const uint2 z = __ldg(a.zeros + at);
      sz = make_uint4(s.x, s.y, z.x, z.y);
    }
  };

  float acc[2][4];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int c = 0; c < 4; ++c) acc[i][c] = 0.0f;

  uint4 buf0[4], buf1[4];
  uint4 sz0;
  if (warp < units) {
#pragma unroll
    for (int s = 0; s < 4; ++s) buf0[s] = load_stream(wp + s * step_stride);
    load_scales(sz0);
  }
  wait_prior_grid();                      // x is the previous kernel's output
  // the activation row this lane puts in B column g (rows past m repeat the last: unused)
  const uint4* xp = a.x + static_cast<size_t>(min(g, a.m - 1)) * (a.k >> 3) + 16 * warp + t;

  // one unit: fold 128 inputs into acc, with the next unit's weights loading into `ahead`
  // meanwhile (two buffers, alternating: no register copies)
  auto unit = [&](int u, const uint4 (&cur)[4], uint4 (&ahead)[4], const uint4& sz) {
    wp += unit_stride;
    if (u + kWarps < units) {
#pragma unroll
      for (int s = 0; s < 4; ++s) ahead[s] = load_stream(wp + s * step_stride);
    }
    uint4 xv[4];
#pragma unroll
    for (int s = 0; s < 4; ++s) xv[s] = __ldg(xp + 4 * s);
    xp += 16 * kWarps;

    float tmp[2][4];
    float xsum[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int c = 0; c < 4; ++c) tmp[i][c] = 0.0f;
#pragma unroll
    for (int s = 0; s < 4; ++s) {
      step_half<kBf16, 0>(xv[s], cur[s], tmp, xsum);
      step_half<kBf16, 1>(xv[s], cur[s], tmp, xsum);
    }
    // fold: acc += s * (tmp - (OFF + z) * sum x); fragment rows g / g + 8 are the words
    // 2i / 2i + 1 (halves lo / hi of the scale word i), columns 2t / 2t + 1 (xsum[0] / [1])
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const uint32_t sw = i ? sz.y : sz.x;
      const uint32_t zw = i ? sz.w : sz.z;
      const float s_a = H::lo(sw), s_b = H::hi(sw);
      const float z_a = H::lo(zw) + H::kOffset, z_b = H::hi(zw) + H::kOffset;
      acc[i][0] = fmaf(s_a, fmaf(-z_a, xsum[0], tmp[i][0]), acc[i][0]);
      acc[i][1] = fmaf(s_a, fmaf(-z_a, xsum[1], tmp[i][1]), acc[i][1]);
      acc[i][2] = fmaf(s_b, fmaf(-z_b, xsum[0], tmp[i][2]), acc[i][2]);
      acc[i][3] = fmaf(s_b, fmaf(-z_b, xsum[1], tmp[i][3]), acc[i][3]);
    }
  };
  // the next unit's scales, loaded with its weights
  auto next_scales = [&](int u, uint4& sz) {
    grp += grp_step;
    grp_rem += rem_step;
    if (grp_rem >= a.units_per_group) {
      grp_rem -= a.units_per_group;
      ++grp;
    }
    if (u + kWarps < units) load_scales(sz);
  };
  uint4 sz1;
  for (int u = warp; u < units; u += 2 * kWarps) {
    next_scales(u, sz1);
    unit(u, buf0, buf1, sz0);
    if (u + kWarps >= units) break;
    next_scales(u + kWarps, sz0);
    unit(u + kWarps, buf1, buf0, sz1);
  }

  // the warps' partial sums, value-major so that both the stores and the loads are
  // consecutive in the lane
  __shared__ float partial[kWarps][8][32];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int c = 0; c < 4; ++c) partial[warp][i * 4 + c][lane] = acc[i][c];
  __syncthreads();
  for (int idx = threadIdx.x; idx < 8 * 32; idx += kWarps * 32) {
    const int e = idx >> 5, ln = idx & 31;
    float sum = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) sum += partial[w][e][ln];
    const int i = e >> 2, c = e & 3;
    const int row = 2 * (ln & 3) + (c & 1);
    const int out = n0 + 4 * (ln >> 2) + 2 * i + (c >> 1);
    if (row < a.m) {
      if (a.bias != nullptr) sum += H::one(a.bias[out]);
      a.y[static_cast<size_t>(row) * a.n + out] = H::round(sum);
    }
  }
}

template <bool kBf16, int kWarps, bool kPacked>
void launch(const Args& a, cudaStream_t stream, bool pdl) {
  auto* kernel = wna16_mma_gemv_kernel<kBf16, kWarps, kPacked>;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(static_cast<unsigned>(a.n / 32));
  cfg.blockDim = dim3(kWarps * 32);
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = pdl ? 1 : 0;
  C10_CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, a));
}

template <bool kBf16, bool kPacked>
void launch_warps(int warps, const Args& a, cudaStream_t stream, bool pdl) {
  switch (warps) {
    case 2: launch<kBf16, 2, kPacked>(a, stream, pdl); break;
    case 4: launch<kBf16, 4, kPacked>(a, stream, pdl); break;
    case 8: launch<kBf16, 8, kPacked>(a, stream, pdl); break;
    default: launch<kBf16, 16, kPacked>(a, stream, pdl);
  }
}

bool aligned(const at::Tensor& t, int bytes) {
  return reinterpret_cast<uintptr_t>(t.data_ptr()) % bytes == 0;
}

}  // namespace

// Every check's message is one string literal: formatting a number into it (an ostream
// inside this library) crashed the process on the H200 image (2026-12-02, a segfault in
// ostream::_M_insert<long> resolved in this .so), where a literal is passed through as is.
//
// x [M, K] fp16 / bf16 contiguous; with `zeros` the GPTQ layout (qweight int32 [K / 8, N],
// scales and zeros [K / gs, N] in x's dtype), without it the packed one (qweight int32
// [N / 32, K / 32, 32, 4], scales int32 [N / 32, K / gs, 8, 4]); bias [N] in x's dtype or None;
// warps 2, 4, 8 or 16 a block of 32 outputs; pdl: programmatic dependent launch (sm_90).
at::Tensor wna16_mma_gemv(const at::Tensor& x, const at::Tensor& qweight,
                          const at::Tensor& scales, const std::optional<at::Tensor>& zeros,
                          int64_t n, int64_t group_size, const std::optional<at::Tensor>& bias,
                          int64_t warps, bool pdl) {
  TORCH_CHECK(x.is_cuda() && x.dim() == 2 && x.is_contiguous(), "x: a contiguous CUDA [M, K]");
  const bool bf16 = x.scalar_type() == at::kBFloat16;
  TORCH_CHECK(bf16 || x.scalar_type() == at::kHalf, "x: float16 or bfloat16");
  const int64_t m = x.size(0), k = x.size(1);
  TORCH_CHECK(m >= 1 && m <= kMaxRows, "rows: 1 to 8");
  TORCH_CHECK(warps == 2 || warps == 4 || warps == 8 || warps == 16, "warps: 2, 4, 8 or 16");
  TORCH_CHECK(k % kUnit == 0 && n % 32 == 0 && n > 0, "K % 128 and N % 32 must be 0");
  TORCH_CHECK(group_size % kUnit == 0 && k % group_size == 0,
              "group_size: a multiple of 128 dividing K");
  TORCH_CHECK(n * k / 8 < (int64_t{1} << 31), "weight too large for 32-bit indices");
  const int64_t groups = k / group_size;
  const bool packed = !zeros.has_value();
  TORCH_CHECK(qweight.scalar_type() == at::kInt && qweight.is_contiguous() &&
                  qweight.numel() == n * k / 8 && aligned(qweight, 16),
              "qweight: contiguous 16-byte aligned int32, K * N / 8 of them");
  if (packed) {
    TORCH_CHECK(scales.scalar_type() == at::kInt && scales.is_contiguous() &&
                    scales.numel() == n / 32 * groups * 32 && aligned(scales, 16),
                "packed scales: contiguous 16-byte aligned int32 [N / 32, G, 8, 4]");
  } else {
    TORCH_CHECK(qweight.dim() == 2 && qweight.size(1) == n, "qweight: [K / 8, N]");
    for (const at::Tensor* t : {&scales, &*zeros}) {
      TORCH_CHECK(t->scalar_type() == x.scalar_type() && t->is_contiguous() &&
                      t->dim() == 2 && t->size(0) == groups && t->size(1) == n && aligned(*t, 8),
                  "scales / zeros: contiguous 8-byte aligned [K / group_size, N] in x's dtype");
    }
  }
  if (bias.has_value()) {
    TORCH_CHECK(bias->scalar_type() == x.scalar_type() && bias->is_contiguous() &&
                    bias->numel() == n,
                "bias: contiguous [N] in x's dtype");
  }
  TORCH_CHECK(aligned(x, 16), "x: 16-byte aligned");

  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor y = at::empty({m, n}, x.options());
  Args a;
  a.x = reinterpret_cast<const uint4*>(x.data_ptr());
  a.qweight = reinterpret_cast<const uint4*>(qweight.data_ptr());
  a.scales = scales.data_ptr();
  a.zeros = packed ? nullptr : reinterpret_cast<const uint2*>(zeros->data_ptr());
  a.bias = bias.has_value() ? reinterpret_cast<const uint16_t*>(bias->data_ptr()) : nullptr;
  a.y = reinterpret_cast<uint16_t*>(y.data_ptr());
  a.m = static_cast<int>(m);
  a.n = static_cast<int>(n);
  a.k = static_cast<int>(k);
  a.units_per_group = static_cast<int>(group_size / kUnit);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int w = static_cast<int>(warps);
  if (bf16) {
    packed ? launch_warps<true, true>(w, a, stream, pdl)
           : launch_warps<true, false>(w, a, stream, pdl);
  } else {
    packed ? launch_warps<false, true>(w, a, stream, pdl)
           : launch_warps<false, false>(w, a, stream, pdl);
  }
  return y;
}

// Blocks of `warps` warps (bf16, packed) that fit on one multiprocessor at once.
int64_t wna16_mma_blocks_per_sm(int64_t warps) {
  int blocks = 0;
  const int threads = static_cast<int>(warps) * 32;
  cudaError_t err = cudaErrorInvalidValue;
  switch (warps) {
    case 2: err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(
                &blocks, wna16_mma_gemv_kernel<true, 2, true>, threads, 0); break;
    case 4: err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(
                &blocks, wna16_mma_gemv_kernel<true, 4, true>, threads, 0); break;
    case 8: err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(
                &blocks, wna16_mma_gemv_kernel<true, 8, true>, threads, 0); break;
    case 16: err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(
                 &blocks, wna16_mma_gemv_kernel<true, 16, true>, threads, 0); break;
    default: TORCH_CHECK(false, "warps: 2, 4, 8 or 16");
  }
  C10_CUDA_CHECK(err);
  return blocks;
}

}  // namespace vllm_core_cuda

TORCH_LIBRARY_FRAGMENT(vllm_core_cuda, m) {
  m.def("wna16_mma_gemv(Tensor x, Tensor qweight, Tensor scales, Tensor? zeros, int n, "
        "int group_size, Tensor? bias, int warps, bool pdl) -> Tensor");
  m.def("wna16_mma_blocks_per_sm(int warps) -> int", &vllm_core_cuda::wna16_mma_blocks_per_sm);
}

TORCH_LIBRARY_IMPL(vllm_core_cuda, CUDA, m) {
  m.impl("wna16_mma_gemv", &vllm_core_cuda::wna16_mma_gemv);
}
