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
#include <tuple>

#include "kernels.h"

namespace {

template <typename T>
void norm_rows(const T* x, const T* res_in, T* res_out, const T* w, T* out, int64_t rows,
               int64_t d, float eps) {
  at::parallel_for(0, rows, 64, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const T* xr = x + r * d;
      T* orow = out + r * d;
      T* rr = res_out != nullptr ? res_out + r * d : nullptr;
      float lanes[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      for (int64_t i = 0; i < d; ++i) {
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
      for (int64_t i = 0; i < d; ++i) {
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
