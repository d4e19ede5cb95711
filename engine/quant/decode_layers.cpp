// The op radixlm::q4_decode_layers: consecutive Llama-family decoder layers for B new tokens, with
// 4-bit block (Q4_1) matrices, float32 activations and a float32 paged KV pool, in one call. The
// matrices multiply x quantized per block (integer dots, as llama.cpp does) or, `exact`, x in float32
// by the blocks' own float32 weights (block_dot.h).
//
// A batch-1 decode step reads every weight once; what it does besides is a few thousand multiply-adds
// per layer (norms, RoPE, attention over the row's cached positions, residuals). Done here in plain
// loops, the op's layers run in one parallel region of torch's threads: each layer is five phases
// (QKV with RoPE and the K/V write, attention, O, gate/up, down), each split over the threads, with a
// barrier between phases instead of a parallel region per kernel.
//
// Per layer l and row b (the math of decode_step.make_layer_fn):
//   x = rms_norm(h) ; q, k, v = x Wqkv (+ bias) ; q, k = rms_norm per head (Qwen3) ; RoPE(q, k)
//   k, v -> the pool at the row's newest slot, kv_index[b, kv_lens[b] - 1]
//   h += softmax(q K^T / sqrt(dim)) V Wo over the row's kv_lens[b] slots
//   h += (silu(x' Wgate) * x' Wup) Wdown, with x' = rms_norm(h)
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <mutex>
#include <optional>
#include <tuple>
#include <utility>
#include <vector>

#include "block_dot.h"
#include "exp_nonpositive.h"

namespace {

using namespace radixlm::kernels;

// A phase's input rows as the GEMVs take them: quantized per block, or float32 for the exact products.
struct Activations {
  bool exact = false;
  QuantizedX q;
  FloatX f{nullptr, 0};

  // x [batch, in] stays where it is until the phase's GEMV has read it
  void set(const float* x, int64_t batch, int64_t in) {
    if (exact) {
      f = {x, in};
    } else {
      quantize_x(x, batch, in, q);
    }
  }
};

// One layer's Q4_1 matrix [out, in] inside the stacked [layers, out, ...] tensors.
struct Q4Matrix {
  const uint8_t* packed;
  const uint16_t* d;
  const uint16_t* m;
  int64_t out;

  // Output rows [begin, end) of y [batch, out] = x times this matrix, on the calling thread.
  void rows(const Activations& x, int64_t batch, int64_t begin, int64_t end, float* y) const {
    if (x.exact) {
      gemv_rows<Q4>(x.f, batch, packed, d, m, out, begin, end, y);
    } else {
      gemv_rows<Q4>(x.q, batch, packed, d, m, out, begin, end, y);
    }
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
            reinterpret_cast<const uint16_t*>(m.data_ptr<at::Half>()) + l * out * (in / kBlock), out};
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

// y[i] = silu(gate[i]) * up[i] = gate[i] / (1 + e^-gate[i]) * up[i] for i < n, with e^-|gate| from
// exp_nonpositive: sigmoid(g) = 1 / (1 + e^-g) for g >= 0, e^g / (1 + e^g) below. Every element takes
// the same vector path (the last few padded), so y[i] does not depend on where a member's share starts.
void silu_times(const float* gate, const float* up, int64_t n, float* y) {
  const __m256 one = _mm256_set1_ps(1.0f), sign = _mm256_set1_ps(-0.0f);
  auto eight = [&](const float* g8, const float* u8, float* y8) {
    const __m256 g = _mm256_loadu_ps(g8);
    const __m256 e = exp_nonpositive(_mm256_or_ps(g, sign));  // e^-|g|
    const __m256 r = _mm256_div_ps(one, _mm256_add_ps(one, e));
    const __m256 sigmoid = _mm256_blendv_ps(r, _mm256_mul_ps(e, r), g);  // g's sign bit picks e / (1 + e)
    _mm256_storeu_ps(y8, _mm256_mul_ps(_mm256_mul_ps(g, sigmoid), _mm256_loadu_ps(u8)));
  };
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) eight(gate + i, up + i, y + i);
  if (i < n) {
    float g8[8] = {}, u8[8] = {}, y8[8];
    std::copy(gate + i, gate + n, g8);
    std::copy(up + i, up + n, u8);
    eight(g8, u8, y8);
    std::copy_n(y8, n - i, y + i);
  }
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

// The chunks' partial results of one layer's attention: per task (row, KV head, chunk of keys) and
// query head of its group, the chunk's max score, sum of exponentials and unnormalized output.
struct Partials {
  int64_t chunks, group;
  std::vector<float> out, top, total;

  Partials(const Shape& s) : chunks((s.kv_width + kChunk - 1) / kChunk), group(s.heads / s.kv_heads) {
    const int64_t tasks = s.batch * s.kv_heads * chunks;
    out.resize(tasks * group * s.dim), top.resize(tasks * group), total.resize(tasks * group);
  }
  int64_t tasks(const Shape& s) const { return s.batch * s.kv_heads * chunks; }
};

// o[0 .. 8 W) = sum over the chunk's len keys n of p[n] * (value row n)[at .. at + 8 W), accumulated in registers.
template <int W, class Row>
inline void weigh_values(const float* p, int64_t len, const Row& row, const float* v_pool, int64_t at, float* o) {
  __m256 acc[W];
  for (int u = 0; u < W; ++u) acc[u] = _mm256_setzero_ps();
  for (int64_t n = 0; n < len; ++n) {
    const __m256 pn = _mm256_set1_ps(p[n]);
    const float* value = row(v_pool, n) + at;
    for (int u = 0; u < W; ++u) acc[u] = _mm256_fmadd_ps(pn, _mm256_loadu_ps(value + 8 * u), acc[u]);
  }
  for (int u = 0; u < W; ++u) _mm256_storeu_ps(o + 8 * u, acc[u]);
}

// Attention tasks [begin, end) of q (row b's heads * dim values start at q + b * q_stride) over each
// row's first kv_lens[b] slots of the layer's pool. A task serves its KV head's group of query heads,
// so each K/V row comes from memory once; keys are scored eight at a time (independent FMA chains, one
// lane sum). Tasks are handed out KV head fastest, so a thread reads a chunk's slots whole (a slot's
// heads are adjacent in the pool) instead of one head's part of every slot. `scores` holds
// group * kChunk floats.
void attend(const Shape& s, const float* q, int64_t q_stride, const int64_t* kv_index, const int64_t* kv_lens,
            const float* k_pool, const float* v_pool, int64_t begin, int64_t end, float* scores, Partials& part) {
  const int64_t group = part.group, dim = s.dim, chunks = part.chunks;
  const float scale = 1.0f / std::sqrt(static_cast<float>(dim));
  for (int64_t handed = begin; handed < end; ++handed) {
    const int64_t g = handed % s.kv_heads, c = handed / s.kv_heads % chunks, b = handed / s.kv_heads / chunks;
    const int64_t task = (b * s.kv_heads + g) * chunks + c;  // the partials' (row, KV head, chunk) order
    const int64_t first = c * kChunk, len = std::min(kv_lens[b], first + kChunk) - first;
    for (int64_t j = 0; j < group; ++j) part.total[task * group + j] = 0.0f;
    if (len <= 0) continue;  // past this row's keys: its totals stay 0
    const int64_t* slots = kv_index + b * s.kv_width + first;
    auto row = [&](const float* pool, int64_t n) { return pool + (slots[n] * s.kv_heads + g) * dim; };
    const float* qg = q + b * q_stride + g * group * dim;  // the group's query heads, one after another
    int64_t n = 0;
    for (; n + 8 <= len; n += 8) {
      const float* k[8];
      for (int u = 0; u < 8; ++u) {
        k[u] = row(k_pool, n + u);
        if (n + 8 + u < len) prefetch_row(row(k_pool, n + 8 + u), dim);
        prefetch_row(row(v_pool, n + u), dim);  // for the values' pass after this chunk's scores
      }
      for (int64_t j = 0; j < group; ++j) {
        __m256 acc[8];
        for (int u = 0; u < 8; ++u) acc[u] = _mm256_setzero_ps();
        for (int64_t i = 0; i < dim; i += 8) {
          const __m256 qi = _mm256_loadu_ps(qg + j * dim + i);
          for (int u = 0; u < 8; ++u) acc[u] = _mm256_fmadd_ps(qi, _mm256_loadu_ps(k[u] + i), acc[u]);
        }
        _mm256_storeu_ps(scores + j * kChunk + n, _mm256_mul_ps(sum_each(acc), _mm256_set1_ps(scale)));
      }
    }
    for (; n < len; ++n)
      for (int64_t j = 0; j < group; ++j) scores[j * kChunk + n] = dot(qg + j * dim, row(k_pool, n), dim) * scale;
    for (int64_t j = 0; j < group; ++j)
      std::tie(part.top[task * group + j], part.total[task * group + j]) = exp_shifted(scores + j * kChunk, len);
    float* o = part.out.data() + task * group * dim;
    for (int64_t j = 0; j < group; ++j) {
      int64_t i = 0;
      for (; i + 64 <= dim; i += 64) weigh_values<8>(scores + j * kChunk, len, row, v_pool, i, o + j * dim + i);
      for (; i < dim; i += 8) weigh_values<1>(scores + j * kChunk, len, row, v_pool, i, o + j * dim + i);
    }
  }
}

// out [B, heads * dim]: the chunks' partials merged, rescaled to each head's max score.
void merge(const Shape& s, const Partials& part, float* out) {
  const int64_t group = part.group, chunks = part.chunks, dim = s.dim;
  for (int64_t bg = 0; bg < s.batch * s.kv_heads; ++bg) {
    for (int64_t j = 0; j < group; ++j) {
      const int64_t head = bg * group + j;  // (b, g, j) -> query head b * heads + g * group + j
      float top = -INFINITY, total = 0.0f;
      for (int64_t c = 0; c < chunks; ++c)
        if (part.total[(bg * chunks + c) * group + j] > 0.0f) top = std::max(top, part.top[(bg * chunks + c) * group + j]);
      float* o = out + head * dim;
      std::fill_n(o, dim, 0.0f);
      for (int64_t c = 0; c < chunks; ++c) {
        const int64_t at = (bg * chunks + c) * group + j;
        if (part.total[at] == 0.0f) continue;
        const float w = std::exp(part.top[at] - top);
        total += w * part.total[at];
        const float* po = part.out.data() + at * dim;
        for (int64_t i = 0; i < dim; ++i) o[i] += w * po[i];
      }
      for (int64_t i = 0; i < dim; ++i) o[i] /= total;
    }
  }
}

// The op's threads as one team in one parallel region: each phase of a layer splits its work over
// the team's members, and the members meet at a barrier before the next phase. A thread of torch's
// pool runs the members [first, last) it is handed (one each when the pool has a thread per member;
// all of them when the region runs on one thread), so the barrier counts members, not threads.
// Waiting spins for a while (phases end within microseconds of each other on idle cores), then
// sleeps, so a member that lost its core to another process gets it back. Measured on 2 cores, SmolLM2:
// 4000 pauses lost 40% beside a busy process, 250 lost 20% on idle cores; 1000 beat the kernel-per-
// region op it replaced in both.
class Team {
 public:
  explicit Team(int64_t size) : size_(size) {}

  // The share [begin, end) of `items` that members [first, last) take.
  std::pair<int64_t, int64_t> share(int64_t items, int64_t first, int64_t last) const {
    return {items * first / size_, items * last / size_};
  }

  // Members `members` arrive; returns when the whole team has. `passed` counts the caller's
  // barriers (times the team size).
  void wait(int64_t members, int64_t& passed) {
    passed += size_;
    if (arrived_.fetch_add(members) + members >= passed) {  // the last to arrive
      if (sleepers_.load() > 0) {
        std::lock_guard<std::mutex> lock(mutex_);
        woken_.notify_all();
      }
      return;
    }
    for (int64_t spins = 0; spins < kSpins; ++spins) {
      if (arrived_.load(std::memory_order_acquire) >= passed) return;
      _mm_pause();
    }
    std::unique_lock<std::mutex> lock(mutex_);
    // seq_cst with the last arriver's add then load: it sees this sleeper, or this sees its arrival
    sleepers_.fetch_add(1);
    woken_.wait(lock, [&] { return arrived_.load() >= passed; });
    sleepers_.fetch_sub(1);
  }

 private:
  static constexpr int64_t kSpins = 1000;
  const int64_t size_;
  std::atomic<int64_t> arrived_{0}, sleepers_{0};
  std::mutex mutex_;
  std::condition_variable woken_;
};

// What each thread of the team keeps for itself: its copy of the activations, as its GEMVs take them.
struct Scratch {
  std::vector<float> h, x, scores;
  Activations in;

  Scratch(const Shape& s, int64_t group, bool exact)
      : h(s.batch * s.hidden), x(s.batch * std::max({s.hidden, s.inter, s.q_size()})), scores(group * kChunk) {
    // sized once here: nothing allocates inside the team's region, where a throw would leave the
    // other members waiting at a barrier
    in.exact = exact;
    in.q.xq.reserve(x.size());
    in.q.dx.reserve(x.size() / kBlock + kMaxGroup);
    in.q.xsum.reserve(x.size() / kBlock + kMaxGroup);
  }
};

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
                            int64_t heads, int64_t kv_heads, double eps, bool exact) {
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

  const int64_t group = heads / kv_heads, units = heads + 2 * kv_heads;  // units: the QKV output's heads
#if AT_PARALLEL_OPENMP
  const int64_t team_size = std::max<int64_t>(1, at::get_num_threads());
#else
  const int64_t team_size = 1;  // another backend may run the chunks one after another: no barriers then
#endif
  Team team(team_size);
  Partials part(s);
  std::vector<Scratch> scratch(team_size, Scratch(s, group, exact));
  // shared: h in two buffers (a residual reads one and writes the other), and each phase's output
  std::vector<float> h_buffers(2 * batch * hidden), qkv_y(batch * qkv_out), y_o(batch * hidden), gu(batch * 2 * s.inter),
      act(batch * s.inter), y_down(batch * hidden);
  const at::Tensor h_in = h.contiguous();
  std::copy_n(h_in.data_ptr<float>(), batch * hidden, h_buffers.data());
  at::Tensor out = at::empty({batch, hidden}, h_in.options());
  float* out_p = out.data_ptr<float>();
  const float* cp = cos.data_ptr<float>();
  const float* sp = sin.data_ptr<float>();
  const float* in_norm_p = in_norm.data_ptr<float>();
  const float* post_norm_p = post_norm.data_ptr<float>();
  float* k_base = k_layers.data_ptr<float>();
  float* v_base = v_layers.data_ptr<float>();
  const int64_t pool_layer = s.slots * s.kv_size();

  at::parallel_for(0, team_size, 1, [&](int64_t first, int64_t last) {
    Scratch& mine = scratch[first];
    const int64_t members = last - first;
    int64_t passed = 0;
    int64_t cur = 0;  // h_buffers' half that holds h
    auto norm_rows = [&](const float* weight) {
      for (int64_t b = 0; b < batch; ++b) rms_norm(mine.h.data() + b * hidden, weight, hidden, eps, mine.x.data() + b * hidden);
    };
    // mine.h = h + y; this member's share of it becomes the other half's
    auto residual = [&](const float* y) {
      const float* from = h_buffers.data() + cur * batch * hidden;
      for (int64_t i = 0; i < batch * hidden; ++i) mine.h[i] = from[i] + y[i];
      cur ^= 1;
      const auto [a, b] = team.share(batch * hidden, first, last);
      std::copy(mine.h.begin() + a, mine.h.begin() + b, h_buffers.begin() + cur * batch * hidden + a);
    };
    std::copy_n(h_buffers.data(), batch * hidden, mine.h.data());
    for (int64_t l = 0; l < layers; ++l) {
      float* k_pool = k_base + l * pool_layer;
      float* v_pool = v_base + l * pool_layer;
      // QKV, whole heads per member: bias, Qwen3's head norms, RoPE, and the new K/V into the pool
      if (l > 0) residual(y_down.data());
      norm_rows(in_norm_p + l * hidden);
      mine.in.set(mine.x.data(), batch, hidden);
      const auto [u0, u1] = team.share(units, first, last);
      w_qkv.layer(l).rows(mine.in, batch, u0 * dim, u1 * dim, qkv_y.data());
      for (int64_t b = 0; b < batch; ++b) {
        float* row = qkv_y.data() + b * qkv_out;
        const int64_t slot = index[b * s.kv_width + lens[b] - 1];
        for (int64_t unit = u0; unit < u1; ++unit) {
          float* v = row + unit * dim;
          if (bias != nullptr)
            for (int64_t i = 0; i < dim; ++i) v[i] += bias[l * qkv_out + unit * dim + i];
          if (unit < heads + kv_heads) {
            if (qn != nullptr) rms_norm(v, (unit < heads ? qn : kn) + l * dim, dim, eps, v);
            rope(v, cp + b * dim, sp + b * dim, dim);
          }
          if (unit >= heads + kv_heads)
            std::copy_n(v, dim, v_pool + slot * s.kv_size() + (unit - heads - kv_heads) * dim);
          else if (unit >= heads)
            std::copy_n(v, dim, k_pool + slot * s.kv_size() + (unit - heads) * dim);
        }
      }
      team.wait(members, passed);
      // attention: the (row, KV head, chunk) tasks
      const auto [t0, t1] = team.share(part.tasks(s), first, last);
      attend(s, qkv_y.data(), qkv_out, index, lens, k_pool, v_pool, t0, t1, mine.scores.data(), part);
      team.wait(members, passed);
      // O
      merge(s, part, mine.x.data());
      mine.in.set(mine.x.data(), batch, s.q_size());
      const auto [o0, o1] = team.share(hidden, first, last);
      w_o.layer(l).rows(mine.in, batch, o0, o1, y_o.data());
      team.wait(members, passed);
      // the MLP's gate and up rows of the same channels per member, then silu(gate) * up for them
      residual(y_o.data());
      norm_rows(post_norm_p + l * hidden);
      mine.in.set(mine.x.data(), batch, hidden);
      const auto [c0, c1] = team.share(s.inter, first, last);
      w_gate_up.layer(l).rows(mine.in, batch, c0, c1, gu.data());
      w_gate_up.layer(l).rows(mine.in, batch, s.inter + c0, s.inter + c1, gu.data());
      for (int64_t b = 0; b < batch; ++b) {
        const float* gate = gu.data() + b * 2 * s.inter;
        silu_times(gate + c0, gate + s.inter + c0, c1 - c0, act.data() + b * s.inter + c0);
      }
      team.wait(members, passed);
      // down
      mine.in.set(act.data(), batch, s.inter);
      const auto [d0, d1] = team.share(hidden, first, last);
      w_down.layer(l).rows(mine.in, batch, d0, d1, y_down.data());
      team.wait(members, passed);
    }
    const float* last_h = h_buffers.data() + cur * batch * hidden;
    const auto [a, b] = team.share(batch * hidden, first, last);
    for (int64_t i = a; i < b; ++i) out_p[i] = last_h[i] + y_down[i];
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(radixlm, m) {
  m.def(
      "q4_decode_layers(Tensor h, Tensor cos, Tensor sin, Tensor kv_index, Tensor kv_lens, Tensor(a!) k_layers, "
      "Tensor(b!) v_layers, Tensor in_norm, Tensor post_norm, Tensor[] qkv, Tensor[] o, Tensor[] gate_up, "
      "Tensor[] down, Tensor? qkv_bias, Tensor? q_norm, Tensor? k_norm, int heads, int kv_heads, float eps, bool exact=False) -> Tensor");
}

TORCH_LIBRARY_IMPL(radixlm, CPU, m) { m.impl("q4_decode_layers", &q4_decode_layers); }
