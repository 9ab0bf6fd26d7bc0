// paddlenlp_ext_bfloat16_gemv(x, w) = x @ w^T for a few rows of bfloat16 activations
// x [..., K] and a bfloat16 weight matrix w [N, K] (stored [out, in]); float32
// accumulation, the result rounded to bfloat16 (round to nearest even), as oneDNN's
// bfloat16 matmul returns it.
//
// paddlenlp_ext_bfloat16_batched_matmul_t(x, y) = x @ y^T and
// paddlenlp_ext_bfloat16_batched_matmul(x, y) = x @ y, per batch, for a few rows
// x [..., M, K] and bfloat16 matrices y [..., N, K] (or [..., K, N]), the batch dims
// broadcast as matmul broadcasts them: a decode step's attention over its KV cache
// (the scores q @ K^T and the weighted values p @ V, one head a batch), where oneDNN's
// bfloat16 matmul took about 4 ms for the two at 2176 positions of a llama2-7B layer on
// one Zen 4 thread (about 9 GB/s: a step's 2.2 ms saved plus these kernels' 1.9).
//
// Why: a decode step multiplies one row per sequence by every weight matrix, so it waits
// on reading the weights. oneDNN 3.6's bfloat16 matmul (Paddle 3.3.1) repacks the weights
// on every call at one row and reads them at about 11 GB/s on one Zen 4 core; this kernel
// streams each row of w once per call with AVX512-BF16's vdpbf16ps, at the core's
// bandwidth (about 24 GB/s, as fast as MKL's float32 GEMV reads). Rows of w are split
// between the OpenMP threads of the runtime Paddle's oneDNN and MKL use (libiomp5, linked
// at build time), so the count Paddle Inference sets (set_cpu_math_library_num_threads)
// applies and no second thread pool competes with oneDNN's.
#include <immintrin.h>
#include <omp.h>

#include <cstdint>
#include <vector>

#include "batched_matmul.h"
#include "bfloat16.h"
#include "paddle/extension.h"

namespace {

using paddlenlp_ext::Bfloat16ToFloat;
using paddlenlp_ext::RoundToBfloat16;

constexpr int64_t kRowsPerTask = 64;  // of w: 512 KiB at K 4096, split between threads

#define BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

BF16_TARGET inline __m512 DotStep(__m512 sum, __m512bh x, const uint16_t* w) {
  return _mm512_dpbf16_ps(sum, x, (__m512bh)_mm512_loadu_si512(w));
}

BF16_TARGET inline __m512 DotTail(__m512 sum, const uint16_t* x, const uint16_t* w, __mmask32 tail) {
  return _mm512_dpbf16_ps(sum, (__m512bh)_mm512_maskz_loadu_epi16(tail, x),
                          (__m512bh)_mm512_maskz_loadu_epi16(tail, w));
}

constexpr int kBlockRows = 8;      // of w, read side by side (8 streams: one core's bandwidth)
constexpr int kPrefetchRows = 2;   // each load also prefetches the row this far below it

// y[m, n] for every row m of x and n in [n0, n1): kBlockRows rows of w at a time, each
// read from memory once and from cache for the other rows of x.
//
// Measured on one Zen 4 core, [11008, 4096] bfloat16 matrices not in cache (median GB/s):
// 4 rows side by side 18.0, 8 rows 20.8, 8 rows each prefetching the row 1-3 below 22.6
// (so the last rows of a block start the next block's). Two threads read about 30 either
// way: the memory, not the core, is then the limit.
BF16_TARGET void ProductRows(const uint16_t* x, const uint16_t* w, uint16_t* y, int64_t rows,
                             int64_t n_total, int64_t k_total, int64_t n0, int64_t n1) {
  const int64_t k_body = k_total / 32 * 32;
  const __mmask32 tail = static_cast<__mmask32>((1ull << (k_total - k_body)) - 1);
  int64_t n = n0;
  for (; n + kBlockRows <= n1; n += kBlockRows) {
    const uint16_t* block = w + n * k_total;
    // Prefetches stay inside this call's rows: the last block prefetches itself.
    const uint16_t* ahead = n + kBlockRows + kPrefetchRows <= n1 ? block + kPrefetchRows * k_total : block;
    for (int64_t m = 0; m < rows; ++m) {
      const uint16_t* xm = x + m * k_total;
      __m512 sums[kBlockRows];
      for (int r = 0; r < kBlockRows; ++r) sums[r] = _mm512_setzero_ps();
      for (int64_t k = 0; k < k_body; k += 32) {
        const __m512bh xk = (__m512bh)_mm512_loadu_si512(xm + k);
#pragma GCC unroll 8
        for (int r = 0; r < kBlockRows; ++r) {
          _mm_prefetch(reinterpret_cast<const char*>(ahead + r * k_total + k), _MM_HINT_T0);
          sums[r] = DotStep(sums[r], xk, block + r * k_total + k);
        }
      }
      if (tail) {
        for (int r = 0; r < kBlockRows; ++r) sums[r] = DotTail(sums[r], xm + k_body, block + r * k_total + k_body, tail);
      }
      uint16_t* ym = y + m * n_total + n;
      for (int r = 0; r < kBlockRows; ++r) ym[r] = RoundToBfloat16(_mm512_reduce_add_ps(sums[r]));
    }
  }
  for (; n < n1; ++n) {
    const uint16_t* wn = w + n * k_total;
    for (int64_t m = 0; m < rows; ++m) {
      const uint16_t* xm = x + m * k_total;
      __m512 sum = _mm512_setzero_ps();
      for (int64_t k = 0; k < k_body; k += 32) sum = DotStep(sum, (__m512bh)_mm512_loadu_si512(xm + k), wn + k);
      if (tail) sum = DotTail(sum, xm + k_body, wn + k_body, tail);
      y[m * n_total + n] = RoundToBfloat16(_mm512_reduce_add_ps(sum));
    }
  }
}

// The transposed product for short rows of w (an attention head's keys: up to kShortK
// values): the rows read one after another, each in order (one stream in address
// order), x's row held in registers; kShortRows rows' sums reduced together by a tree of
// shuffles into one register, rounded to bfloat16 in a register. Rows past the last full
// block go to ProductRows. Measured on one Zen 4 core, [69632, 128] bfloat16 not in cache:
// ProductRows (8 rows side by side, for long rows) 9 GB/s, this order 19-20 GB/s;
// prefetching two blocks ahead made it slower (16 GB/s).
constexpr int kShortRows = 16;
constexpr int64_t kShortK = 256;

// RoundToBfloat16 of each lane.
BF16_TARGET inline __m256i RoundEachToBfloat16(__m512 values) {
  const __m512i bits = _mm512_castps_si512(values);
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  const __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(bits, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff))), 16);
  const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(bits, _mm512_set1_epi32(0x7fffffff)),
                                                _mm512_set1_epi32(0x7f800000));
  const __m512i quiet = _mm512_or_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(0x40));
  return _mm512_cvtepi32_epi16(_mm512_mask_blend_epi32(nan, rounded, quiet));
}

BF16_TARGET void ProductShortRows(const uint16_t* x, const uint16_t* w, uint16_t* y, int64_t rows,
                                  int64_t n_total, int64_t k_total, int64_t n0, int64_t n1) {
  const int64_t k_body = k_total / 32 * 32;
  const int steps = static_cast<int>(k_body / 32);
  const __mmask32 tail = static_cast<__mmask32>((1ull << (k_total - k_body)) - 1);
  for (int64_t m = 0; m < rows; ++m) {
    const uint16_t* xm = x + m * k_total;
    __m512bh xk[kShortK / 32];
    for (int k = 0; k < steps; ++k) xk[k] = (__m512bh)_mm512_loadu_si512(xm + 32 * k);
    int64_t n = n0;
    for (; n + kShortRows <= n1; n += kShortRows) {
      // Row by row, each row's values in order: one stream through memory, in address order.
      const uint16_t* block = w + n * k_total;
      __m512 sums[kShortRows];
#pragma GCC unroll 16
      for (int r = 0; r < kShortRows; ++r) {
        __m512 sum = _mm512_setzero_ps();
        for (int k = 0; k < steps; ++k) sum = DotStep(sum, xk[k], block + r * k_total + 32 * k);
        sums[r] = tail ? DotTail(sum, xm + k_body, block + r * k_total + k_body, tail) : sum;
      }
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + m * n_total + n), RoundEachToBfloat16(paddlenlp_ext::SumEach(sums)));
    }
    if (n < n1) ProductRows(xm, w, y + m * n_total, 1, n_total, k_total, n, n1);
  }
}

struct Bfloat16 {  // batched_matmul.h's WeightedRows in bfloat16: float32 sums rounded once
  static float Widen(uint16_t value) { return Bfloat16ToFloat(value); }
  BF16_TARGET static __m512 Load(__mmask16 mask, const uint16_t* values) {
    const __m512i wide = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, values));
    return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
  }
  BF16_TARGET static void Store(uint16_t* out, __mmask16 mask, __m512 sums) {
    _mm256_mask_storeu_epi16(out, mask, RoundEachToBfloat16(sums));
  }
};
constexpr auto WeightedRows = paddlenlp_ext::WeightedRows<uint16_t, Bfloat16>;

// One batch's transposed product: short rows (an attention head's keys) one after another,
// long ones side by side.
void Scores(const uint16_t* x, const uint16_t* w, uint16_t* y, int64_t rows, int64_t n_total, int64_t k_total,
            int64_t n0, int64_t n1) {
  (k_total <= kShortK ? ProductShortRows : ProductRows)(x, w, y, rows, n_total, k_total, n0, n1);
}

std::vector<paddle::Tensor> BatchedForwardT(const paddle::Tensor& x, const paddle::Tensor& y) {
  return paddlenlp_ext::BatchedProduct<uint16_t>(x, y, true, paddle::DataType::BFLOAT16,
                                                 "paddlenlp_ext_bfloat16_batched_matmul", Scores, WeightedRows);
}

std::vector<paddle::Tensor> BatchedForwardN(const paddle::Tensor& x, const paddle::Tensor& y) {
  return paddlenlp_ext::BatchedProduct<uint16_t>(x, y, false, paddle::DataType::BFLOAT16,
                                                 "paddlenlp_ext_bfloat16_batched_matmul", Scores, WeightedRows);
}

std::vector<paddle::Tensor> Forward(const paddle::Tensor& x_in, const paddle::Tensor& w_in) {
  PD_CHECK(x_in.is_cpu() && w_in.is_cpu(), "paddlenlp_ext_bfloat16_gemv runs on CPU tensors only");
  PD_CHECK(x_in.dtype() == paddle::DataType::BFLOAT16 && w_in.dtype() == paddle::DataType::BFLOAT16,
           "paddlenlp_ext_bfloat16_gemv takes bfloat16 tensors");
  const std::vector<int64_t> x_shape = x_in.shape(), w_shape = w_in.shape();
  PD_CHECK(w_shape.size() == 2 && !x_shape.empty() && x_shape.back() == w_shape[1],
           "paddlenlp_ext_bfloat16_gemv: x [..., K] and w [N, K] expected");
  const paddle::Tensor x = x_in.is_contiguous() ? x_in : x_in.contiguous();
  const paddle::Tensor w = w_in.is_contiguous() ? w_in : w_in.contiguous();
  const int64_t n_total = w_shape[0], k_total = w_shape[1];
  const int64_t rows = k_total == 0 ? 0 : x.numel() / k_total;
  std::vector<int64_t> out_shape(x_shape);
  out_shape.back() = n_total;
  paddle::Tensor out = paddle::empty(out_shape, paddle::DataType::BFLOAT16, x.place());
  const auto* xp = static_cast<const uint16_t*>(x.data());
  const auto* wp = static_cast<const uint16_t*>(w.data());
  auto* yp = static_cast<uint16_t*>(out.data());
  const int64_t tasks = (n_total + kRowsPerTask - 1) / kRowsPerTask;
#pragma omp parallel for schedule(static)
  for (int64_t task = 0; task < tasks; ++task) {
    const int64_t n0 = task * kRowsPerTask;
    const int64_t n1 = n0 + kRowsPerTask < n_total ? n0 + kRowsPerTask : n_total;
    ProductRows(xp, wp, yp, rows, n_total, k_total, n0, n1);
  }
  return {out};
}

std::vector<std::vector<int64_t>> InferShape(const std::vector<int64_t>& x_shape,
                                             const std::vector<int64_t>& w_shape) {
  std::vector<int64_t> out_shape(x_shape);
  out_shape.back() = w_shape[0];
  return {out_shape};
}

std::vector<paddle::DataType> InferDtype(const paddle::DataType& x_dtype, const paddle::DataType&) {
  return {x_dtype};
}

}  // namespace

PD_BUILD_OP(paddlenlp_ext_bfloat16_gemv)
    .Inputs({"X", "W"})
    .Outputs({"Out"})
    .SetKernelFn(PD_KERNEL(Forward))
    .SetInferShapeFn(PD_INFER_SHAPE(InferShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(InferDtype));

PD_BUILD_OP(paddlenlp_ext_bfloat16_batched_matmul_t)
    .Inputs({"X", "Y"})
    .Outputs({"Out"})
    .SetKernelFn(PD_KERNEL(BatchedForwardT))
    .SetInferShapeFn(PD_INFER_SHAPE(paddlenlp_ext::BatchedShapeT))
    .SetInferDtypeFn(PD_INFER_DTYPE(InferDtype));

PD_BUILD_OP(paddlenlp_ext_bfloat16_batched_matmul)
    .Inputs({"X", "Y"})
    .Outputs({"Out"})
    .SetKernelFn(PD_KERNEL(BatchedForwardN))
    .SetInferShapeFn(PD_INFER_SHAPE(paddlenlp_ext::BatchedShapeN))
    .SetInferDtypeFn(PD_INFER_DTYPE(InferDtype));
