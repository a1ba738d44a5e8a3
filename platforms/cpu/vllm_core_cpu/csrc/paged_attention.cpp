// Paged attention for the CPU plugin: every query row attends to its request's keys
// [0, position] (with a sliding window w > 0: [max(0, position - w + 1), position]) read
// straight from the paged KV cache through the block table.
//
// One code path for decodes and prefill chunks, keys visited in order with fp32 accumulation
// and an exact two-pass softmax: a row's result does not depend on the batch, on padding, or on
// whether it is computed as a decode or inside a chunk (what seeded sampling needs).
// Work is split over (token, kv head) pairs with ATen's intra-op thread pool; the query heads
// that share a KV head are processed together so each K/V row is read once for all of them.
//
// The cache holds the activation dtype T, or float8 (e4m3fn / e5m2) with per-tensor scales
// (vllm_core/attention/kv_scales.py): a key k is stored as fp8(clamp(k / k_scale, +-max)) and
// read as stored * k_scale. Reads widen exactly (cpu_vec loadv); k_scale is folded into the
// query's scale and v_scale into the softmax normalisation, so a float8 row costs one byte per
// element and no extra multiply per key. With a cache in T the scales are ignored.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "cpu_vec.h"
#include "kernels.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
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

// The kLanes lane sums of p[0..kLanes) as one vector (lane j: the sum of p[j]'s lanes), by a
// tree of two-source shuffles: each level halves every vector's groups and adds the halves,
// log2(kLanes) levels and kLanes - 1 combines for kLanes keys (hsum costs log2(kLanes) per
// key). Each lane is summed in hsum's order (l + l ^ 8, then ^ 4, ^ 2, ^ 1), so a score is
// bitwise what hsum gives, whatever the other keys of its chunk.
template <int W>
inline vf combine_halves(vf a, vf b) {
  // output lane o: from a (o < kLanes / 2) or b; group (o % half) / (W / 2) of width W,
  // offset (o % half) % (W / 2); the low half-groups plus the high ones
  vi lo, hi;
  constexpr int half = kLanes / 2;
  for (int o = 0; o < kLanes; ++o) {
    const int idx = o % half, lane = (idx / (W / 2)) * W + idx % (W / 2);
    const int src = o < half ? 0 : kLanes;
    lo[o] = src + lane;
    hi[o] = src + lane + W / 2;
  }
  return __builtin_shuffle(a, b, lo) + __builtin_shuffle(a, b, hi);
}

__attribute__((always_inline)) inline vf lane_sums(vf* p) {
  for (int i = 0; i < kLanes / 2; ++i) p[i] = combine_halves<kLanes>(p[2 * i], p[2 * i + 1]);
  for (int i = 0; i < kLanes / 4; ++i) p[i] = combine_halves<kLanes / 2>(p[2 * i], p[2 * i + 1]);
  for (int i = 0; i < kLanes / 8; ++i) p[i] = combine_halves<kLanes / 4>(p[2 * i], p[2 * i + 1]);
#if defined(__AVX512F__)
  p[0] = combine_halves<2>(p[0], p[1]);
#endif
  return p[0];
}

// One (token, kv head) task with compile-time group size G and head size D = NV * kLanes,
// over a cache of element type C, in chunks of kLanes keys: each chunk's K rows are widened
// to float once (kept in L1 for the G query heads), every head's kLanes scores come out of one
// lane_sums; then the exact softmax per head; then the V rows, widened once per chunk, are
// accumulated into every head's output. ``scale`` includes k_scale; ``v_scale`` multiplies
// the normalisation (both 1 for a cache in T). ``scores`` holds G * round_up(num_keys, kLanes).
template <typename T, typename C, int G, int NV>
inline void attend_fixed(const T* q_row, const C* kc, const C* vc, const int64_t* blocks,
                         int64_t first, int64_t num_keys, int shift, int64_t mask,
                         int64_t row_stride, int64_t head_off, float scale, float v_scale,
                         float* scores, T* out_row) {
  constexpr int D = NV * kLanes;
  alignas(64) float qf[G][D];            // scaled queries
  alignas(64) float rows[kLanes][D];     // a chunk's K (then V) rows as float
  alignas(64) float acc[G][D];
  const float* row_ptr[kLanes];
  const int64_t stride = (num_keys + kLanes - 1) / kLanes * kLanes;
  for (int g = 0; g < G; ++g)
    for (int i = 0; i < NV; ++i)
      storev(qf[g] + i * kLanes, loadv(q_row + (g * NV + i) * kLanes) * scale);
  // the chunk's rows of `cache` as float pointers (into the cache when C is float)
  auto widen = [&](const C* cache, int64_t c, int n) {
    for (int j = 0; j < n; ++j) {
      const int64_t key = first + c + j;
      const C* r = cache + (((blocks[key >> shift] << shift) | (key & mask)) * row_stride) +
                   head_off;
      if constexpr (std::is_same_v<C, float>) {
        row_ptr[j] = r;
      } else {
        for (int i = 0; i < NV; ++i) storev(rows[j] + i * kLanes, loadv(r + i * kLanes));
        row_ptr[j] = rows[j];
      }
    }
  };
  for (int64_t c = 0; c < num_keys; c += kLanes) {
    const int n = static_cast<int>(std::min<int64_t>(kLanes, num_keys - c));
    widen(kc, c, n);
    for (int g = 0; g < G; ++g) {
      vf qv[NV];
      for (int i = 0; i < NV; ++i) qv[i] = loadv(qf[g] + i * kLanes);
      vf part[kLanes];
      for (int j = 0; j < kLanes; ++j) {
        if (j >= n) {
          part[j] = vf{};
          continue;
        }
        vf s = qv[0] * loadv(row_ptr[j]);
        for (int i = 1; i < NV; ++i) s += qv[i] * loadv(row_ptr[j] + i * kLanes);
        part[j] = s;
      }
      storev(scores + g * stride + c, lane_sums(part));
    }
  }
  float inv[G];
  for (int g = 0; g < G; ++g) {
    float* sg = scores + g * stride;
    float m = -std::numeric_limits<float>::infinity();
    for (int64_t j = 0; j < num_keys; ++j) m = sg[j] > m ? sg[j] : m;
    inv[g] = v_scale / exp_and_sum(sg, num_keys, m);
    for (int i = 0; i < NV; ++i) storev(acc[g] + i * kLanes, vf{});
  }
  for (int64_t c = 0; c < num_keys; c += kLanes) {
    const int n = static_cast<int>(std::min<int64_t>(kLanes, num_keys - c));
    widen(vc, c, n);
    for (int g = 0; g < G; ++g) {
      const float* sg = scores + g * stride + c;
      vf a[NV];
      for (int i = 0; i < NV; ++i) a[i] = loadv(acc[g] + i * kLanes);
      for (int j = 0; j < n; ++j) {
        const float p = sg[j];
        for (int i = 0; i < NV; ++i) a[i] += p * loadv(row_ptr[j] + i * kLanes);
      }
      for (int i = 0; i < NV; ++i) storev(acc[g] + i * kLanes, a[i]);
    }
  }
  for (int g = 0; g < G; ++g)
    for (int i = 0; i < NV; ++i) {
      const vf a = loadv(acc[g] + i * kLanes) * inv[g];
      T* dst = out_row + (g * NV + i) * kLanes;
      for (int l = 0; l < kLanes; ++l) dst[l] = static_cast<T>(a[l]);
    }
}

template <typename T, typename C, int NV>
using AttendFn = void (*)(const T*, const C*, const C*, const int64_t*, int64_t, int64_t, int,
                          int64_t, int64_t, int64_t, float, float, float*, T*);

template <typename T, typename C, int NV>
AttendFn<T, C, NV> pick_group(int64_t group) {
  switch (group) {
    case 1: return &attend_fixed<T, C, 1, NV>;
    case 2: return &attend_fixed<T, C, 2, NV>;
    case 3: return &attend_fixed<T, C, 3, NV>;
    case 4: return &attend_fixed<T, C, 4, NV>;
    case 5: return &attend_fixed<T, C, 5, NV>;
    case 6: return &attend_fixed<T, C, 6, NV>;
    case 7: return &attend_fixed<T, C, 7, NV>;
    case 8: return &attend_fixed<T, C, 8, NV>;
    default: return nullptr;
  }
}

template <typename T, typename C, int NV>
void paged_attention_kernel(const at::Tensor& query, const at::Tensor& key_cache,
                            const at::Tensor& value_cache, const at::Tensor& block_table,
                            const at::Tensor& token_request, const at::Tensor& token_position,
                            at::Tensor& out, double scale, int64_t window, float k_scale,
                            float v_scale) {
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
  const AttendFn<T, C, NV> attend = pick_group<T, C, NV>(group);
  TORCH_CHECK(attend != nullptr, "paged_attention: at most 8 query heads per KV head");
  const T* q = query.data_ptr<T>();
  const C* kc = static_cast<const C*>(key_cache.data_ptr());
  const C* vc = static_cast<const C*>(value_cache.data_ptr());
  const int64_t* bt = block_table.data_ptr<int64_t>();
  const int64_t* req = token_request.data_ptr<int64_t>();
  const int64_t* pos = token_position.data_ptr<int64_t>();
  T* o = out.data_ptr<T>();
  const int64_t row_stride = num_kv_heads * head_size;
  const float fscale = static_cast<float>(scale) * k_scale;
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
      scores.resize(group * ((num_keys + kLanes - 1) / kLanes * kLanes));
      const int64_t row = (t * num_heads + h * group) * head_size;
      attend(q + row, kc, vc, bt + req[t] * bt_stride, first, num_keys, shift, mask,
             row_stride, h * head_size, fscale, v_scale, scores.data(), o + row);
    }
  });
}

template <typename T, typename C>
void dispatch_head_size(const at::Tensor& query, const at::Tensor& key_cache,
                        const at::Tensor& value_cache, const at::Tensor& block_table,
                        const at::Tensor& token_request, const at::Tensor& token_position,
                        at::Tensor& out, double scale, int64_t window, float k_scale,
                        float v_scale) {
#define VLLM_CPU_ATTEND(D)                                                                    \
  return paged_attention_kernel<T, C, D / kLanes>(query, key_cache, value_cache, block_table, \
                                                  token_request, token_position, out, scale, \
                                                  window, k_scale, v_scale)
  switch (query.size(2)) {
    case 32: VLLM_CPU_ATTEND(32);
    case 64: VLLM_CPU_ATTEND(64);
    case 128: VLLM_CPU_ATTEND(128);
    case 256: VLLM_CPU_ATTEND(256);
    default: TORCH_CHECK(false, "paged_attention: head size must be 32, 64, 128 or 256");
  }
#undef VLLM_CPU_ATTEND
}

// The cache's element type: T itself (scales ignored), or a float8 format.
template <typename T>
void dispatch_cache(const at::Tensor& query, const at::Tensor& key_cache,
                    const at::Tensor& value_cache, const at::Tensor& block_table,
                    const at::Tensor& token_request, const at::Tensor& token_position,
                    at::Tensor& out, double scale, int64_t window, double k_scale,
                    double v_scale) {
  const auto ks = static_cast<float>(k_scale), vs = static_cast<float>(v_scale);
  switch (key_cache.scalar_type()) {
    case at::kFloat8_e4m3fn:
      return dispatch_head_size<T, c10::Float8_e4m3fn>(query, key_cache, value_cache,
                                                       block_table, token_request,
                                                       token_position, out, scale, window, ks,
                                                       vs);
    case at::kFloat8_e5m2:
      return dispatch_head_size<T, c10::Float8_e5m2>(query, key_cache, value_cache,
                                                     block_table, token_request,
                                                     token_position, out, scale, window, ks,
                                                     vs);
    default:
      TORCH_CHECK(key_cache.scalar_type() == query.scalar_type(),
                  "paged_attention: the cache holds ", key_cache.scalar_type(),
                  "; expected the query's dtype ", query.scalar_type(),
                  " or float8 (e4m3fn / e5m2)");
      return dispatch_head_size<T, T>(query, key_cache, value_cache, block_table,
                                      token_request, token_position, out, scale, window, 1.0f,
                                      1.0f);
  }
}

}  // namespace

namespace vllm_core_cpu {

at::Tensor paged_attention(const at::Tensor& query, const at::Tensor& key_cache,
                           const at::Tensor& value_cache, const at::Tensor& block_table,
                           const at::Tensor& token_request, const at::Tensor& token_position,
                           double scale, int64_t window, double k_scale, double v_scale) {
  TORCH_CHECK(query.is_contiguous() && key_cache.is_contiguous() && value_cache.is_contiguous(),
              "paged_attention: query and caches must be contiguous");
  TORCH_CHECK(value_cache.scalar_type() == key_cache.scalar_type(),
              "paged_attention: key and value caches must share one dtype");
  TORCH_CHECK(k_scale > 0 && v_scale > 0, "paged_attention: KV-cache scales must be positive");
  TORCH_CHECK(block_table.scalar_type() == at::kLong && token_request.scalar_type() == at::kLong
              && token_position.scalar_type() == at::kLong, "paged_attention: int64 indices");
  auto bt = block_table.contiguous();
  auto out = at::empty_like(query);
  switch (query.scalar_type()) {
    case at::kFloat:
      dispatch_cache<float>(query, key_cache, value_cache, bt, token_request,
                                    token_position, out, scale, window, k_scale, v_scale);
      break;
    case at::kBFloat16:
      dispatch_cache<c10::BFloat16>(query, key_cache, value_cache, bt, token_request,
                                            token_position, out, scale, window, k_scale, v_scale);
      break;
    case at::kHalf:
      dispatch_cache<c10::Half>(query, key_cache, value_cache, bt, token_request,
                                        token_position, out, scale, window, k_scale, v_scale);
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

// n values written into a cache of element type C: copied when C is T, else as the float8
// contract says, fp8(clamp(float(x) / scale, +-max)) (what kv_scales.quantize_kv computes).
template <typename T, typename C>
inline void write_cache_row(C* dst, const T* src, int64_t n, float scale) {
  if constexpr (std::is_same_v<T, C>) {
    std::memcpy(dst, src, n * sizeof(T));
  } else {
    constexpr float limit = std::is_same_v<C, c10::Float8_e5m2> ? 57344.0f : 448.0f;
    for (int64_t i = 0; i < n; ++i)
      dst[i] = static_cast<C>(std::clamp(to_float(src[i]) / scale, -limit, limit));
  }
}

template <typename T, typename C>
void rotate_and_write(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                      at::Tensor& key_cache, at::Tensor& value_cache,
                      const at::Tensor& slot_mapping, const at::Tensor& positions,
                      const at::Tensor& cos_sin_cache, at::Tensor& q_out, float k_scale,
                      float v_scale) {
  const int64_t T_ = query.size(0), H = query.size(1), D = query.size(2);
  const int64_t Hkv = key.size(1), rot = cos_sin_cache.size(1);
  const int64_t max_pos = cos_sin_cache.size(0);
  const T* q = query.data_ptr<T>();
  const T* k = key.data_ptr<T>();
  const T* v = value.data_ptr<T>();
  C* kc = static_cast<C*>(key_cache.data_ptr());
  C* vc = static_cast<C*>(value_cache.data_ptr());
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
    std::vector<T> k_rot(std::is_same_v<T, C> ? 0 : D);   // a rotated key before float8
    for (int64_t t = begin; t < end; ++t) {
      const float* row = cs + pos[t] * rot;
      for (int64_t h = 0; h < H; ++h)
        rotate_row(q + t * qs0 + h * qs1, qo + (t * H + h) * D, row, rot, D);
      C* kdst = kc + slots[t] * slot_stride;
      C* vdst = vc + slots[t] * slot_stride;
      for (int64_t h = 0; h < Hkv; ++h) {
        if constexpr (std::is_same_v<T, C>) {
          rotate_row(k + t * ks0 + h * ks1, kdst + h * D, row, rot, D);
        } else {
          rotate_row(k + t * ks0 + h * ks1, k_rot.data(), row, rot, D);
          write_cache_row(kdst + h * D, k_rot.data(), D, k_scale);
        }
        write_cache_row(vdst + h * D, v + t * vs0 + h * vs1, D, v_scale);
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
                                  double scale, int64_t window, double k_scale,
                                  double v_scale) {
  TORCH_CHECK(query.dim() == 3 && key.dim() == 3 && value.dim() == 3,
              "paged_attention_rotary: q / k / v must be [tokens, heads, head_size]");
  TORCH_CHECK(query.stride(2) == 1 && key.stride(2) == 1 && value.stride(2) == 1,
              "paged_attention_rotary: q / k / v need unit stride in the head dimension");
  TORCH_CHECK(key.scalar_type() == query.scalar_type() &&
                  value.scalar_type() == query.scalar_type(),
              "paged_attention_rotary: q / k / v must share one dtype");
  const auto cache_dtype = key_cache.scalar_type();
  const bool fp8 = cache_dtype == at::kFloat8_e4m3fn || cache_dtype == at::kFloat8_e5m2;
  TORCH_CHECK(value_cache.scalar_type() == cache_dtype &&
                  (fp8 || cache_dtype == query.scalar_type()),
              "paged_attention_rotary: the caches hold ", cache_dtype, "; expected the query's "
              "dtype ", query.scalar_type(), " or float8 (e4m3fn / e5m2), the same for K and V");
  TORCH_CHECK(k_scale > 0 && v_scale > 0,
              "paged_attention_rotary: KV-cache scales must be positive");
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
  const auto ks = static_cast<float>(k_scale), vs = static_cast<float>(v_scale);
  auto write = [&](auto tag) {
    using T = decltype(tag);
    switch (cache_dtype) {
      case at::kFloat8_e4m3fn:
        return rotate_and_write<T, c10::Float8_e4m3fn>(query, key, value, key_cache,
                                                       value_cache, sm, ps, cos_sin_cache,
                                                       q_rot, ks, vs);
      case at::kFloat8_e5m2:
        return rotate_and_write<T, c10::Float8_e5m2>(query, key, value, key_cache, value_cache,
                                                     sm, ps, cos_sin_cache, q_rot, ks, vs);
      default:
        return rotate_and_write<T, T>(query, key, value, key_cache, value_cache, sm, ps,
                                      cos_sin_cache, q_rot, 1.0f, 1.0f);
    }
  };
  switch (query.scalar_type()) {
    case at::kFloat: write(float{}); break;
    case at::kBFloat16: write(c10::BFloat16{}); break;
    case at::kHalf: write(c10::Half{}); break;
    default:
      TORCH_CHECK(false, "paged_attention_rotary: unsupported dtype ", query.scalar_type());
  }
  return paged_attention(q_rot, key_cache, value_cache, block_table, token_request,
                         token_position, scale, window, k_scale, v_scale);
}

}  // namespace vllm_core_cpu

TORCH_LIBRARY(vllm_core_cpu, m) {
  m.def("paged_attention(Tensor query, Tensor key_cache, Tensor value_cache, Tensor block_table, "
        "Tensor token_request, Tensor token_position, float scale, int window=0, "
        "float k_scale=1.0, float v_scale=1.0) -> Tensor");
  m.def("paged_attention_rotary(Tensor query, Tensor key, Tensor value, Tensor(a!) key_cache, "
        "Tensor(b!) value_cache, Tensor slot_mapping, Tensor block_table, Tensor token_request, "
        "Tensor token_position, Tensor positions, Tensor cos_sin_cache, float scale, "
        "int window=0, float k_scale=1.0, float v_scale=1.0) -> Tensor");
}

TORCH_LIBRARY_IMPL(vllm_core_cpu, CPU, m) {
  m.impl("paged_attention", &vllm_core_cpu::paged_attention);
  m.impl("paged_attention_rotary", &vllm_core_cpu::paged_attention_rotary);
}
