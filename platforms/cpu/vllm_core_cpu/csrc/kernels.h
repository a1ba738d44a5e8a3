// The CPU plugin's kernel entry points, callable from C++ (decode_stack.cpp chains them into one
// call per decode step) as well as through torch.ops.vllm_core_cpu.* (the same functions are
// registered there). Contracts: the comments at each definition.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <tuple>

namespace vllm_core_cpu {

// wna16_gemm.cpp: y [M, N] = x [M, K] @ dequantize(W)^T (+ bias), W in the WNA16Weight layout.
at::Tensor wna16_linear(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scales,
                        const at::Tensor& zeros, const c10::optional<at::Tensor>& bias,
                        int64_t bits, int64_t group_size, bool int8_activations);
bool wna16_has_int8_activations();

// int8_gemm.cpp: y [M, N] = the W8A8 INT8 product of x [M, K] and a weight packed by int8_pack.
at::Tensor int8_linear_packed(const at::Tensor& x, const at::Tensor& packed, int64_t n,
                              const at::Tensor& weight_scale,
                              const c10::optional<at::Tensor>& input_scale,
                              const c10::optional<at::Tensor>& bias, bool allow_amx);

// rms_norm.cpp
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& w, double eps);
std::tuple<at::Tensor, at::Tensor> fused_add_rms_norm(const at::Tensor& x,
                                                      const at::Tensor& residual,
                                                      const at::Tensor& w, double eps);

// activation.cpp
at::Tensor silu_and_mul(const at::Tensor& x);

// paged_attention.cpp
at::Tensor paged_attention(const at::Tensor& query, const at::Tensor& key_cache,
                           const at::Tensor& value_cache, const at::Tensor& block_table,
                           const at::Tensor& token_request, const at::Tensor& token_position,
                           double scale, int64_t window, double k_scale = 1.0,
                           double v_scale = 1.0);
at::Tensor paged_attention_rotary(const at::Tensor& query, const at::Tensor& key,
                                  const at::Tensor& value, at::Tensor key_cache,
                                  at::Tensor value_cache, const at::Tensor& slot_mapping,
                                  const at::Tensor& block_table,
                                  const at::Tensor& token_request,
                                  const at::Tensor& token_position,
                                  const at::Tensor& positions, const at::Tensor& cos_sin_cache,
                                  double scale, int64_t window, double k_scale = 1.0,
                                  double v_scale = 1.0);

}  // namespace vllm_core_cpu
