// Paged attention for the CPU plugin: every query row attends to its request's keys
// [0, position] (with a sliding window w > 0: [max(0, position - w + 1), position]) read
// straight from the paged KV cache through the block table.
//
// One code path for decodes and prefill chunks, keys visited in order with fp32 accumulation
// and an exact two-pass softmax: a row's result does not depend on the batch, on padding, or on
// whether it is computed as a decode or inside a chunk (what seeded sampling needs).
// Work is split over (token, kv head) pairs with ATen's intra-op thread pool; the query heads
// that share a KV head are processed together so each K/V row is read once for all of them.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "cpu_vec.h"
#include "kernels.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace {

using namespace cpu_vec;

// query-key products (keys x query heads x head size) below which a call stays on one thread
constexpr int64_t kMinParallelWork = 1 << 19;

inline float to_float(float x) { return x; }
inline float to_float(c10::BFloat16 x) {
  uint32_t bits = static_cast<uint32_t>(x.x) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}
inline float to_float(c10::Half x) { return static_cast<float>(x); }

inline float hsum(vf v) {
  // butterfly in a fixed order, one native shuffle and one add per step
#if defined(__AVX512F__)
  const vi s8 = {8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7};
  const vi s4 = {4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11};
  const vi s2 = {2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13};
  const vi s1 = {1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14};
  v = v + __builtin_shuffle(v, s8);
#else
  const vi s4 = {4, 5, 6, 7, 0, 1, 2, 3};
  const vi s2 = {2, 3, 0, 1, 6, 7, 4, 5};
  const vi s1 = {1, 0, 3, 2, 5, 4, 7, 6};
#endif
  v = v + __builtin_shuffle(v, s4);
  v = v + __builtin_shuffle(v, s2);
  v = v + __builtin_shuffle(v, s1);
  return v[0];
}

// scores[j] = exp(scores[j] - m) (cpu_vec vexp) for j < n, in kLanes-wide chunks (the tail
// padded); returns the sum in a fixed order.
inline float exp_and_sum(float* scores, int64_t n, float m) {
  vf sum = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    const vf v = vexp(loadv(scores + j) - m);
    storev(scores + j, v);
    sum += v;
  }
  if (j < n) {
    vf v = {};
    std::memcpy(&v, scores + j, (n - j) * sizeof(float));
    v = vexp(v - m);
    for (int64_t i = n - j; i < kLanes; ++i) v[i] = 0.0f;
    std::memcpy(scores + j, &v, (n - j) * sizeof(float));
    sum += v;
  }
  return hsum(sum);
}

// One (token, kv head) task with compile-time group size G and head size NV * kLanes. Query
// heads are visited one at a time (NV query and NV accumulator vectors stay in registers; the
// keys and values, read G times, stay in cache).
template <typename T, int G, int NV>
inline void attend_fixed(const T* q_row, const T* kc, const T* vc, const int64_t* blocks,
                         int64_t first, int64_t num_keys, int shift, int64_t mask,
                         int64_t row_stride, int64_t head_off, float scale, float* scores,
                         T* out_row) {
  for (int g = 0; g < G; ++g) {
    vf qv[NV];
    for (int i = 0; i < NV; ++i) qv[i] = loadv(q_row + (g * NV + i) * kLanes) * scale;
    float* sg = scores + g * num_keys;
    float m = -std::numeric_limits<float>::infinity();
    for (int64_t j = 0; j < num_keys; ++j) {
      const int64_t key = first + j;
      const T* k = kc + (((blocks[key >> shift] << shift) | (key & mask)) * row_stride) +
                   head_off;
      vf s = qv[0] * loadv(k);
      for (int i = 1; i < NV; ++i) s += qv[i] * loadv(k + i * kLanes);
      const float x = hsum(s);
      sg[j] = x;
      m = x > m ? x : m;
    }
    const float inv = 1.0f / exp_and_sum(sg, num_keys, m);
    vf acc[NV] = {};
    for (int64_t j = 0; j < num_keys; ++j) {
      const int64_t key = first + j;
      const T* v = vc + (((blocks[key >> shift] << shift) | (key & mask)) * row_stride) +
                   head_off;
      const float p = sg[j];
      for (int i = 0; i < NV; ++i) acc[i] += p * loadv(v + i * kLanes);
    }
    for (int i = 0; i < NV; ++i) {
      const vf a = acc[i] * inv;
      T* dst = out_row + (g * NV + i) * kLanes;
      for (int l = 0; l < kLanes; ++l) dst[l] = static_cast<T>(a[l]);
    }
  }
}

template <typename T, int NV>
using AttendFn = void (*)(const T*, const T*, const T*, const int64_t*, int64_t, int64_t, int,
                          int64_t, int64_t, int64_t, float, float*, T*);

template <typename T, int NV>
AttendFn<T, NV> pick_group(int64_t group) {
  switch (group) {
    case 1: return &attend_fixed<T, 1, NV>;
    case 2: return &attend_fixed<T, 2, NV>;
    case 3: return &attend_fixed<T, 3, NV>;
    case 4: return &attend_fixed<T, 4, NV>;
    case 5: return &attend_fixed<T, 5, NV>;
    case 6: return &attend_fixed<T, 6, NV>;
    case 7: return &attend_fixed<T, 7, NV>;
    case 8: return &attend_fixed<T, 8, NV>;
    default: return nullptr;
  }
}

template <typename T, int NV>
void paged_attention_kernel(const at::Tensor& query, const at::Tensor& key_cache,
                            const at::Tensor& value_cache, const at::Tensor& block_table,
                            const at::Tensor& token_request, const at::Tensor& token_position,
                            at::Tensor& out, double scale, int64_t window) {
  const int64_t num_tokens = query.size(0);
  const int64_t num_heads = query.size(1);
  const int64_t head_size = query.size(2);
  const int64_t block_size = key_cache.size(1);
  const int64_t num_kv_heads = key_cache.size(2);
  const int64_t group = num_heads / num_kv_heads;
  const int64_t bt_stride = block_table.stride(0);
  TORCH_CHECK((block_size & (block_size - 1)) == 0, "paged_attention: block size must be a power of two");
  const int shift = __builtin_ctzll(static_cast<unsigned long long>(block_size));
  const int64_t mask = block_size - 1;
  const AttendFn<T, NV> attend = pick_group<T, NV>(group);
  TORCH_CHECK(attend != nullptr, "paged_attention: at most 8 query heads per KV head");
  const T* q = query.data_ptr<T>();
  const T* kc = key_cache.data_ptr<T>();
  const T* vc = value_cache.data_ptr<T>();
  const int64_t* bt = block_table.data_ptr<int64_t>();
  const int64_t* req = token_request.data_ptr<int64_t>();
  const int64_t* pos = token_position.data_ptr<int64_t>();
  T* o = out.data_ptr<T>();
  const int64_t row_stride = num_kv_heads * head_size;
  const float fscale = static_cast<float>(scale);
  // one thread for small calls (a decode at a few hundred keys: waking a second thread costs
  // more than its share), else one (token, kv head) task per grain
  int64_t keys = 0;
  for (int64_t t = 0; t < num_tokens; ++t) keys += pos[t] + 1;
  const int64_t tasks = num_tokens * num_kv_heads;
  const int64_t grain = keys * num_heads * head_size < kMinParallelWork ? tasks : 1;
  at::parallel_for(0, tasks, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> scores;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t t = task / num_kv_heads;
      const int64_t h = task % num_kv_heads;
      // keys [first, pos]: all of them, or the last `window` with a sliding window
      const int64_t first = (window > 0 && pos[t] >= window) ? pos[t] - window + 1 : 0;
      const int64_t num_keys = pos[t] + 1 - first;
      scores.resize(group * num_keys);
      const int64_t row = (t * num_heads + h * group) * head_size;
      attend(q + row, kc, vc, bt + req[t] * bt_stride, first, num_keys, shift, mask,
             row_stride, h * head_size, fscale, scores.data(), o + row);
    }
  });
}

template <typename T>
void dispatch_head_size(const at::Tensor& query, const at::Tensor& key_cache,
                        const at::Tensor& value_cache, const at::Tensor& block_table,
                        const at::Tensor& token_request, const at::Tensor& token_position,
                        at::Tensor& out, double scale, int64_t window) {
  switch (query.size(2)) {
    case 32: return paged_attention_kernel<T, 32 / kLanes>(
        query, key_cache, value_cache, block_table, token_request, token_position, out, scale,
        window);
    case 64: return paged_attention_kernel<T, 64 / kLanes>(
        query, key_cache, value_cache, block_table, token_request, token_position, out, scale,
        window);
    case 128: return paged_attention_kernel<T, 128 / kLanes>(
        query, key_cache, value_cache, block_table, token_request, token_position, out, scale,
        window);
    case 256: return paged_attention_kernel<T, 256 / kLanes>(
        query, key_cache, value_cache, block_table, token_request, token_position, out, scale,
        window);
    default: TORCH_CHECK(false, "paged_attention: head size must be 32, 64, 128 or 256");
  }
}

}  // namespace

namespace vllm_core_cpu {

at::Tensor paged_attention(const at::Tensor& query, const at::Tensor& key_cache,
                           const at::Tensor& value_cache, const at::Tensor& block_table,
                           const at::Tensor& token_request, const at::Tensor& token_position,
                           double scale, int64_t window) {
  TORCH_CHECK(query.is_contiguous() && key_cache.is_contiguous() && value_cache.is_contiguous(),
              "paged_attention: query and caches must be contiguous");
  TORCH_CHECK(block_table.scalar_type() == at::kLong && token_request.scalar_type() == at::kLong
              && token_position.scalar_type() == at::kLong, "paged_attention: int64 indices");
  auto bt = block_table.contiguous();
  auto out = at::empty_like(query);
  switch (query.scalar_type()) {
    case at::kFloat:
      dispatch_head_size<float>(query, key_cache, value_cache, bt, token_request,
                                    token_position, out, scale, window);
      break;
    case at::kBFloat16:
      dispatch_head_size<c10::BFloat16>(query, key_cache, value_cache, bt, token_request,
                                            token_position, out, scale, window);
      break;
    case at::kHalf:
      dispatch_head_size<c10::Half>(query, key_cache, value_cache, bt, token_request,
                                        token_position, out, scale, window);
      break;
    default:
      TORCH_CHECK(false, "paged_attention: unsupported dtype ", query.scalar_type());
  }
  return out;
}

}  // namespace vllm_core_cpu

namespace {

// Neox rotary embedding of one head row in place of `dst` (from `src`): the first rot_dim
// channels as (x1, x2) halves, out1 = x1 cos - x2 sin, out2 = x2 cos + x1 sin, in fp32, rounded
// to T once; channels past rot_dim are copied.
template <typename T>
inline void rotate_row(const T* src, T* dst, const float* cs, int64_t rot_dim,
                       int64_t head_size) {
  const int64_t half = rot_dim / 2;
  const float* c = cs;
  const float* s = cs + half;
  for (int64_t i = 0; i < half; ++i) {
    const float x1 = to_float(src[i]), x2 = to_float(src[half + i]);
    dst[i] = static_cast<T>(x1 * c[i] - x2 * s[i]);
    dst[half + i] = static_cast<T>(x2 * c[i] + x1 * s[i]);
  }
  for (int64_t i = rot_dim; i < head_size; ++i) dst[i] = src[i];
}

template <typename T>
void rotate_and_write(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                      at::Tensor& key_cache, at::Tensor& value_cache,
                      const at::Tensor& slot_mapping, const at::Tensor& positions,
                      const at::Tensor& cos_sin_cache, at::Tensor& q_out) {
  const int64_t T_ = query.size(0), H = query.size(1), D = query.size(2);
  const int64_t Hkv = key.size(1), rot = cos_sin_cache.size(1);
  const int64_t max_pos = cos_sin_cache.size(0);
  const T* q = query.data_ptr<T>();
  const T* k = key.data_ptr<T>();
  const T* v = value.data_ptr<T>();
  T* kc = key_cache.data_ptr<T>();
  T* vc = value_cache.data_ptr<T>();
  T* qo = q_out.data_ptr<T>();
  const int64_t* slots = slot_mapping.data_ptr<int64_t>();
  const int64_t* pos = positions.data_ptr<int64_t>();
  const float* cs = cos_sin_cache.data_ptr<float>();
  const int64_t qs0 = query.stride(0), qs1 = query.stride(1);
  const int64_t ks0 = key.stride(0), ks1 = key.stride(1);
  const int64_t vs0 = value.stride(0), vs1 = value.stride(1);
  const int64_t slot_stride = Hkv * D;
  for (int64_t t = 0; t < T_; ++t)
    TORCH_CHECK(pos[t] >= 0 && pos[t] < max_pos, "paged_attention_rotary: position ", pos[t],
                " outside the rotary cache (", max_pos, ")");
  at::parallel_for(0, T_, 16, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const float* row = cs + pos[t] * rot;
      for (int64_t h = 0; h < H; ++h)
        rotate_row(q + t * qs0 + h * qs1, qo + (t * H + h) * D, row, rot, D);
      T* kdst = kc + slots[t] * slot_stride;
      T* vdst = vc + slots[t] * slot_stride;
      for (int64_t h = 0; h < Hkv; ++h) {
        rotate_row(k + t * ks0 + h * ks1, kdst + h * D, row, rot, D);
        std::memcpy(vdst + h * D, v + t * vs0 + h * vs1, D * sizeof(T));
      }
    }
  });
}

}  // namespace

namespace vllm_core_cpu {

// The neox rotary embedding of query and key at `positions`, key / value written into the
// caches at `slot_mapping`, then paged_attention: one call per layer for what was a dozen
// torch ops. q / k / v may be strided views (of the fused qkv projection) with unit stride in
// the last dimension.
at::Tensor paged_attention_rotary(const at::Tensor& query, const at::Tensor& key,
                                  const at::Tensor& value, at::Tensor key_cache,
                                  at::Tensor value_cache, const at::Tensor& slot_mapping,
                                  const at::Tensor& block_table,
                                  const at::Tensor& token_request,
                                  const at::Tensor& token_position,
                                  const at::Tensor& positions, const at::Tensor& cos_sin_cache,
                                  double scale, int64_t window) {
  TORCH_CHECK(query.dim() == 3 && key.dim() == 3 && value.dim() == 3,
              "paged_attention_rotary: q / k / v must be [tokens, heads, head_size]");
  TORCH_CHECK(query.stride(2) == 1 && key.stride(2) == 1 && value.stride(2) == 1,
              "paged_attention_rotary: q / k / v need unit stride in the head dimension");
  TORCH_CHECK(key.scalar_type() == query.scalar_type() &&
                  value.scalar_type() == query.scalar_type() &&
                  key_cache.scalar_type() == query.scalar_type(),
              "paged_attention_rotary: q / k / v and the cache must share one dtype");
  TORCH_CHECK(key_cache.is_contiguous() && value_cache.is_contiguous(),
              "paged_attention_rotary: caches must be contiguous");
  TORCH_CHECK(key_cache.size(2) == key.size(1) && key_cache.size(3) == key.size(2),
              "paged_attention_rotary: cache [blocks, block_size, kv_heads, head_size]");
  TORCH_CHECK(slot_mapping.scalar_type() == at::kLong && positions.scalar_type() == at::kLong,
              "paged_attention_rotary: int64 slots and positions");
  TORCH_CHECK(cos_sin_cache.scalar_type() == at::kFloat && cos_sin_cache.is_contiguous() &&
                  cos_sin_cache.size(1) % 2 == 0 && cos_sin_cache.size(1) <= query.size(2),
              "paged_attention_rotary: cos_sin_cache float32 [max_position, rotary_dim]");
  TORCH_CHECK(slot_mapping.numel() == query.size(0) && positions.numel() == query.size(0),
              "paged_attention_rotary: one slot and one position per token");
  auto sm = slot_mapping.contiguous();
  auto ps = positions.contiguous();
  auto q_rot = at::empty(query.sizes(), query.options());
  switch (query.scalar_type()) {
    case at::kFloat:
      rotate_and_write<float>(query, key, value, key_cache, value_cache, sm, ps,
                              cos_sin_cache, q_rot);
      break;
    case at::kBFloat16:
      rotate_and_write<c10::BFloat16>(query, key, value, key_cache, value_cache, sm, ps,
                                      cos_sin_cache, q_rot);
      break;
    case at::kHalf:
      rotate_and_write<c10::Half>(query, key, value, key_cache, value_cache, sm, ps,
                                  cos_sin_cache, q_rot);
      break;
    default:
      TORCH_CHECK(false, "paged_attention_rotary: unsupported dtype ", query.scalar_type());
  }
  return paged_attention(q_rot, key_cache, value_cache, block_table, token_request,
                         token_position, scale, window);
}

}  // namespace vllm_core_cpu

TORCH_LIBRARY(vllm_core_cpu, m) {
  m.def("paged_attention(Tensor query, Tensor key_cache, Tensor value_cache, Tensor block_table, "
        "Tensor token_request, Tensor token_position, float scale, int window=0) -> Tensor");
  m.def("paged_attention_rotary(Tensor query, Tensor key, Tensor value, Tensor(a!) key_cache, "
        "Tensor(b!) value_cache, Tensor slot_mapping, Tensor block_table, Tensor token_request, "
        "Tensor token_position, Tensor positions, Tensor cos_sin_cache, float scale, "
        "int window=0) -> Tensor");
}

TORCH_LIBRARY_IMPL(vllm_core_cpu, CPU, m) {
  m.impl("paged_attention", &vllm_core_cpu::paged_attention);
  m.impl("paged_attention_rotary", &vllm_core_cpu::paged_attention_rotary);
}
