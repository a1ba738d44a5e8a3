// RMS norm (and the residual add before it) for the CPU plugin, one call per norm instead of
// the half dozen torch ops of the reference (vllm_core/model_executor/layers/ops.py):
//   rms_norm(x, w, eps)            = T(T(x * rsqrt(mean(x^2) + eps)) * w)   (fp32 inside)
//   fused_add_rms_norm(x, r, w, eps) = (rms_norm(T(x + r), w, eps), T(x + r))
// with the same roundings to the activation dtype T as the reference; only the order of the
// mean's summation differs (lanes of 8, then a fixed tree), so a row's result does not depend
// on the other rows (batch invariant). Rows are split over ATen's intra-op threads from 64 on.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <tuple>

#include "cpu_vec.h"
#include "kernels.h"

namespace {

typedef float v8 __attribute__((vector_size(8 * sizeof(float))));

// lanes[j] += v[i]^2 for the kLanes values of v, i = j, j + 8, ...: the scalar loop's order.
inline void add_squares(v8& lanes, cpu_vec::vf v) {
  const cpu_vec::vf sq = v * v;
  for (int64_t h = 0; h < cpu_vec::kLanes; h += 8) {
    v8 part;
    std::memcpy(&part, reinterpret_cast<const float*>(&sq) + h, sizeof(part));
    lanes += part;
  }
}

template <typename T>
void norm_rows(const T* x, const T* res_in, T* res_out, const T* w, T* out, int64_t rows,
               int64_t d, float eps) {
  using namespace cpu_vec;
  at::parallel_for(0, rows, 64, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const T* xr = x + r * d;
      T* orow = out + r * d;
      T* rr = res_out != nullptr ? res_out + r * d : nullptr;
      v8 lanes = {};
      int64_t i = 0;
      for (; i + kLanes <= d; i += kLanes) {        // kLanes at a time, the same roundings
        vf v = loadv(xr + i);
        if (rr != nullptr) {
          v = roundv(v + loadv(res_in + r * d + i), xr);
          storev(rr + i, v);
        }
        add_squares(lanes, v);
      }
      for (; i < d; ++i) {
        float v = static_cast<float>(xr[i]);
        if (rr != nullptr) {                       // residual = T(x + residual)
          const T sum = static_cast<T>(v + static_cast<float>(res_in[r * d + i]));
          rr[i] = sum;
          v = static_cast<float>(sum);
        }
        lanes[i & 7] += v * v;
      }
      const float ss = ((lanes[0] + lanes[4]) + (lanes[2] + lanes[6])) +
                       ((lanes[1] + lanes[5]) + (lanes[3] + lanes[7]));
      const float inv = 1.0f / std::sqrt(ss / static_cast<float>(d) + eps);
      const T* src = rr != nullptr ? rr : xr;
      i = 0;
      for (; i + kLanes <= d; i += kLanes)
        storev(orow + i, roundv(loadv(src + i) * inv, src) * loadv(w + i));
      for (; i < d; ++i) {
        const T normed = static_cast<T>(static_cast<float>(src[i]) * inv);
        orow[i] = static_cast<T>(static_cast<float>(normed) * static_cast<float>(w[i]));
      }
    }
  });
}

void check(const at::Tensor& x, const at::Tensor& w) {
  TORCH_CHECK(x.dim() >= 1 && w.dim() == 1 && x.size(-1) == w.size(0),
              "rms_norm: x [..., D] and weight [D]");
  TORCH_CHECK(w.scalar_type() == x.scalar_type(), "rms_norm: weight must have x's dtype");
}

template <typename F>
void dispatch(at::ScalarType t, F&& f) {
  switch (t) {
    case at::kFloat: f(float{}); break;
    case at::kBFloat16: f(c10::BFloat16{}); break;
    case at::kHalf: f(c10::Half{}); break;
    default: TORCH_CHECK(false, "rms_norm: unsupported dtype ", t);
  }
}

}  // namespace

namespace vllm_core_cpu {

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& w, double eps) {
  check(x, w);
  auto xc = x.contiguous();
  auto wc = w.contiguous();
  auto out = at::empty_like(xc);
  const int64_t d = x.size(-1), rows = d > 0 ? xc.numel() / d : 0;
  dispatch(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    norm_rows<T>(xc.data_ptr<T>(), nullptr, nullptr, wc.data_ptr<T>(), out.data_ptr<T>(), rows,
                 d, static_cast<float>(eps));
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> fused_add_rms_norm(const at::Tensor& x,
                                                      const at::Tensor& residual,
                                                      const at::Tensor& w, double eps) {
  check(x, w);
  TORCH_CHECK(residual.sizes() == x.sizes() && residual.scalar_type() == x.scalar_type(),
              "fused_add_rms_norm: residual must match x");
  auto xc = x.contiguous();
  auto rc = residual.contiguous();
  auto wc = w.contiguous();
  auto out = at::empty_like(xc);
  auto res = at::empty_like(xc);
  const int64_t d = x.size(-1), rows = d > 0 ? xc.numel() / d : 0;
  dispatch(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    norm_rows<T>(xc.data_ptr<T>(), rc.data_ptr<T>(), res.data_ptr<T>(), wc.data_ptr<T>(),
                 out.data_ptr<T>(), rows, d, static_cast<float>(eps));
  });
  return {out, res};
}

}  // namespace vllm_core_cpu

TORCH_LIBRARY_FRAGMENT(vllm_core_cpu, m) {
  m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor");
  m.def("fused_add_rms_norm(Tensor x, Tensor residual, Tensor weight, float eps) "
        "-> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(vllm_core_cpu, CPU, m) {
  m.impl("rms_norm", &vllm_core_cpu::rms_norm);
  m.impl("fused_add_rms_norm", &vllm_core_cpu::fused_add_rms_norm);
}
