// The op radixlm::q4_decode_layers: consecutive Llama-family decoder layers for B <= 8 new tokens, with
// 4-bit block (Q4_1) matrices, float32 activations and a float32 paged KV pool, in one call.
//
// A batch-1 decode step reads every weight once; what it does besides is a few thousand multiply-adds
// per layer (norms, RoPE, attention over the row's cached positions, residuals). Done here in plain
// loops, a layer is four parallel GEMVs (block_dot.h) and one parallel attention pass, instead of
// dozens of separately dispatched small kernels.
//
// Per layer l and row b (the math of decode_step.make_layer_fn):
//   x = rms_norm(h) ; q, k, v = x Wqkv (+ bias) ; q, k = rms_norm per head (Qwen3) ; RoPE(q, k)
//   k, v -> the pool at the row's newest slot, kv_index[b, kv_lens[b] - 1]
//   h += softmax(q K^T / sqrt(dim)) V Wo over the row's kv_lens[b] slots
//   h += (silu(x' Wgate) * x' Wup) Wdown, with x' = rms_norm(h)
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cmath>
#include <optional>
#include <tuple>
#include <utility>

#include "block_dot.h"

namespace {

using namespace radixlm::kernels;

// One layer's Q4_1 matrix [out, in] inside the stacked [layers, out, ...] tensors.
struct Q4Matrix {
  const uint8_t* packed;
  const uint16_t* d;
  const uint16_t* m;
  int64_t out, in;

  void times(const float* x, int64_t batch, float* y) const {
    const QuantizedX qx = quantize_x(x, batch, in);
    gemv<Q4>(qx, batch, packed, d, m, out, y);
  }
};

// The stacked parts (packed, d, m) of one matrix name, checked against the expected [layers, out, in].
struct Q4Stack {
  at::Tensor packed, d, m;
  int64_t out, in;

  Q4Stack(at::TensorList parts, const char* name, int64_t layers, int64_t out_, int64_t in_) : out(out_), in(in_) {
    TORCH_CHECK(parts.size() == 3, "q4_decode_layers: ", name, " must be (packed, d, m)");
    packed = parts[0], d = parts[1], m = parts[2];
    TORCH_CHECK(packed.scalar_type() == at::kByte && packed.is_contiguous() &&
                    packed.sizes() == at::IntArrayRef({layers, out, in / 2}),
                "q4_decode_layers: ", name, " codes must be contiguous uint8 [", layers, ", ", out, ", ", in / 2,
                "], got ", packed.sizes());
    for (const at::Tensor* t : {&d, &m})
      TORCH_CHECK(t->scalar_type() == at::kHalf && t->is_contiguous() &&
                      t->sizes() == at::IntArrayRef({layers, out, in / kBlock}),
                  "q4_decode_layers: ", name, " scales and offsets must be contiguous float16 [", layers, ", ", out,
                  ", ", in / kBlock, "], got ", t->sizes());
  }

  Q4Matrix layer(int64_t l) const {
    return {static_cast<const uint8_t*>(packed.data_ptr()) + l * out * (in / 2),
            reinterpret_cast<const uint16_t*>(d.data_ptr<at::Half>()) + l * out * (in / kBlock),
            reinterpret_cast<const uint16_t*>(m.data_ptr<at::Half>()) + l * out * (in / kBlock), out, in};
  }
};

inline float dot(const float* a, const float* b, int64_t n) {
  __m256 acc = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
  float s = reduce(acc);
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

void rms_norm(const float* x, const float* weight, int64_t n, double eps, float* y) {
  const float scale = 1.0f / std::sqrt(dot(x, x, n) / static_cast<float>(n) + static_cast<float>(eps));
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] * scale * weight[i];
}

// rotate-half RoPE in place on one head of `dim` values
void rope(float* x, const float* cos, const float* sin, int64_t dim) {
  const int64_t half = dim / 2;
  for (int64_t i = 0; i < half; ++i) {
    const float a = x[i], b = x[i + half];
    x[i] = a * cos[i] - b * sin[i];
    x[i + half] = b * cos[i + half] + a * sin[i + half];
  }
}

struct Shape {
  int64_t batch, hidden, heads, kv_heads, dim, inter, kv_width, slots;
  double eps;
  int64_t q_size() const { return heads * dim; }
  int64_t kv_size() const { return kv_heads * dim; }
};

// 8 vectors -> one vector whose lane j is the sum of v[j]'s lanes
inline __m256 sum_each(const __m256* v) {
  const __m256 a = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));
  const __m256 b = _mm256_hadd_ps(_mm256_hadd_ps(v[4], v[5]), _mm256_hadd_ps(v[6], v[7]));
  return _mm256_add_ps(_mm256_permute2f128_ps(a, b, 0x20), _mm256_permute2f128_ps(a, b, 0x31));
}

// e^x for x <= 0 (softmax's shifted scores): x = n ln2 + r with |r| <= ln2 / 2, e^r by its degree-6
// Taylor polynomial (relative error < 2e-7), 2^n through the exponent bits; x below -87 gives 0.
inline __m256 exp_nonpositive(__m256 x) {
  const __m256 low = _mm256_set1_ps(-87.0f);
  const __m256 underflow = _mm256_cmp_ps(x, low, _CMP_LT_OQ);
  x = _mm256_max_ps(x, low);
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  // r = x - n ln2, with ln2 split in two so the product's rounding does not reach r
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 poly = _mm256_set1_ps(1.0f / 720);
  for (float c : {1.0f / 120, 1.0f / 24, 1.0f / 6, 0.5f, 1.0f, 1.0f}) poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(c));
  const __m256i pow2n = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_andnot_ps(underflow, _mm256_mul_ps(poly, _mm256_castsi256_ps(pow2n)));
}

// p[i] <- e^(p[i] - max p) for i < len; returns (max p, the sum of the new p)
std::pair<float, float> exp_shifted(float* p, int64_t len) {
  const float top = *std::max_element(p, p + len);
  const __m256 shift = _mm256_set1_ps(top);
  __m256 sum8 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= len; i += 8) {
    const __m256 e = exp_nonpositive(_mm256_sub_ps(_mm256_loadu_ps(p + i), shift));
    _mm256_storeu_ps(p + i, e);
    sum8 = _mm256_add_ps(sum8, e);
  }
  float total = reduce(sum8);
  for (; i < len; ++i) total += (p[i] = std::exp(p[i] - top));
  return {top, total};
}

inline void prefetch_row(const float* row, int64_t dim) {
  for (int64_t i = 0; i < dim; i += 16) _mm_prefetch(reinterpret_cast<const char*>(row + i), _MM_HINT_T0);
}

// Keys per attention task: a row's keys are split in chunks so that even one row's few KV heads
// keep every thread busy; the chunks' partial softmaxes are merged after.
constexpr int64_t kChunk = 64;

// out [B, heads * dim] = attention of q (row b's heads * dim values start at q + b * q_stride) over each
// row's first kv_lens[b] slots of the layer's pool. One task per (row, KV head, chunk of keys) serves the KV head's group of query heads,
// so each K/V row comes from memory once; keys are scored eight at a time (independent FMA chains,
// one lane sum). A task leaves, per query head, its chunk's max score, sum of exponentials and
// unnormalized output; the merge rescales them to the row's max.
void attend(const Shape& s, const float* q, int64_t q_stride, const int64_t* kv_index, const int64_t* kv_lens, const float* k_pool,
            const float* v_pool, float* out) {
  const int64_t group = s.heads / s.kv_heads, dim = s.dim, chunks = (s.kv_width + kChunk - 1) / kChunk;
  const int64_t tasks = s.batch * s.kv_heads * chunks;
  const float scale = 1.0f / std::sqrt(static_cast<float>(dim));
  std::vector<float> part_out(tasks * group * dim), part_top(tasks * group), part_total(tasks * group, 0.0f);
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores(group * kChunk);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t c = task % chunks, b = task / chunks / s.kv_heads, g = task / chunks % s.kv_heads;
      const int64_t first = c * kChunk, len = std::min(kv_lens[b], first + kChunk) - first;
      if (len <= 0) continue;  // past this row's keys: its total stays 0
      const int64_t* slots = kv_index + b * s.kv_width + first;
      auto row = [&](const float* pool, int64_t n) { return pool + (slots[n] * s.kv_heads + g) * dim; };
      const float* qg = q + b * q_stride + g * group * dim;  // the group's query heads, one after another
      int64_t n = 0;
      for (; n + 8 <= len; n += 8) {
        const float* k[8];
        for (int u = 0; u < 8; ++u) {
          k[u] = row(k_pool, n + u);
          if (n + 8 + u < len) prefetch_row(row(k_pool, n + 8 + u), dim);
        }
        for (int64_t j = 0; j < group; ++j) {
          __m256 acc[8];
          for (int u = 0; u < 8; ++u) acc[u] = _mm256_setzero_ps();
          for (int64_t i = 0; i < dim; i += 8) {
            const __m256 qi = _mm256_loadu_ps(qg + j * dim + i);
            for (int u = 0; u < 8; ++u) acc[u] = _mm256_fmadd_ps(qi, _mm256_loadu_ps(k[u] + i), acc[u]);
          }
          _mm256_storeu_ps(scores.data() + j * kChunk + n, _mm256_mul_ps(sum_each(acc), _mm256_set1_ps(scale)));
        }
      }
      for (; n < len; ++n)
        for (int64_t j = 0; j < group; ++j) scores[j * kChunk + n] = dot(qg + j * dim, row(k_pool, n), dim) * scale;
      for (int64_t j = 0; j < group; ++j)
        std::tie(part_top[task * group + j], part_total[task * group + j]) = exp_shifted(scores.data() + j * kChunk, len);
      float* o = part_out.data() + task * group * dim;
      std::fill_n(o, group * dim, 0.0f);
      for (n = 0; n < len; ++n) {
        const float* value = row(v_pool, n);
        if (n + 8 < len) prefetch_row(row(v_pool, n + 8), dim);
        for (int64_t j = 0; j < group; ++j) {
          const __m256 p = _mm256_set1_ps(scores[j * kChunk + n]);
          for (int64_t i = 0; i < dim; i += 8)
            _mm256_storeu_ps(o + j * dim + i, _mm256_fmadd_ps(p, _mm256_loadu_ps(value + i), _mm256_loadu_ps(o + j * dim + i)));
        }
      }
    }
  });
  for (int64_t bg = 0; bg < s.batch * s.kv_heads; ++bg) {
    for (int64_t j = 0; j < group; ++j) {
      const int64_t head = bg * group + j;  // (b, g, j) -> query head b * heads + g * group + j
      float top = -INFINITY, total = 0.0f;
      for (int64_t c = 0; c < chunks; ++c)
        if (part_total[(bg * chunks + c) * group + j] > 0.0f) top = std::max(top, part_top[(bg * chunks + c) * group + j]);
      float* o = out + head * dim;
      std::fill_n(o, dim, 0.0f);
      for (int64_t c = 0; c < chunks; ++c) {
        const int64_t at = (bg * chunks + c) * group + j;
        if (part_total[at] == 0.0f) continue;
        const float w = std::exp(part_top[at] - top);
        total += w * part_total[at];
        const float* po = part_out.data() + at * dim;
        for (int64_t i = 0; i < dim; ++i) o[i] += w * po[i];
      }
      for (int64_t i = 0; i < dim; ++i) o[i] /= total;
    }
  }
}

const float* optional_data(const std::optional<at::Tensor>& t, const char* name, int64_t layers, int64_t width) {
  if (!t.has_value()) return nullptr;
  TORCH_CHECK(t->scalar_type() == at::kFloat && t->is_contiguous() && t->sizes() == at::IntArrayRef({layers, width}),
              "q4_decode_layers: ", name, " must be contiguous float32 [", layers, ", ", width, "], got ", t->sizes());
  return t->data_ptr<float>();
}

at::Tensor q4_decode_layers(const at::Tensor& h, const at::Tensor& cos, const at::Tensor& sin, const at::Tensor& kv_index,
                            const at::Tensor& kv_lens, at::Tensor k_layers, at::Tensor v_layers, const at::Tensor& in_norm,
                            const at::Tensor& post_norm, at::TensorList qkv, at::TensorList o, at::TensorList gate_up,
                            at::TensorList down, const std::optional<at::Tensor>& qkv_bias,
                            const std::optional<at::Tensor>& q_norm, const std::optional<at::Tensor>& k_norm,
                            int64_t heads, int64_t kv_heads, double eps) {
  TORCH_CHECK(h.dim() == 2 && h.scalar_type() == at::kFloat, "q4_decode_layers: h must be float32 [B, hidden]");
  TORCH_CHECK(k_layers.dim() == 4 && k_layers.scalar_type() == at::kFloat && k_layers.is_contiguous() &&
                  v_layers.sizes() == k_layers.sizes() && v_layers.scalar_type() == at::kFloat && v_layers.is_contiguous(),
              "q4_decode_layers: the KV pool layers must be contiguous float32 [layers, slots, kv_heads, dim]");
  TORCH_CHECK(heads > 0 && kv_heads > 0 && heads % kv_heads == 0, "q4_decode_layers: heads (", heads,
              ") must be a multiple of kv_heads (", kv_heads, ")");
  const int64_t layers = k_layers.size(0), dim = k_layers.size(3);
  TORCH_CHECK(dim % 8 == 0, "q4_decode_layers: the head size must be a multiple of 8, got ", dim);
  TORCH_CHECK(k_layers.size(2) == kv_heads, "q4_decode_layers: the pool has ", k_layers.size(2), " KV heads, expected ", kv_heads);
  TORCH_CHECK(kv_index.dim() == 2 && kv_index.scalar_type() == at::kLong && kv_index.is_contiguous() &&
                  kv_lens.dim() == 1 && kv_lens.scalar_type() == at::kLong && kv_lens.is_contiguous(),
              "q4_decode_layers: kv_index must be contiguous int64 [B, N] and kv_lens int64 [B]");
  const int64_t batch = h.size(0), hidden = h.size(1);
  Shape s{batch, hidden, heads, kv_heads, dim, 0, kv_index.size(1), k_layers.size(1), eps};
  TORCH_CHECK(batch <= kMaxBatch, "q4_decode_layers: at most ", kMaxBatch, " rows, got ", batch);
  TORCH_CHECK(kv_index.size(0) == batch && kv_lens.size(0) == batch, "q4_decode_layers: kv_index and kv_lens need one row per token");
  TORCH_CHECK(cos.scalar_type() == at::kFloat && sin.scalar_type() == at::kFloat && cos.is_contiguous() && sin.is_contiguous() &&
                  cos.sizes() == at::IntArrayRef({batch, dim}) && sin.sizes() == cos.sizes(),
              "q4_decode_layers: cos and sin must be contiguous float32 [B, ", dim, "]");
  const int64_t* index = kv_index.data_ptr<int64_t>();
  const int64_t* lens = kv_lens.data_ptr<int64_t>();
  for (int64_t b = 0; b < batch; ++b) {
    TORCH_CHECK(lens[b] >= 1 && lens[b] <= s.kv_width, "q4_decode_layers: row ", b, " has kv length ", lens[b],
                " outside 1..", s.kv_width);
    for (int64_t n = 0; n < lens[b]; ++n)
      TORCH_CHECK(index[b * s.kv_width + n] >= 0 && index[b * s.kv_width + n] < s.slots, "q4_decode_layers: KV slot ",
                  index[b * s.kv_width + n], " outside the pool's ", s.slots);
  }
  TORCH_CHECK(in_norm.scalar_type() == at::kFloat && in_norm.is_contiguous() && in_norm.sizes() == at::IntArrayRef({layers, hidden}) &&
                  post_norm.scalar_type() == at::kFloat && post_norm.is_contiguous() && post_norm.sizes() == in_norm.sizes(),
              "q4_decode_layers: the norms must be contiguous float32 [", layers, ", ", hidden, "]");
  const int64_t qkv_out = s.q_size() + 2 * s.kv_size();
  TORCH_CHECK(!down.empty() && down[0].dim() == 3, "q4_decode_layers: down must be (packed, d, m)");
  s.inter = down[0].size(2) * 2;
  const Q4Stack w_qkv(qkv, "qkv", layers, qkv_out, hidden), w_o(o, "o", layers, hidden, s.q_size()),
      w_gate_up(gate_up, "gate_up", layers, 2 * s.inter, hidden), w_down(down, "down", layers, hidden, s.inter);
  const float* bias = optional_data(qkv_bias, "qkv_bias", layers, qkv_out);
  const float* qn = optional_data(q_norm, "q_norm", layers, dim);
  const float* kn = optional_data(k_norm, "k_norm", layers, dim);
  TORCH_CHECK((qn == nullptr) == (kn == nullptr), "q4_decode_layers: q_norm and k_norm come together");

  at::Tensor out = h.contiguous().clone();
  float* hp = out.data_ptr<float>();
  std::vector<float> x(batch * std::max(hidden, s.inter)), qkv_y(batch * qkv_out), attn(batch * s.q_size()),
      gu(batch * 2 * s.inter), y(batch * hidden);
  const float* cp = cos.data_ptr<float>();
  const float* sp = sin.data_ptr<float>();
  const int64_t pool_layer = s.slots * s.kv_size();
  for (int64_t l = 0; l < layers; ++l) {
    float* k_pool = k_layers.data_ptr<float>() + l * pool_layer;
    float* v_pool = v_layers.data_ptr<float>() + l * pool_layer;
    for (int64_t b = 0; b < batch; ++b) rms_norm(hp + b * hidden, in_norm.data_ptr<float>() + l * hidden, hidden, eps, x.data() + b * hidden);
    w_qkv.layer(l).times(x.data(), batch, qkv_y.data());
    for (int64_t b = 0; b < batch; ++b) {
      float* row = qkv_y.data() + b * qkv_out;
      if (bias != nullptr)
        for (int64_t i = 0; i < qkv_out; ++i) row[i] += bias[l * qkv_out + i];
      for (int64_t head = 0; head < heads + kv_heads; ++head) {
        float* v = row + head * dim;
        if (qn != nullptr) rms_norm(v, (head < heads ? qn : kn) + l * dim, dim, eps, v);
        rope(v, cp + b * dim, sp + b * dim, dim);
      }
      const int64_t slot = index[b * s.kv_width + lens[b] - 1];
      std::copy_n(row + s.q_size(), s.kv_size(), k_pool + slot * s.kv_size());
      std::copy_n(row + s.q_size() + s.kv_size(), s.kv_size(), v_pool + slot * s.kv_size());
    }
    attend(s, qkv_y.data(), qkv_out, index, lens, k_pool, v_pool, attn.data());  // q: each row's first values
    w_o.layer(l).times(attn.data(), batch, y.data());
    for (int64_t i = 0; i < batch * hidden; ++i) hp[i] += y[i];
    for (int64_t b = 0; b < batch; ++b) rms_norm(hp + b * hidden, post_norm.data_ptr<float>() + l * hidden, hidden, eps, x.data() + b * hidden);
    w_gate_up.layer(l).times(x.data(), batch, gu.data());
    for (int64_t b = 0; b < batch; ++b) {
      const float* gate = gu.data() + b * 2 * s.inter;
      for (int64_t i = 0; i < s.inter; ++i) x[b * s.inter + i] = gate[i] / (1.0f + std::exp(-gate[i])) * gate[s.inter + i];
    }
    w_down.layer(l).times(x.data(), batch, y.data());
    for (int64_t i = 0; i < batch * hidden; ++i) hp[i] += y[i];
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(radixlm, m) {
  m.def(
      "q4_decode_layers(Tensor h, Tensor cos, Tensor sin, Tensor kv_index, Tensor kv_lens, Tensor(a!) k_layers, "
      "Tensor(b!) v_layers, Tensor in_norm, Tensor post_norm, Tensor[] qkv, Tensor[] o, Tensor[] gate_up, "
      "Tensor[] down, Tensor? qkv_bias, Tensor? q_norm, Tensor? k_norm, int heads, int kv_heads, float eps) -> Tensor");
}

TORCH_LIBRARY_IMPL(radixlm, CPU, m) { m.impl("q4_decode_layers", &q4_decode_layers); }
