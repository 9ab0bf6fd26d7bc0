// paddlenlp_ext_rms_norm(x, w){epsilon}: PaddleNLP 2.8.1's LlamaRMSNorm as one op, for a
// decode step's few rows (passes/loop_rms_norm.py rewrites the loop's op chain to it).
//
// LlamaRMSNorm computes, for each row of x (its last dimension, h values):
//   c = float32(x); r = rsqrt(mean(c * c) + epsilon); n = r * c
//   out = cast(n, w's dtype) * w          (the cast only when w is bfloat16 or float16)
// which a static program runs as eight ops (cast, pow, mean, scale, rsqrt, multiply,
// cast, multiply), on oneDNN for most of them. Each costs Paddle's interpreter and
// oneDNN's per-call work (30-95 us a call on a Zen 4 core, profiled) for 4096 values.
// Here: one pass to sum the squares (float32, 16 partial sums: the order differs from
// Paddle's reduction in the last bits), one to write the row, rounding n to bfloat16
// before the product as the cast does and the product to bfloat16 as Paddle's bfloat16
// multiply does.

#include <cmath>
#include <cstdint>
#include <vector>

#include "bfloat16.h"
#include "paddle/extension.h"

namespace {

constexpr int kPartialSums = 16;

using paddlenlp_ext::Bfloat16ToFloat;
using paddlenlp_ext::RoundToBfloat16;

struct Float32Values {
  using Element = float;
  static float Load(float value) { return value; }
  static float Store(float value) { return value; }
  static float Normalized(float value) { return value; }  // float32 weights: no cast before the product
};

struct Bfloat16Values {
  using Element = uint16_t;
  static float Load(uint16_t value) { return Bfloat16ToFloat(value); }
  static uint16_t Store(float value) { return RoundToBfloat16(value); }
  static float Normalized(float value) { return Bfloat16ToFloat(RoundToBfloat16(value)); }
};

template <typename Values>
void NormRows(const typename Values::Element* x, const typename Values::Element* w, typename Values::Element* y,
              int64_t rows, int64_t h, float epsilon) {
  for (int64_t row = 0; row < rows; ++row) {
    const typename Values::Element* xr = x + row * h;
    float partial[kPartialSums] = {};
    int64_t k = 0;
    for (; k + kPartialSums <= h; k += kPartialSums) {
      for (int j = 0; j < kPartialSums; ++j) {
        const float value = Values::Load(xr[k + j]);
        partial[j] += value * value;
      }
    }
    for (; k < h; ++k) {
      const float value = Values::Load(xr[k]);
      partial[k % kPartialSums] += value * value;
    }
    for (int width = kPartialSums / 2; width > 0; width /= 2) {
      for (int j = 0; j < width; ++j) partial[j] += partial[j + width];
    }
    const float scale = 1.0f / std::sqrt(partial[0] / static_cast<float>(h) + epsilon);
    typename Values::Element* yr = y + row * h;
    for (k = 0; k < h; ++k) {
      yr[k] = Values::Store(Values::Normalized(scale * Values::Load(xr[k])) * Values::Load(w[k]));
    }
  }
}

std::vector<paddle::Tensor> Forward(const paddle::Tensor& x_in, const paddle::Tensor& w_in, float epsilon) {
  PD_CHECK(x_in.is_cpu() && w_in.is_cpu(), "paddlenlp_ext_rms_norm runs on CPU tensors only");
  PD_CHECK(x_in.dtype() == w_in.dtype() &&
               (x_in.dtype() == paddle::DataType::FLOAT32 || x_in.dtype() == paddle::DataType::BFLOAT16),
           "paddlenlp_ext_rms_norm takes float32 or bfloat16 tensors, both of one dtype");
  const std::vector<int64_t> x_shape = x_in.shape(), w_shape = w_in.shape();
  PD_CHECK(w_shape.size() == 1 && !x_shape.empty() && x_shape.back() == w_shape[0],
           "paddlenlp_ext_rms_norm: x [..., H] and w [H] expected");
  const paddle::Tensor x = x_in.is_contiguous() ? x_in : x_in.contiguous();
  const paddle::Tensor w = w_in.is_contiguous() ? w_in : w_in.contiguous();
  paddle::Tensor out = paddle::empty(x_shape, x.dtype(), paddle::CPUPlace());
  const int64_t h = w_shape[0];
  const int64_t rows = h == 0 ? 0 : x.numel() / h;
  if (x.dtype() == paddle::DataType::FLOAT32) {
    NormRows<Float32Values>(x.data<float>(), w.data<float>(), out.data<float>(), rows, h, epsilon);
  } else {
    NormRows<Bfloat16Values>(reinterpret_cast<const uint16_t*>(x.data<paddle::bfloat16>()),
                             reinterpret_cast<const uint16_t*>(w.data<paddle::bfloat16>()),
                             reinterpret_cast<uint16_t*>(out.data<paddle::bfloat16>()), rows, h, epsilon);
  }
  return {out};
}

std::vector<std::vector<int64_t>> InferShape(const std::vector<int64_t>& x_shape, const std::vector<int64_t>&) {
  return {x_shape};
}

std::vector<paddle::DataType> InferDtype(const paddle::DataType& x_dtype, const paddle::DataType&) {
  return {x_dtype};
}

}  // namespace

PD_BUILD_OP(paddlenlp_ext_rms_norm)
    .Inputs({"X", "W"})
    .Outputs({"Out"})
    .Attrs({"epsilon: float"})
    .SetKernelFn(PD_KERNEL(Forward))
    .SetInferShapeFn(PD_INFER_SHAPE(InferShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(InferDtype));
