// The decoder layer stack of a Llama-family model with WNA16 (int4 / int8 weight-only) or
// W8A8 INT8 (weights packed at load, int8_vnni.h) projections as ONE call per step (torch.classes.vllm_core_cpu.DecodeStack), for the CPU
// plugin's decode steps (vllm_core_cpu/decode_stack.py builds it, decides when it applies and
// falls back otherwise).
//
// Why: at batch 1 a 135M model's kernels take ~15 ms of a step and the Python around them (30
// layers x ~15 module calls and op dispatches) several more. This class holds the layers'
// tensors (references to the model's parameters and the KV cache, nothing copied) and runs,
// per layer, exactly the kernel sequence of the unfused path (vllm_core/model_executor/models/
// decoder.py with CpuLayerOps and the cpu_paged attention backend):
//
//   layer 0:  residual = hidden; hidden = rms_norm(hidden)
//   later:    hidden, residual = fused_add_rms_norm(hidden, residual)
//   qkv = linear(hidden); q, k, v = views of its column ranges
//         (linear: wna16_linear, or int8_linear_packed for W8A8 INT8 layers)
//   attn = paged_attention_rotary(q, k, v, caches, ...)   (rotary, KV write, attention)
//   hidden, residual = fused_add_rms_norm(linear(attn, o_proj), residual)
//   hidden = linear(silu_and_mul(linear(hidden, gate_up)), down)
//   end:      hidden = fused_add_rms_norm(hidden, residual)[0]        (the final norm)
//
// with the same functions (kernels.h), the same arguments and shapes, so its result is
// bitwise the unfused path's, at any batch size (every kernel is batch invariant per row).
#include <ATen/ATen.h>
#include <torch/custom_class.h>
#include <torch/library.h>

#include <cstdint>
#include <tuple>
#include <vector>

#include "kernels.h"

namespace {

// A projection: WNA16 as wna16_linear takes it, or (``packed`` defined) a W8A8 INT8 weight as
// int8_linear_packed takes it.
struct QLinear {
  at::Tensor qweight, scales, zeros;
  c10::optional<at::Tensor> bias;
  int64_t bits = 0, group_size = 0;
  at::Tensor packed, weight_scale;
  c10::optional<at::Tensor> input_scale;
  int64_t out_features = 0;
  bool allow_amx = true;

  int64_t outputs() const { return packed.defined() ? out_features : qweight.size(1); }

  at::Tensor operator()(const at::Tensor& x, bool int8) const {
    if (packed.defined())
      return vllm_core_cpu::int8_linear_packed(x, packed, out_features, weight_scale,
                                               input_scale, bias, allow_amx);
    return vllm_core_cpu::wna16_linear(x, qweight, scales, zeros, bias, bits, group_size, int8);
  }
};

struct Layer {
  at::Tensor input_norm, post_norm;
  QLinear qkv, o, gate_up, down;
  at::Tensor k_cache, v_cache;
  double scale = 1.0;
  int64_t window = 0;
  double k_scale = 1.0, v_scale = 1.0;   // a float8 cache's scales (ignored otherwise)
};

class DecodeStack : public torch::CustomClassHolder {
 public:
  // Heads and head size of every layer; ``eps`` of every RMS norm; ``int8``: the wna16 kernel's
  // int8-activation path (CpuLayerOps.int8_activations); the rotary table (float32
  // [max_position, rotary_dim]) and the final norm's weight.
  DecodeStack(int64_t num_heads, int64_t num_kv_heads, int64_t head_size, double eps,
              bool int8, at::Tensor cos_sin_cache, at::Tensor final_norm)
      : num_heads_(num_heads), num_kv_heads_(num_kv_heads), head_size_(head_size), eps_(eps),
        int8_(int8), cos_sin_cache_(std::move(cos_sin_cache)),
        final_norm_(std::move(final_norm)) {
    TORCH_CHECK(num_heads > 0 && num_kv_heads > 0 && head_size > 0,
                "DecodeStack: heads and head size must be positive");
  }

  // Append a layer: norms [input, post_attention]; projections in the order qkv, o, gate_up,
  // down (qweights / scales / zeros / biases / bits / group sizes, one entry each); this
  // layer's K and V caches ([blocks, block_size, kv_heads, head_size], the activation dtype or
  // float8); the attention scale, sliding window (0: none) and the caches' k / v scales.
  void add_layer(std::vector<at::Tensor> norms, std::vector<at::Tensor> qweights,
                 std::vector<at::Tensor> scales, std::vector<at::Tensor> zeros,
                 c10::List<c10::optional<at::Tensor>> biases, std::vector<int64_t> bits,
                 std::vector<int64_t> group_sizes, at::Tensor k_cache, at::Tensor v_cache,
                 double scale, int64_t window, double k_scale, double v_scale) {
    TORCH_CHECK(norms.size() == 2, "DecodeStack.add_layer: two norm weights");
    TORCH_CHECK(qweights.size() == 4 && scales.size() == 4 && zeros.size() == 4 &&
                    biases.size() == 4 && bits.size() == 4 && group_sizes.size() == 4,
                "DecodeStack.add_layer: four projections (qkv, o, gate_up, down)");
    Layer layer;
    QLinear* proj[4] = {&layer.qkv, &layer.o, &layer.gate_up, &layer.down};
    for (size_t i = 0; i < 4; ++i) {
      proj[i]->qweight = qweights[i];
      proj[i]->scales = scales[i];
      proj[i]->zeros = zeros[i];
      proj[i]->bias = biases.get(i);
      proj[i]->bits = bits[i];
      proj[i]->group_size = group_sizes[i];
    }
    append(std::move(layer), norms, std::move(k_cache), std::move(v_cache), scale, window,
           k_scale, v_scale);
  }

  // add_layer for W8A8 INT8 projections packed by int8_pack (qkv, o, gate_up, down): the
  // packed words, output features, float32 weight scales, static input scales (None: dynamic
  // per token) and float32 biases, one entry each; ``allow_amx`` as CpuLayerOps.int8_amx.
  void add_layer_int8(std::vector<at::Tensor> norms, std::vector<at::Tensor> packed,
                      std::vector<int64_t> out_features, std::vector<at::Tensor> weight_scales,
                      c10::List<c10::optional<at::Tensor>> input_scales,
                      c10::List<c10::optional<at::Tensor>> biases, bool allow_amx,
                      at::Tensor k_cache, at::Tensor v_cache, double scale, int64_t window,
                      double k_scale, double v_scale) {
    TORCH_CHECK(norms.size() == 2, "DecodeStack.add_layer_int8: two norm weights");
    TORCH_CHECK(packed.size() == 4 && out_features.size() == 4 && weight_scales.size() == 4 &&
                    input_scales.size() == 4 && biases.size() == 4,
                "DecodeStack.add_layer_int8: four projections (qkv, o, gate_up, down)");
    Layer layer;
    QLinear* proj[4] = {&layer.qkv, &layer.o, &layer.gate_up, &layer.down};
    for (size_t i = 0; i < 4; ++i) {
      proj[i]->packed = packed[i];
      proj[i]->out_features = out_features[i];
      proj[i]->weight_scale = weight_scales[i];
      proj[i]->input_scale = input_scales.get(i);
      proj[i]->bias = biases.get(i);
      proj[i]->allow_amx = allow_amx;
    }
    append(std::move(layer), norms, std::move(k_cache), std::move(v_cache), scale, window,
           k_scale, v_scale);
  }

  int64_t num_layers() const { return static_cast<int64_t>(layers_.size()); }

  // The token embedding as a WNA16 vocabulary table (vllm_core/model_executor/layers/
  // quantized_vocab.py: vocabulary rows are the output features, no act order), for
  // forward_ids; ``dtype`` is the embedding's output dtype (the scales' dtype).
  void set_embedding(at::Tensor qweight, at::Tensor scales, at::Tensor zeros, int64_t bits,
                     int64_t group_size) {
    TORCH_CHECK(bits == 4 || bits == 8, "DecodeStack.set_embedding: bits must be 4 or 8");
    TORCH_CHECK(qweight.scalar_type() == at::kInt && qweight.is_contiguous() &&
                    scales.is_contiguous() && zeros.is_contiguous() &&
                    scales.scalar_type() == zeros.scalar_type() &&
                    scales.sizes() == zeros.sizes() && scales.size(1) == qweight.size(1),
                "DecodeStack.set_embedding: qweight int32 [K / P, V], scales / zeros [G, V]");
    TORCH_CHECK(group_size > 0 && qweight.size(0) * (32 / bits) == scales.size(0) * group_size,
                "DecodeStack.set_embedding: group size and shapes disagree");
    embed_ = QLinear{qweight, scales, zeros, c10::nullopt, bits, group_size};
  }

  // forward of the embedding rows of ``ids`` (int64 [T]); needs set_embedding.
  at::Tensor forward_ids(const at::Tensor& ids, const at::Tensor& positions,
                         const at::Tensor& slot_mapping, const at::Tensor& block_table,
                         const at::Tensor& token_request, const at::Tensor& token_position) {
    TORCH_CHECK(embed_.bits != 0, "DecodeStack.forward_ids: no embedding table set");
    return forward(embed_rows(ids), positions, slot_mapping, block_table, token_request,
                   token_position);
  }

  // hidden [T, H] (the embeddings) -> the final norm's output [T, H]. The attention inputs
  // are the cpu_paged backend's metadata (slot per token, block table, request and position of
  // each token) and the tokens' rotary positions.
  at::Tensor forward(const at::Tensor& hidden_in, const at::Tensor& positions,
                     const at::Tensor& slot_mapping, const at::Tensor& block_table,
                     const at::Tensor& token_request, const at::Tensor& token_position) {
    TORCH_CHECK(!layers_.empty(), "DecodeStack.forward: no layers");
    TORCH_CHECK(hidden_in.dim() == 2, "DecodeStack.forward: hidden [tokens, hidden_size]");
    const int64_t T = hidden_in.size(0);
    const int64_t q_out = num_heads_ * head_size_, kv_out = num_kv_heads_ * head_size_;
    at::Tensor hidden = hidden_in, residual;
    bool first = true;
    for (const Layer& L : layers_) {
      if (first) {
        residual = hidden;
        hidden = vllm_core_cpu::rms_norm(hidden, L.input_norm, eps_);
        first = false;
      } else {
        std::tie(hidden, residual) =
            vllm_core_cpu::fused_add_rms_norm(hidden, residual, L.input_norm, eps_);
      }
      const at::Tensor qkv = L.qkv(hidden, int8_);
      const at::Tensor q = qkv.narrow(1, 0, q_out).view({T, num_heads_, head_size_});
      const at::Tensor k = qkv.narrow(1, q_out, kv_out).view({T, num_kv_heads_, head_size_});
      const at::Tensor v =
          qkv.narrow(1, q_out + kv_out, kv_out).view({T, num_kv_heads_, head_size_});
      const at::Tensor attn = vllm_core_cpu::paged_attention_rotary(
          q, k, v, L.k_cache, L.v_cache, slot_mapping, block_table, token_request,
          token_position, positions, cos_sin_cache_, L.scale, L.window, L.k_scale, L.v_scale)
          .view({T, q_out});
      std::tie(hidden, residual) =
          vllm_core_cpu::fused_add_rms_norm(L.o(attn, int8_), residual, L.post_norm, eps_);
      hidden = L.down(vllm_core_cpu::silu_and_mul(L.gate_up(hidden, int8_)), int8_);
    }
    return std::get<0>(vllm_core_cpu::fused_add_rms_norm(hidden, residual, final_norm_, eps_));
  }

 private:
  // The norms, caches and attention settings of a layer whose projections are set; checks the
  // qkv projection's width.
  void append(Layer layer, const std::vector<at::Tensor>& norms, at::Tensor k_cache,
              at::Tensor v_cache, double scale, int64_t window, double k_scale,
              double v_scale) {
    layer.input_norm = norms[0];
    layer.post_norm = norms[1];
    const int64_t q_out = num_heads_ * head_size_, kv_out = num_kv_heads_ * head_size_;
    TORCH_CHECK(layer.qkv.outputs() == q_out + 2 * kv_out, "DecodeStack: qkv has ",
                layer.qkv.outputs(), " outputs, expected ", q_out + 2 * kv_out);
    layer.k_cache = std::move(k_cache);
    layer.v_cache = std::move(v_cache);
    layer.scale = scale;
    layer.window = window;
    layer.k_scale = k_scale;
    layer.v_scale = v_scale;
    layers_.push_back(std::move(layer));
  }

  // Rows ``ids`` of the de-quantized table, as quantized_vocab.wna16_rows computes them:
  // (float(q) - z) * s in fp32, then cast to the table's dtype.
  at::Tensor embed_rows(const at::Tensor& ids) const {
    TORCH_CHECK(ids.dim() == 1 && ids.scalar_type() == at::kLong,
                "DecodeStack.forward_ids: ids int64 [T]");
    const at::Tensor& s = embed_.scales;
    const int64_t P = 32 / embed_.bits, V = embed_.qweight.size(1);
    const int64_t K = embed_.qweight.size(0) * P, gs = embed_.group_size;
    const int32_t mask = (1 << embed_.bits) - 1;
    auto idc = ids.contiguous();
    const int64_t* id = idc.data_ptr<int64_t>();
    auto out = at::empty({ids.size(0), K}, s.options());
    const int32_t* qw = embed_.qweight.data_ptr<int32_t>();
    auto rows = [&](auto tag) {
      using T = decltype(tag);
      const T* sp = s.data_ptr<T>();
      const T* zp = embed_.zeros.data_ptr<T>();
      T* o = out.data_ptr<T>();
      for (int64_t t = 0; t < ids.size(0); ++t) {
        const int64_t v = id[t];
        TORCH_CHECK(v >= 0 && v < V, "DecodeStack.forward_ids: token id ", v,
                    " outside the vocabulary (", V, ")");
        for (int64_t k = 0; k < K; ++k) {
          const int32_t q = (qw[(k / P) * V + v] >> (embed_.bits * (k % P))) & mask;
          const int64_t g = k / gs;
          const float z = static_cast<float>(zp[g * V + v]);
          const float sc = static_cast<float>(sp[g * V + v]);
          o[t * K + k] = static_cast<T>((static_cast<float>(q) - z) * sc);
        }
      }
    };
    switch (s.scalar_type()) {
      case at::kFloat: rows(float{}); break;
      case at::kBFloat16: rows(c10::BFloat16{}); break;
      case at::kHalf: rows(c10::Half{}); break;
      default: TORCH_CHECK(false, "DecodeStack: unsupported embedding dtype ", s.scalar_type());
    }
    return out;
  }

  QLinear embed_;
  int64_t num_heads_, num_kv_heads_, head_size_;
  double eps_;
  bool int8_;
  at::Tensor cos_sin_cache_, final_norm_;
  std::vector<Layer> layers_;
};

}  // namespace

TORCH_LIBRARY_FRAGMENT(vllm_core_cpu, m) {
  m.class_<DecodeStack>("DecodeStack")
      .def(torch::init<int64_t, int64_t, int64_t, double, bool, at::Tensor, at::Tensor>())
      .def("add_layer", &DecodeStack::add_layer)
      .def("add_layer_int8", &DecodeStack::add_layer_int8)
      .def("num_layers", &DecodeStack::num_layers)
      .def("set_embedding", &DecodeStack::set_embedding)
      .def("forward_ids", &DecodeStack::forward_ids)
      .def("forward", &DecodeStack::forward);
}
