// Block-quantized dot products shared by the native decode kernels: x [B, in] float32
// quantized per block of 32 to int8, times weights stored in blocks of 32 consecutive weights of one
// output row, each with a float16 scale d (and, for Q4_1, a float16 offset m).
//
// Q4 (the Q4_1 scheme): w[j] = d * q[j] + m, q in 0..15. The codes [out, in / 2] uint8 hold the blocks
// of a row in pairs: 32 bytes per pair, byte j carrying q[j] of the pair's first block in its low
// nibble and q[j] of the second in its high nibble, so one 32-byte load and two masks give both blocks.
// Q8 (the Q8_0 scheme): w[j] = d * q[j], codes [out, in] int8. Scales and offsets [out, in / 32] float16.
//
// Like llama.cpp's products with Q8 activations, x is quantized per block of 32 to int8 (scale dx =
// max|x| / 127) and each block's dot is an integer dot: sum_j w[j] x[j] ~= d * dx * sum_j q[j] xq[j]
// (+ m * dx * sum_j xq[j] for Q4_1). Every weight byte is read once per kRowsPerPass rows of x.
//
// The exact products (`FloatX`) keep x in float32 and multiply it by the blocks' own weights in
// float32: w = d * q + m rounded once (q * d is exact in float32), the very values of the matrix the
// blocks dequantize to, so they compute the float32 product of that matrix, in another summation order.
#pragma once

#include <ATen/Parallel.h>

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#if !(defined(__AVX2__) && defined(__FMA__) && defined(__F16C__))
#error "the block kernels need AVX2, FMA and F16C; radixlm multiplies block-quantized weights in plain torch on this CPU"
#endif

namespace radixlm::kernels {


constexpr int64_t kBlock = 32;
constexpr int64_t kRowsPerPass = 8;  // rows of x that one pass over a weight serves (more rows: more passes)
constexpr int64_t kMaxGroup = 8;  // blocks whose integer dots are summed and scaled in one vector
constexpr int64_t kPrefetchRows = 8;

// 32 unsigned times 32 signed int8 -> 8 int32 partial sums (no overflow for unsigned values < 128).
inline __m256i dot_u8_s8(__m256i w, __m256i xq) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
  return _mm256_dpbusd_epi32(_mm256_setzero_si256(), w, xq);
#else
  return _mm256_madd_epi16(_mm256_maddubs_epi16(w, xq), _mm256_set1_epi16(1));
#endif
}

inline float reduce(__m256 s) {
  const __m128 q = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
  const __m128 h = _mm_add_ps(q, _mm_movehl_ps(q, q));
  return _mm_cvtss_f32(_mm_add_ss(h, _mm_shuffle_ps(h, h, 1)));
}

// N (<= 8) vectors of 8 int32 -> one vector whose lane j < N is the sum of v[j]'s lanes, 0 past N.
template <int N>
inline __m256i sum_each(const __m256i* v) {
  const __m256i z = _mm256_setzero_si256();
  auto at = [&](int j) { return j < N ? v[j] : z; };
  const __m256i a = _mm256_hadd_epi32(_mm256_hadd_epi32(at(0), at(1)), _mm256_hadd_epi32(at(2), at(3)));
  const __m256i b = _mm256_hadd_epi32(_mm256_hadd_epi32(at(4), at(5)), _mm256_hadd_epi32(at(6), at(7)));
  return _mm256_add_epi32(_mm256_permute2x128_si256(a, b, 0x20), _mm256_permute2x128_si256(a, b, 0x31));
}

// N (even, <= 8) float16 values -> floats in lanes 0..N-1, zeros past N; reads exactly N values.
template <int N>
inline __m256 load_halves(const uint16_t* p) {
  __m128i h;
  if constexpr (N == 8) {
    h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  } else if constexpr (N == 6) {
    int32_t tail;
    std::copy_n(reinterpret_cast<const char*>(p + 4), 4, reinterpret_cast<char*>(&tail));
    h = _mm_insert_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)), tail, 2);
  } else if constexpr (N == 4) {
    h = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
  } else {
    static_assert(N == 2, "groups are 2, 4, 6 or 8 blocks");
    int32_t two;
    std::copy_n(reinterpret_cast<const char*>(p), 4, reinterpret_cast<char*>(&two));
    h = _mm_cvtsi32_si128(two);
  }
  return _mm256_cvtph_ps(h);
}

// x's rows quantized per block: xq [B, in] int8 and, per block, dx (x ~ dx * xq) and the sum of the
// rounded x, dx * sum(xq) (for the m term). dx and xsum carry kMaxGroup zeros past the last row, so a group's 8-lane load
// never reads past them.
struct QuantizedX {
  static constexpr int64_t kRowsPerPass = radixlm::kernels::kRowsPerPass;
  int64_t in = 0, blocks = 0;
  std::vector<int8_t> xq;
  std::vector<float> dx, xsum;
};

// Quantizes x into q, reusing q's buffers (no allocation once they are large enough).
inline void quantize_x(const float* x, int64_t batch, int64_t in, QuantizedX& q) {
  const int64_t blocks = in / kBlock;
  q.in = in, q.blocks = blocks;
  q.xq.resize(batch * in);
  q.dx.assign(batch * blocks + kMaxGroup, 0.0f);
  q.xsum.assign(batch * blocks + kMaxGroup, 0.0f);
  const __m256 sign = _mm256_set1_ps(-0.0f);
  for (int64_t i = 0; i < batch * blocks; ++i) {
    __m256 f[4], amax = _mm256_setzero_ps();
    for (int j = 0; j < 4; ++j) {
      f[j] = _mm256_loadu_ps(x + i * kBlock + 8 * j);
      amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, f[j]));
    }
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    const float d = _mm_cvtss_f32(_mm_max_ss(m4, _mm_shuffle_ps(m4, m4, 1))) / 127.0f;
    const __m256 inv = _mm256_set1_ps(d > 0.0f ? 1.0f / d : 0.0f);
    __m256i n[4];
    for (int j = 0; j < 4; ++j) n[j] = _mm256_cvtps_epi32(_mm256_mul_ps(f[j], inv));  // round to nearest
    // the packs interleave 128-bit lanes; the permute restores the order of the 32 bytes
    const __m256i bytes = _mm256_permutevar8x32_epi32(
        _mm256_packs_epi16(_mm256_packs_epi32(n[0], n[1]), _mm256_packs_epi32(n[2], n[3])),
        _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q.xq.data() + i * kBlock), bytes);
    q.dx[i] = d;
    // the sum of the rounded x, so both terms multiply the same x: the error is then sum_j w_j (x'_j - x_j),
    // not (w_j - m) (x'_j - x_j), which all share m's sign
    const __m256i total = _mm256_add_epi32(_mm256_add_epi32(n[0], n[1]), _mm256_add_epi32(n[2], n[3]));
    q.xsum[i] = d * reduce(_mm256_cvtepi32_ps(total));
  }
}

// The two block formats: how a row's blocks k and k + 1 load, and their integer dot with xq.
struct Q4 {
  static constexpr int64_t kBytesPerBlock = kBlock / 2;
  static constexpr bool kOffset = true;
  static void load_pair(const uint8_t* blocks, __m256i& first, __m256i& second) {
    const __m256i bytes = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blocks));
    const __m256i mask = _mm256_set1_epi8(0x0F);
    first = _mm256_and_si256(bytes, mask);
    second = _mm256_and_si256(_mm256_srli_epi16(bytes, 4), mask);
  }
  static __m256i dot(__m256i w, __m256i xq) { return dot_u8_s8(w, xq); }
};

struct Q8 {
  static constexpr int64_t kBytesPerBlock = kBlock;
  static constexpr bool kOffset = false;
  static void load_pair(const uint8_t* blocks, __m256i& first, __m256i& second) {
    first = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blocks));
    second = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blocks + kBlock));
  }
  // |xq| * (w with xq's sign) = w * xq, in the unsigned x signed form the instructions take
  static __m256i dot(__m256i w, __m256i xq) { return dot_u8_s8(_mm256_abs_epi8(xq), _mm256_sign_epi8(w, xq)); }
};

// Output rows [begin, end) against the B rows of x, N blocks (N / 2 pairs) at a time: the N integer
// dots are summed lane-wise into one vector and scaled by d * dx per block in one multiply.
template <class Format, int B, int N>
void rows_dot(const QuantizedX& x, int64_t first_row, const uint8_t* weights, const uint16_t* d, const uint16_t* m,
              int64_t out, int64_t begin, int64_t end, float* y) {
  const int64_t blocks = x.blocks;
  const int64_t row_bytes = blocks * Format::kBytesPerBlock;
  for (int64_t r = begin; r < end; ++r) {
    const uint8_t* row = weights + r * row_bytes;
    if (r + kPrefetchRows < end) {
      for (int64_t off = 0; off < row_bytes; off += 64) _mm_prefetch(reinterpret_cast<const char*>(row + kPrefetchRows * row_bytes + off), _MM_HINT_T0);
    }
    __m256 acc[B], offset[B];
    for (int b = 0; b < B; ++b) acc[b] = offset[b] = _mm256_setzero_ps();
    for (int64_t k0 = 0; k0 < blocks; k0 += N) {
      __m256i w[N];
      for (int p = 0; p < N / 2; ++p) Format::load_pair(row + (k0 + 2 * p) * Format::kBytesPerBlock, w[2 * p], w[2 * p + 1]);
      const __m256 d8 = load_halves<N>(d + r * blocks + k0);
      for (int b = 0; b < B; ++b) {
        const int8_t* xq = x.xq.data() + (first_row + b) * x.in + k0 * kBlock;
        __m256i dots[N];
        for (int j = 0; j < N; ++j)
          dots[j] = Format::dot(w[j], _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + j * kBlock)));
        const __m256 dx8 = _mm256_loadu_ps(x.dx.data() + (first_row + b) * blocks + k0);
        acc[b] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum_each<N>(dots)), _mm256_mul_ps(d8, dx8), acc[b]);
        if constexpr (Format::kOffset) {
          const __m256 xsum8 = _mm256_loadu_ps(x.xsum.data() + (first_row + b) * blocks + k0);
          offset[b] = _mm256_fmadd_ps(load_halves<N>(m + r * blocks + k0), xsum8, offset[b]);
        }
      }
    }
    for (int b = 0; b < B; ++b) y[(first_row + b) * out + r] = reduce(_mm256_add_ps(acc[b], offset[b]));
  }
}

template <class Format, int B>
void rows_of(const QuantizedX& x, int64_t first_row, const uint8_t* weights, const uint16_t* d, const uint16_t* m,
             int64_t out, int64_t begin, int64_t end, float* y) {
  // the largest group dividing the row's (even) block count
  switch (x.blocks % 8 == 0 ? 8 : x.blocks % 6 == 0 ? 6 : x.blocks % 4 == 0 ? 4 : 2) {
    case 8: rows_dot<Format, B, 8>(x, first_row, weights, d, m, out, begin, end, y); break;
    case 6: rows_dot<Format, B, 6>(x, first_row, weights, d, m, out, begin, end, y); break;
    case 4: rows_dot<Format, B, 4>(x, first_row, weights, d, m, out, begin, end, y); break;
    default: rows_dot<Format, B, 2>(x, first_row, weights, d, m, out, begin, end, y); break;
  }
}

// The exact products' vectors: 16 floats with AVX-512, 8 with AVX2.
#if defined(__AVX512F__)
using Vec = __m512;
constexpr int kLanes = 16;
inline Vec vzero() { return _mm512_setzero_ps(); }
inline Vec vload(const float* p) { return _mm512_loadu_ps(p); }
inline Vec vfma(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); }
inline Vec vadd(Vec a, Vec b) { return _mm512_add_ps(a, b); }
inline float vsum(Vec v) { return _mm512_reduce_add_ps(v); }
inline Vec vset(const float* p) { return _mm512_set1_ps(*p); }
#else
using Vec = __m256;
constexpr int kLanes = 8;
inline Vec vzero() { return _mm256_setzero_ps(); }
inline Vec vload(const float* p) { return _mm256_loadu_ps(p); }
inline Vec vfma(Vec a, Vec b, Vec c) { return _mm256_fmadd_ps(a, b, c); }
inline Vec vadd(Vec a, Vec b) { return _mm256_add_ps(a, b); }
inline float vsum(Vec v) { return reduce(v); }
inline Vec vset(const float* p) { return _mm256_set1_ps(*p); }
#endif
constexpr int kPairVectors = 2 * kBlock / kLanes;  // a pair of blocks' weights in vectors

// A pair of blocks' 64 weights as float32 vectors, the first block's 32 then the second's, each exactly
// d * q + m (Q4_1) or d * q (Q8_0): one rounding of q * d + m, where q * d is exact in float32. d and m:
// the two blocks' scales and offsets as float32.
template <class Format>
void exact_pair(const uint8_t* pair, const float* d, const float* m, Vec* w);

template <>
inline void exact_pair<Q4>(const uint8_t* pair, const float* d, const float* m, Vec* w) {
#if defined(__AVX512F__)
  // a block's 16 possible weights in one vector, picked by code (the low 4 bits of each lane)
  const __m512 codes = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512 first = _mm512_fmadd_ps(codes, vset(d), vset(m)), second = _mm512_fmadd_ps(codes, vset(d + 1), vset(m + 1));
  const __m512i low = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(pair)));
  const __m512i high = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(pair + 16)));
  w[0] = _mm512_permutexvar_ps(low, first);
  w[1] = _mm512_permutexvar_ps(high, first);
  w[2] = _mm512_permutexvar_ps(_mm512_srli_epi32(low, 4), second);
  w[3] = _mm512_permutexvar_ps(_mm512_srli_epi32(high, 4), second);
#else
  const __m256 da = vset(d), ma = vset(m), db = vset(d + 1), mb = vset(m + 1);
  for (int j = 0; j < 4; ++j) {
    const __m256i bytes = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(pair + 8 * j)));
    w[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(bytes, _mm256_set1_epi32(0x0F))), da, ma);
    w[4 + j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(bytes, 4)), db, mb);
  }
#endif
}

template <>
inline void exact_pair<Q8>(const uint8_t* pair, const float* d, const float*, Vec* w) {
  for (int i = 0; i < kPairVectors; ++i) {
    const auto* p = reinterpret_cast<const __m128i*>(pair + i * kLanes);
    const Vec scale = vset(d + i / (kPairVectors / 2));
#if defined(__AVX512F__)
    w[i] = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p))), scale);
#else
    w[i] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(p))), scale);
#endif
  }
}

// x in float32, for the exact products: rows [B, in].
struct FloatX {
  static constexpr int64_t kRowsPerPass = kLanes == 16 ? 4 : 2;  // four accumulators per row: the registers
  const float* x;
  int64_t in;
};

// Blocks of a row whose scales and offsets are converted to float32 at once.
constexpr int64_t kSpan = 64;

// n (<= kSpan) float16 values -> float32 in `to`
inline void halves_to_floats(const uint16_t* from, int64_t n, float* to) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(to + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(from + i))));
  for (; i < n; ++i) to[i] = _cvtsh_ss(from[i]);
}

// The exact product of output rows [begin, end) with the B rows of float32 x: per pair of blocks, the
// 64 weights become floats once and multiply-add into four accumulators per row, summed in the same
// order whatever B is.
template <class Format, int B>
void rows_dot_exact(const FloatX& x, int64_t first_row, const uint8_t* weights, const uint16_t* d, const uint16_t* m,
                    int64_t out, int64_t begin, int64_t end, float* y) {
  const int64_t blocks = x.in / kBlock;
  const int64_t row_bytes = blocks * Format::kBytesPerBlock;
  for (int64_t r = begin; r < end; ++r) {
    const uint8_t* row = weights + r * row_bytes;
    if (r + kPrefetchRows < end) {
      for (int64_t off = 0; off < row_bytes; off += 64) _mm_prefetch(reinterpret_cast<const char*>(row + kPrefetchRows * row_bytes + off), _MM_HINT_T0);
    }
    Vec acc[B][4];
    for (int b = 0; b < B; ++b)
      for (int i = 0; i < 4; ++i) acc[b][i] = vzero();
    float ds[kSpan], ms[kSpan];
    for (int64_t span = 0; span < blocks; span += kSpan) {
      const int64_t n = std::min(kSpan, blocks - span);
      halves_to_floats(d + r * blocks + span, n, ds);
      if constexpr (Format::kOffset) halves_to_floats(m + r * blocks + span, n, ms);
      for (int64_t k = span; k < span + n; k += 2) {
        Vec w[kPairVectors];
        exact_pair<Format>(row + k * Format::kBytesPerBlock, ds + (k - span), ms + (k - span), w);
        for (int b = 0; b < B; ++b) {
          const float* xk = x.x + (first_row + b) * x.in + k * kBlock;  // the pair's 64 values of x
          for (int i = 0; i < kPairVectors; ++i) acc[b][i % 4] = vfma(w[i], vload(xk + i * kLanes), acc[b][i % 4]);
        }
      }
    }
    for (int b = 0; b < B; ++b) y[(first_row + b) * out + r] = vsum(vadd(vadd(acc[b][0], acc[b][1]), vadd(acc[b][2], acc[b][3])));
  }
}

// x's rows [first_row, first_row + rows) (rows <= FloatX::kRowsPerPass) against output rows [begin, end).
template <class Format>
void rows_of_batch(const FloatX& x, int64_t first_row, int64_t rows, const uint8_t* weights, const uint16_t* d,
                   const uint16_t* m, int64_t out, int64_t begin, int64_t end, float* y) {
  switch (rows) {
    case 1: rows_dot_exact<Format, 1>(x, first_row, weights, d, m, out, begin, end, y); break;
    case 2: rows_dot_exact<Format, 2>(x, first_row, weights, d, m, out, begin, end, y); break;
    case 3: if constexpr (FloatX::kRowsPerPass >= 3) rows_dot_exact<Format, 3>(x, first_row, weights, d, m, out, begin, end, y); break;
    case 4: if constexpr (FloatX::kRowsPerPass >= 4) rows_dot_exact<Format, 4>(x, first_row, weights, d, m, out, begin, end, y); break;
    default: break;  // no rows: nothing to compute
  }
}

// x's rows [first_row, first_row + rows) (rows <= kRowsPerPass) against output rows [begin, end).
template <class Format>
void rows_of_batch(const QuantizedX& x, int64_t first_row, int64_t rows, const uint8_t* weights, const uint16_t* d,
                   const uint16_t* m, int64_t out, int64_t begin, int64_t end, float* y) {
  switch (rows) {
    case 1: rows_of<Format, 1>(x, first_row, weights, d, m, out, begin, end, y); break;
    case 2: rows_of<Format, 2>(x, first_row, weights, d, m, out, begin, end, y); break;
    case 3: rows_of<Format, 3>(x, first_row, weights, d, m, out, begin, end, y); break;
    case 4: rows_of<Format, 4>(x, first_row, weights, d, m, out, begin, end, y); break;
    case 5: rows_of<Format, 5>(x, first_row, weights, d, m, out, begin, end, y); break;
    case 6: rows_of<Format, 6>(x, first_row, weights, d, m, out, begin, end, y); break;
    case 7: rows_of<Format, 7>(x, first_row, weights, d, m, out, begin, end, y); break;
    case 8: rows_of<Format, 8>(x, first_row, weights, d, m, out, begin, end, y); break;
    default: break;  // no rows: nothing to compute
  }
}

// Output rows of a block of weights read for every batch of kRowsPerPass rows of x while they are in L1.
constexpr int64_t kRowsPerBlock = 32;

// Output rows [begin, end) of y [batch, out] = x times the weight, for the batch rows of x (quantized
// or float32), on the calling thread: X::kRowsPerPass rows of x at a time, each weight byte read once per
// X::kRowsPerPass rows.
template <class Format, class X>
void gemv_rows(const X& x, int64_t batch, const uint8_t* weights, const uint16_t* d, const uint16_t* m,
               int64_t out, int64_t begin, int64_t end, float* y) {
  if (batch <= X::kRowsPerPass) {
    rows_of_batch<Format>(x, 0, batch, weights, d, m, out, begin, end, y);
    return;
  }
  for (int64_t r = begin; r < end; r += kRowsPerBlock)
    for (int64_t first = 0; first < batch; first += X::kRowsPerPass)
      rows_of_batch<Format>(x, first, std::min(X::kRowsPerPass, batch - first), weights, d, m, out, r,
                            std::min(r + kRowsPerBlock, end), y);
}

// All of y, the rows split over torch's threads.
template <class Format, class X>
void gemv(const X& x, int64_t batch, const uint8_t* weights, const uint16_t* d, const uint16_t* m,
          int64_t out, float* y) {
  at::parallel_for(0, out, 16, [&](int64_t begin, int64_t end) { gemv_rows<Format>(x, batch, weights, d, m, out, begin, end, y); });
}

}  // namespace radixlm::kernels
