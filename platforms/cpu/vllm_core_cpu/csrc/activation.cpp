// silu_and_mul for the CPU plugin: y = T(T(silu(gate)) * up) with [gate | up] the two halves
// of the last dimension, the roundings of the reference (TorchLayerOps.silu_and_mul), silu in
// fp32 (exp by cpu_vec::vexp, kLanes at a time: a few ulp from torch's vectorised exp, the same
// for every row); one call instead of chunk + silu + mul. Rows split over ATen's threads from
// 64 on.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>

#include "cpu_vec.h"
#include "kernels.h"

namespace {

template <typename T>
void silu_mul_rows(const T* x, T* y, int64_t rows, int64_t d) {
  using namespace cpu_vec;
  at::parallel_for(0, rows, 64, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const T* gate = x + r * 2 * d;
      const T* up = gate + d;
      T* out = y + r * d;
      int64_t i = 0;
      for (; i + kLanes <= d; i += kLanes) {            // silu through the vector exp
        const vf g = loadv(gate + i);
        const vf act = roundv(g / (1.0f + vexp(vf{} - g)), gate);
        storev(out + i, act * loadv(up + i));
      }
      for (; i < d; ++i) {
        const float g = static_cast<float>(gate[i]);
        const T act = static_cast<T>(g / (1.0f + std::exp(-g)));
        out[i] = static_cast<T>(static_cast<float>(act) * static_cast<float>(up[i]));
      }
    }
  });
}

}  // namespace

namespace vllm_core_cpu {

at::Tensor silu_and_mul(const at::Tensor& x) {
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) % 2 == 0, "silu_and_mul: x [..., 2 * d]");
  auto xc = x.contiguous();
  const int64_t d = x.size(-1) / 2, rows = d > 0 ? xc.numel() / (2 * d) : 0;
  auto sizes = x.sizes().vec();
  sizes.back() = d;
  auto out = at::empty(sizes, x.options());
  switch (x.scalar_type()) {
    case at::kFloat: silu_mul_rows<float>(xc.data_ptr<float>(), out.data_ptr<float>(), rows, d);
      break;
    case at::kBFloat16: silu_mul_rows<c10::BFloat16>(xc.data_ptr<c10::BFloat16>(),
                                                     out.data_ptr<c10::BFloat16>(), rows, d);
      break;
    case at::kHalf: silu_mul_rows<c10::Half>(xc.data_ptr<c10::Half>(),
                                             out.data_ptr<c10::Half>(), rows, d);
      break;
    default: TORCH_CHECK(false, "silu_and_mul: unsupported dtype ", x.scalar_type());
  }
  return out;
}

}  // namespace vllm_core_cpu

TORCH_LIBRARY_FRAGMENT(vllm_core_cpu, m) { m.def("silu_and_mul(Tensor x) -> Tensor"); }

TORCH_LIBRARY_IMPL(vllm_core_cpu, CPU, m) { m.impl("silu_and_mul", &vllm_core_cpu::silu_and_mul); }
