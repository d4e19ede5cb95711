// radixlm::causal_attention_bf16(q, k, v, prefix, scale): one sequence's causal attention in bfloat16
// on AVX-512 BF16 dot products (vdpbf16ps: 32 products of bf16 pairs summed into 16 float32 lanes).
//
// q [n, heads, dim] holds the n new tokens' queries; k, v [prefix + n, kv_heads, dim] every key and
// value of the sequence in order; new token i (position prefix + i) attends keys 0 .. prefix + i.
// Returns [n, heads, dim] bfloat16. Query head h reads KV head h / (heads / kv_heads), as HF's GQA.
//
// As the CPU flash kernel of SDPA computes in bfloat16: scores are float32 sums of exact bf16
// products, the softmax runs online in float32 over blocks of 64 keys, the probabilities are rounded to
// bf16 for the product with V, and the sums that normalize them are taken before that rounding.
//
// Work: one task per (KV head, block of query rows), the rows' query vectors of the head's group
// together (kTaskVectors), so a block of keys packed once serves every query head reading it. K is
// packed per 16 keys as pairs of dims ([16 keys][2 dims] per vector), V per pair of keys as pairs
// ([dim][2 keys]), both zero-padded to a whole block. Tasks are taken heaviest first (the last rows
// attend most keys) from a shared counter.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#if defined(__AVX512BF16__) && defined(__AVX512F__) && defined(__AVX512BW__) && !defined(__AMX_BF16__)
// CPUs with AMX keep SDPA: its bf16 kernel runs on AMX tiles there.

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <vector>

#include "../quant/exp_nonpositive.h"

namespace {

constexpr int64_t kKeys = 64;           // keys per block: 4 vectors of 16
constexpr int kVectors = 6;             // query vectors per micro-kernel: 6 x 4 accumulators
constexpr int64_t kTaskVectors = 24;    // query vectors per task (rows x the group's query heads)

// e^x for x <= 0, 16 lanes: the 8-lane exp of the other native kernels on each half.
inline __m512 exp_nonpositive(__m512 x) {
  using radixlm::kernels::exp_nonpositive;
  const __m256 low = exp_nonpositive(_mm512_castps512_ps256(x));
  const __m256 high = exp_nonpositive(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(x), 1)));
  return _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castps_pd(_mm512_castps256_ps512(low)), _mm256_castps_pd(high), 1));
}

inline __m512bh pair_of(const uint16_t* p) {
  int32_t bits;
  std::memcpy(&bits, p, sizeof bits);
  return reinterpret_cast<__m512bh>(_mm512_set1_epi32(bits));
}

inline __m512bh load_bh(const uint16_t* p) { return reinterpret_cast<__m512bh>(_mm512_loadu_si512(p)); }

// s[i][j] = q[i] . key j of the block, for NQ query vectors and the block's 64 keys (packed K: the
// block's 4 vectors of 16 keys, each `pairs` x 32 bf16).
template <int NQ>
void block_scores(const uint16_t* const* q, const uint16_t* kp, int64_t pairs, float* s) {
  __m512 acc[NQ][4];
  for (int i = 0; i < NQ; ++i)
    for (int c = 0; c < 4; ++c) acc[i][c] = _mm512_setzero_ps();
  for (int64_t p = 0; p < pairs; ++p) {
    __m512bh keys[4];
    for (int c = 0; c < 4; ++c) keys[c] = load_bh(kp + (c * pairs + p) * 32);
    for (int i = 0; i < NQ; ++i) {
      const __m512bh qp = pair_of(q[i] + 2 * p);
      for (int c = 0; c < 4; ++c) acc[i][c] = _mm512_dpbf16_ps(acc[i][c], qp, keys[c]);
    }
  }
  for (int i = 0; i < NQ; ++i)
    for (int c = 0; c < 4; ++c) _mm512_storeu_ps(s + i * kKeys + c * 16, acc[i][c]);
}

// o[i] = o[i] * corr[i] + p[i] . V over the block's 32 key pairs, 64 dims at a time (packed V: per
// key pair, dim x 2 bf16).
template <int NQ>
void block_values(const uint16_t* p, const uint16_t* vp, int64_t dim, const float* corr, float* o) {
  for (int64_t d0 = 0; d0 < dim; d0 += 64) {
    __m512 acc[NQ][4];
    for (int i = 0; i < NQ; ++i)
      for (int c = 0; c < 4; ++c)
        acc[i][c] = _mm512_mul_ps(_mm512_loadu_ps(o + i * dim + d0 + c * 16), _mm512_set1_ps(corr[i]));
    for (int64_t t = 0; t < kKeys / 2; ++t) {
      __m512bh values[4];
      for (int c = 0; c < 4; ++c) values[c] = load_bh(vp + (t * dim + d0 + c * 16) * 2);
      for (int i = 0; i < NQ; ++i) {
        const __m512bh pp = pair_of(p + i * kKeys + 2 * t);
        for (int c = 0; c < 4; ++c) acc[i][c] = _mm512_dpbf16_ps(acc[i][c], pp, values[c]);
      }
    }
    for (int i = 0; i < NQ; ++i)
      for (int c = 0; c < 4; ++c) _mm512_storeu_ps(o + i * dim + d0 + c * 16, acc[i][c]);
  }
}

// One query vector's online-softmax step over a block's scores: masks keys past `last_key`, updates
// its running max and sum, leaves the rounded probabilities in p and the old sums' factor in corr.
inline void softmax_step(float* s, uint16_t* p, float& corr, float& top, float& total, int64_t last_key,
                         int64_t first_key, float scale) {
  const __m512 minus_inf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  __m512 v[4];
  __m512 mx = minus_inf;
  for (int c = 0; c < 4; ++c) {
    v[c] = _mm512_mul_ps(_mm512_loadu_ps(s + c * 16), _mm512_set1_ps(scale));
    const int64_t base = first_key + c * 16;
    if (base + 15 > last_key) {
      const int64_t allowed = std::clamp<int64_t>(last_key - base + 1, 0, 16);
      const __mmask16 keep = static_cast<__mmask16>((1u << allowed) - 1u);
      v[c] = _mm512_mask_blend_ps(keep, minus_inf, v[c]);
    }
    mx = _mm512_max_ps(mx, v[c]);
  }
  const float new_top = std::max(top, _mm512_reduce_max_ps(mx));
  corr = new_top == top ? 1.0f : std::exp(top - new_top);
  const __m512 shift = _mm512_set1_ps(new_top);
  __m512 sum = _mm512_setzero_ps();
  for (int c = 0; c < 4; ++c) {
    v[c] = exp_nonpositive(_mm512_sub_ps(v[c], shift));
    sum = _mm512_add_ps(sum, v[c]);
  }
  total = total * corr + _mm512_reduce_add_ps(sum);
  top = new_top;
  _mm512_storeu_si512(p, reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(v[1], v[0])));
  _mm512_storeu_si512(p + 32, reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(v[3], v[2])));
}

// One block of 64 keys for NQ query vectors: scores, the online-softmax step, the values' product.
template <int NQ>
void micro(const uint16_t* const* q, const uint16_t* kp, const uint16_t* vp, int64_t dim, float* s,
           uint16_t* p, float* corr, float* o, float* top, float* total, const int64_t* last_key,
           int64_t first_key, float scale) {
  block_scores<NQ>(q, kp, dim / 2, s);
  for (int i = 0; i < NQ; ++i)
    softmax_step(s + i * kKeys, p + i * kKeys, corr[i], top[i], total[i], last_key[i], first_key, scale);
  block_values<NQ>(p, vp, dim, corr, o);
}

using Micro = void (*)(const uint16_t* const*, const uint16_t*, const uint16_t*, int64_t, float*, uint16_t*,
                       float*, float*, float*, float*, const int64_t*, int64_t, float);
constexpr Micro kMicros[kVectors + 1] = {nullptr, micro<1>, micro<2>, micro<3>, micro<4>, micro<5>, micro<6>};

const uint16_t* bits(const at::Tensor& t) { return reinterpret_cast<const uint16_t*>(t.data_ptr<at::BFloat16>()); }

at::Tensor causal_attention_bf16(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t prefix,
                                 double scale) {
  const char* op = "causal_attention_bf16";
  TORCH_CHECK(q.dim() == 3 && k.dim() == 3 && v.dim() == 3, op, ": q, k, v must be [tokens, heads, dim]");
  TORCH_CHECK(q.scalar_type() == at::kBFloat16 && k.scalar_type() == at::kBFloat16 && v.scalar_type() == at::kBFloat16,
              op, ": q, k, v must be bfloat16");
  const int64_t n = q.size(0), heads = q.size(1), dim = q.size(2), keys = k.size(0), kv_heads = k.size(1);
  TORCH_CHECK(dim % 64 == 0 && k.size(2) == dim && v.sizes() == k.sizes(), op, ": dim must be a multiple of 64 and",
              " k, v [keys, kv_heads, dim] alike; got q ", q.sizes(), ", k ", k.sizes(), ", v ", v.sizes());
  TORCH_CHECK(kv_heads > 0 && heads % kv_heads == 0, op, ": heads (", heads, ") must be a multiple of kv_heads (",
              kv_heads, ")");
  TORCH_CHECK(prefix >= 0 && keys == prefix + n, op, ": k holds ", keys, " keys, expected prefix + n = ", prefix + n);
  TORCH_CHECK(q.stride(2) == 1 && k.stride(2) == 1 && v.stride(2) == 1, op, ": the last dim must be contiguous");
  const int64_t group = heads / kv_heads, pairs = dim / 2;
  const int64_t blocks = (keys + kKeys - 1) / kKeys, padded = blocks * kKeys;
  // uninitialized: every chunk of 16 keys is written whole below (past the last key, with zeros)
  std::unique_ptr<uint16_t[]> kpack(new uint16_t[kv_heads * padded * dim]), vpack(new uint16_t[kv_heads * padded * dim]);
  const uint16_t *qb = bits(q), *kb = bits(k), *vb = bits(v);
  at::parallel_for(0, kv_heads * (padded / 16), 1, [&](int64_t begin, int64_t end) {
    for (int64_t job = begin; job < end; ++job) {
      const int64_t g = job / (padded / 16), key0 = job % (padded / 16) * 16;
      uint16_t* kdst = kpack.get() + (g * padded + key0) * dim;  // [pairs][16 keys][2]
      uint16_t* vdst = vpack.get() + (g * padded + key0) * dim;  // per key pair [dim][2]
      if (key0 + 16 > keys) {
        std::fill_n(kdst, 16 * dim, uint16_t{0});
        std::fill_n(vdst, 16 * dim, uint16_t{0});
      }
      for (int64_t kk = 0; kk < 16 && key0 + kk < keys; ++kk) {
        const uint16_t* src = kb + (key0 + kk) * k.stride(0) + g * k.stride(1);
        for (int64_t pr = 0; pr < pairs; ++pr) std::memcpy(kdst + (pr * 16 + kk) * 2, src + 2 * pr, 4);
      }
      for (int64_t kk = 0; kk < 16 && key0 + kk < keys; ++kk) {
        const uint16_t* src = vb + (key0 + kk) * v.stride(0) + g * v.stride(1);
        uint16_t* dst = vdst + (kk / 2) * dim * 2 + kk % 2;
        for (int64_t d = 0; d < dim; ++d) dst[2 * d] = src[d];
      }
    }
  });

  at::Tensor out = at::empty({n, heads, dim}, q.options());
  uint16_t* ob = reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>());
  const int64_t rows = std::max<int64_t>(1, kTaskVectors / group), row_blocks = (n + rows - 1) / rows;
  const int64_t tasks = kv_heads * row_blocks, vectors = rows * group;
  std::atomic<int64_t> next{0};
  const int threads = at::get_num_threads();
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
    std::vector<float> s(vectors * kKeys), o(vectors * dim), corr(vectors), top(vectors), total(vectors);
    std::vector<uint16_t> p(vectors * kKeys);
    std::vector<const uint16_t*> qs(vectors);
    std::vector<int64_t> last(vectors);
    for (int64_t t; (t = next.fetch_add(1)) < tasks;) {
      const int64_t block = row_blocks - 1 - t / kv_heads, g = t % kv_heads;
      const int64_t r0 = block * rows, r1 = std::min(n, r0 + rows), count = (r1 - r0) * group;
      for (int64_t i = 0; i < count; ++i) {
        const int64_t r = r0 + i / group, h = g * group + i % group;
        qs[i] = qb + r * q.stride(0) + h * q.stride(1);
        last[i] = prefix + r;
      }
      std::fill(o.begin(), o.begin() + count * dim, 0.0f);
      std::fill(top.begin(), top.end(), -std::numeric_limits<float>::infinity());
      std::fill(total.begin(), total.end(), 0.0f);
      const int64_t needed = (prefix + r1 - 1) / kKeys + 1;
      for (int64_t b = 0; b < needed; ++b) {
        const uint16_t* kp = kpack.get() + (g * padded + b * kKeys) * dim;
        const uint16_t* vp = vpack.get() + (g * padded + b * kKeys) * dim;
        for (int64_t i = 0; i < count; i += kVectors) {
          const int64_t m = std::min<int64_t>(kVectors, count - i);
          kMicros[m](qs.data() + i, kp, vp, dim, s.data() + i * kKeys, p.data() + i * kKeys, corr.data() + i,
                     o.data() + i * dim, top.data() + i, total.data() + i, last.data() + i, b * kKeys,
                     static_cast<float>(scale));
        }
      }
      for (int64_t i = 0; i < count; ++i) {
        const int64_t r = r0 + i / group, h = g * group + i % group;
        const __m512 inv = _mm512_set1_ps(1.0f / total[i]);
        uint16_t* dst = ob + (r * heads + h) * dim;
        for (int64_t d = 0; d < dim; d += 16) {
          const __m256bh y = _mm512_cvtneps_pbh(_mm512_mul_ps(_mm512_loadu_ps(o.data() + i * dim + d), inv));
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + d), reinterpret_cast<__m256i>(y));
        }
      }
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(radixlm, m) {
  m.def("causal_attention_bf16(Tensor q, Tensor k, Tensor v, int prefix, float scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(radixlm, CPU, m) { m.impl("causal_attention_bf16", &causal_attention_bf16); }

#endif
