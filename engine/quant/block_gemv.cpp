// The ops radixlm::q4_gemv(x, packed, d, m) and radixlm::q8_gemv(x, q, d): x [B, in] float32 times a
// 4-bit (Q4_1) or 8-bit (Q8_0) block-quantized weight [out, in] -> [B, out] float32, x quantized per
// block for an integer dot; q4_gemv_exact and q8_gemv_exact: the float32 products with the blocks' own
// weights (see block_dot.h).
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "block_dot.h"

namespace {

using namespace radixlm::kernels;

template <class Format>
at::Tensor block_gemv(const char* op, const at::Tensor& x, const at::Tensor& weights, const at::Tensor& d,
                      const at::Tensor* m, bool exact) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat, op, ": x must be a float32 [B, in] matrix");
  TORCH_CHECK(weights.dim() == 2, op, ": the weight codes must be a matrix");
  TORCH_CHECK(d.dim() == 2 && d.scalar_type() == at::kHalf && (m == nullptr || (m->scalar_type() == at::kHalf && m->sizes() == d.sizes())),
              op, ": the scales must be float16 [out, in / 32]");
  const int64_t batch = x.size(0), in = x.size(1), out = weights.size(0);
  TORCH_CHECK(in % (2 * kBlock) == 0, op, ": in must be a multiple of ", 2 * kBlock, ", got ", in);
  TORCH_CHECK(weights.size(1) * kBlock == in * Format::kBytesPerBlock && d.size(0) == out && d.size(1) * kBlock == in,
              op, ": x has ", in, " columns; the codes ", weights.sizes(), " and scales ", d.sizes(), " do not match");
  const at::Tensor xc = x.contiguous(), wc = weights.contiguous(), dc = d.contiguous();
  const at::Tensor mc = m != nullptr ? m->contiguous() : at::Tensor();
  at::Tensor y = at::empty({batch, out}, xc.options());
  const auto* wp = static_cast<const uint8_t*>(wc.data_ptr());
  const uint16_t* dp = reinterpret_cast<const uint16_t*>(dc.data_ptr<at::Half>());
  const uint16_t* mp = m != nullptr ? reinterpret_cast<const uint16_t*>(mc.data_ptr<at::Half>()) : nullptr;
  float* yp = y.data_ptr<float>();
  if (exact) {
    gemv<Format>(FloatX{xc.data_ptr<float>(), in}, batch, wp, dp, mp, out, yp);
  } else {
    QuantizedX qx;
    quantize_x(xc.data_ptr<float>(), batch, in, qx);
    gemv<Format>(qx, batch, wp, dp, mp, out, yp);
  }
  return y;
}

template <bool Exact>
at::Tensor q4_gemv(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& d, const at::Tensor& m) {
  const char* op = Exact ? "q4_gemv_exact" : "q4_gemv";
  TORCH_CHECK(packed.scalar_type() == at::kByte, op, ": packed must be uint8 [out, in / 2]");
  return block_gemv<Q4>(op, x, packed, d, &m, Exact);
}

template <bool Exact>
at::Tensor q8_gemv(const at::Tensor& x, const at::Tensor& q, const at::Tensor& d) {
  const char* op = Exact ? "q8_gemv_exact" : "q8_gemv";
  TORCH_CHECK(q.scalar_type() == at::kChar, op, ": q must be int8 [out, in]");
  return block_gemv<Q8>(op, x, q, d, nullptr, Exact);
}

}  // namespace

TORCH_LIBRARY(radixlm, m) {
  m.def("q4_gemv(Tensor x, Tensor packed, Tensor d, Tensor m) -> Tensor");
  m.def("q8_gemv(Tensor x, Tensor q, Tensor d) -> Tensor");
  m.def("q4_gemv_exact(Tensor x, Tensor packed, Tensor d, Tensor m) -> Tensor");
  m.def("q8_gemv_exact(Tensor x, Tensor q, Tensor d) -> Tensor");
}

TORCH_LIBRARY_IMPL(radixlm, CPU, m) {
  m.impl("q4_gemv", &q4_gemv<false>);
  m.impl("q8_gemv", &q8_gemv<false>);
  m.impl("q4_gemv_exact", &q4_gemv<true>);
  m.impl("q8_gemv_exact", &q8_gemv<true>);
}
