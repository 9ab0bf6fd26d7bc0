// paddlenlp_ext_float32_gemv(x, w) = x @ w for a few rows of float32 activations
// x [..., K] and a float32 weight matrix w [K, N] (stored [in, out], as Paddle's Linear
// keeps it and as pd_op.matmul reads it untransposed); float32 sums.
//
// Why: a decode step multiplies one row per sequence by every weight matrix, so it waits
// on reading the weights. MKL's GEMM (pd_op.addmm, passes.loop_weight_matmul) reads them
// at one core's bandwidth on AMD processors whatever the thread count: at llama2-7B's
// MLP shape, [1, 4096] x [4096, 11008] on a 2-vCPU Zen 4, 8.5-9.2 ms (19 GiB/s) on one
// thread and on two alike, where two threads can read 25-31 GiB/s; Zen 3 behaved the
// same. Here the threads (the OpenMP runtime of Paddle's oneDNN and MKL, libiomp5, so
// the count Paddle Inference sets applies) each take their share of w's rows, one
// contiguous run of memory a thread, and sum x's entries times those rows into rows of
// partial sums of their own (N floats a row of x: in the core's cache), added up at the
// end. kRowsAtOnce rows of w are read side by side (one stream each) into one register
// of partial sums (AddBlock). Measured on that Zen 4, the product above, not in cache,
// medians: 4 rows at once 8.1-8.2 ms on one thread, 16 rows 7.7-8.0; prefetching rows
// ahead made it slower (9.6).
#include <immintrin.h>
#include <omp.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "batched_matmul.h"
#include "paddle/extension.h"

namespace {

constexpr int kRowsAtOnce = 16;
constexpr int64_t kMinRowsPerThread = 64;  // of w: fewer, and a thread's start costs more than it reads

#define F32_TARGET __attribute__((target("avx512f")))

// partial[m, :] += sum over r < R of x[m, k + r] * w[k + r, :], for every row m of x:
// R rows of w read side by side into one register of partial sums at a time.
template <int R>
F32_TARGET void AddBlock(const float* x, const float* w, float* partial, int64_t rows, int64_t k_total,
                         int64_t n_total, int64_t k) {
  const int64_t n_body = n_total / 16 * 16;
  const __mmask16 tail = static_cast<__mmask16>((1u << (n_total - n_body)) - 1);
  const float* block = w + k * n_total;
  for (int64_t m = 0; m < rows; ++m) {
    __m512 a[R];
    for (int r = 0; r < R; ++r) a[r] = _mm512_set1_ps(x[m * k_total + k + r]);
    float* out = partial + m * n_total;
    for (int64_t j = 0; j < n_body; j += 16) {
      __m512 sum = _mm512_loadu_ps(out + j);
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) sum = _mm512_fmadd_ps(a[r], _mm512_loadu_ps(block + r * n_total + j), sum);
      _mm512_storeu_ps(out + j, sum);
    }
    if (tail) {
      __m512 sum = _mm512_maskz_loadu_ps(tail, out + n_body);
      for (int r = 0; r < R; ++r) {
        sum = _mm512_fmadd_ps(a[r], _mm512_maskz_loadu_ps(tail, block + r * n_total + n_body), sum);
      }
      _mm512_mask_storeu_ps(out + n_body, tail, sum);
    }
  }
}

// partial[m, :] += sum over k in [k0, k1) of x[m, k] * w[k, :], for every row m of x.
F32_TARGET void AddRows(const float* x, const float* w, float* partial, int64_t rows, int64_t k_total,
                        int64_t n_total, int64_t k0, int64_t k1) {
  int64_t k = k0;
  for (; k + kRowsAtOnce <= k1; k += kRowsAtOnce) AddBlock<kRowsAtOnce>(x, w, partial, rows, k_total, n_total, k);
  for (; k < k1; ++k) AddBlock<1>(x, w, partial, rows, k_total, n_total, k);
}

std::vector<paddle::Tensor> Forward(const paddle::Tensor& x_in, const paddle::Tensor& w_in) {
  PD_CHECK(x_in.is_cpu() && w_in.is_cpu(), "paddlenlp_ext_float32_gemv runs on CPU tensors only");
  PD_CHECK(x_in.dtype() == paddle::DataType::FLOAT32 && w_in.dtype() == paddle::DataType::FLOAT32,
           "paddlenlp_ext_float32_gemv takes float32 tensors");
  const std::vector<int64_t> x_shape = x_in.shape(), w_shape = w_in.shape();
  PD_CHECK(w_shape.size() == 2 && !x_shape.empty() && x_shape.back() == w_shape[0],
           "paddlenlp_ext_float32_gemv: x [..., K] and w [K, N] expected");
  const paddle::Tensor x = x_in.is_contiguous() ? x_in : x_in.contiguous();
  const paddle::Tensor w = w_in.is_contiguous() ? w_in : w_in.contiguous();
  const int64_t k_total = w_shape[0], n_total = w_shape[1];
  const int64_t rows = k_total == 0 ? 0 : x.numel() / k_total;
  std::vector<int64_t> out_shape(x_shape);
  out_shape.back() = n_total;
  paddle::Tensor out = paddle::empty(out_shape, paddle::DataType::FLOAT32, x.place());
  const auto* xp = static_cast<const float*>(x.data());
  const auto* wp = static_cast<const float*>(w.data());
  auto* yp = static_cast<float*>(out.data());
  const int64_t size = rows * n_total;
  int threads = omp_get_max_threads();
  const int64_t most = k_total / kMinRowsPerThread > 1 ? k_total / kMinRowsPerThread : 1;
  if (threads > most) threads = static_cast<int>(most);
  if (threads == 1) {  // the partial sums are the result
    std::memset(yp, 0, size * sizeof(float));
    AddRows(xp, wp, yp, rows, k_total, n_total, 0, k_total);
    return {out};
  }
  std::vector<float> partials(static_cast<size_t>(threads) * size, 0.0f);
#pragma omp parallel num_threads(threads)
  {
    const int id = omp_get_thread_num(), count = omp_get_num_threads();
    // Whole blocks of kRowsAtOnce rows a thread (the last takes the rest).
    const int64_t blocks = k_total / kRowsAtOnce;
    const int64_t k0 = blocks * id / count * kRowsAtOnce;
    const int64_t k1 = id + 1 == count ? k_total : blocks * (id + 1) / count * kRowsAtOnce;
    AddRows(xp, wp, partials.data() + id * size, rows, k_total, n_total, k0, k1);
#pragma omp barrier
#pragma omp for schedule(static)
    for (int64_t i = 0; i < size; ++i) {
      float sum = 0.0f;
      for (int t = 0; t < count; ++t) sum += partials[t * size + i];
      yp[i] = sum;
    }
  }
  return {out};
}

std::vector<std::vector<int64_t>> InferShape(const std::vector<int64_t>& x_shape,
                                             const std::vector<int64_t>& w_shape) {
  std::vector<int64_t> out_shape(x_shape);
  out_shape.back() = w_shape[1];
  return {out_shape};
}

std::vector<paddle::DataType> InferDtype(const paddle::DataType& x_dtype, const paddle::DataType&) {
  return {x_dtype};
}

// The batched products (batched_matmul.h) in float32: a float32 decode step's attention
// over its KV cache. Paddle 3.3.1's oneDNN float32 matmul read a llama2-7B layer's cache
// at 2081 positions at 11-17 GB/s on two Zen 4 threads (2.9 ms for the scores, 1.9 for
// the weighted values, profiled); on these kernels the step took 0.87x the time (paired
// with the same program on oneDNN, 12 rounds).
//
// ScoreRows: y[m, n] = x[m, :] . w[n, :] for n in [n0, n1): the rows of w read one after
// another, each in order (one stream in address order), kScoreRows rows' sums reduced
// together into one register (SumEach).
constexpr int kScoreRows = 16;

F32_TARGET inline __m512 Dot(const float* x, const float* w, int64_t k_body, __mmask16 tail) {
  __m512 sum = _mm512_setzero_ps();
  for (int64_t k = 0; k < k_body; k += 16) sum = _mm512_fmadd_ps(_mm512_loadu_ps(x + k), _mm512_loadu_ps(w + k), sum);
  if (tail) sum = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tail, x + k_body), _mm512_maskz_loadu_ps(tail, w + k_body), sum);
  return sum;
}

F32_TARGET void ScoreRows(const float* x, const float* w, float* y, int64_t rows, int64_t n_total, int64_t k_total,
                          int64_t n0, int64_t n1) {
  const int64_t k_body = k_total / 16 * 16;
  const __mmask16 tail = static_cast<__mmask16>((1u << (k_total - k_body)) - 1);
  for (int64_t m = 0; m < rows; ++m) {
    const float* xm = x + m * k_total;
    float* ym = y + m * n_total;
    int64_t n = n0;
    for (; n + kScoreRows <= n1; n += kScoreRows) {
      __m512 sums[kScoreRows];
#pragma GCC unroll 16
      for (int r = 0; r < kScoreRows; ++r) sums[r] = Dot(xm, w + (n + r) * k_total, k_body, tail);
      _mm512_storeu_ps(ym + n, paddlenlp_ext::SumEach(sums));
    }
    for (; n < n1; ++n) ym[n] = _mm512_reduce_add_ps(Dot(xm, w + n * k_total, k_body, tail));
  }
}

struct Float32 {  // batched_matmul.h's WeightedRows in float32
  static float Widen(float value) { return value; }
  F32_TARGET static __m512 Load(__mmask16 mask, const float* values) { return _mm512_maskz_loadu_ps(mask, values); }
  F32_TARGET static void Store(float* out, __mmask16 mask, __m512 sums) { _mm512_mask_storeu_ps(out, mask, sums); }
};
constexpr auto WeightedRows = paddlenlp_ext::WeightedRows<float, Float32>;

std::vector<paddle::Tensor> BatchedForwardT(const paddle::Tensor& x, const paddle::Tensor& y) {
  return paddlenlp_ext::BatchedProduct<float>(x, y, true, paddle::DataType::FLOAT32,
                                              "paddlenlp_ext_float32_batched_matmul", ScoreRows, WeightedRows);
}

std::vector<paddle::Tensor> BatchedForwardN(const paddle::Tensor& x, const paddle::Tensor& y) {
  return paddlenlp_ext::BatchedProduct<float>(x, y, false, paddle::DataType::FLOAT32,
                                              "paddlenlp_ext_float32_batched_matmul", ScoreRows, WeightedRows);
}

}  // namespace

PD_BUILD_OP(paddlenlp_ext_float32_gemv)
    .Inputs({"X", "W"})
    .Outputs({"Out"})
    .SetKernelFn(PD_KERNEL(Forward))
    .SetInferShapeFn(PD_INFER_SHAPE(InferShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(InferDtype));

PD_BUILD_OP(paddlenlp_ext_float32_batched_matmul_t)
    .Inputs({"X", "Y"})
    .Outputs({"Out"})
    .SetKernelFn(PD_KERNEL(BatchedForwardT))
    .SetInferShapeFn(PD_INFER_SHAPE(paddlenlp_ext::BatchedShapeT))
    .SetInferDtypeFn(PD_INFER_DTYPE(InferDtype));

PD_BUILD_OP(paddlenlp_ext_float32_batched_matmul)
    .Inputs({"X", "Y"})
    .Outputs({"Out"})
    .SetKernelFn(PD_KERNEL(BatchedForwardN))
    .SetInferShapeFn(PD_INFER_SHAPE(paddlenlp_ext::BatchedShapeN))
    .SetInferDtypeFn(PD_INFER_DTYPE(InferDtype));
