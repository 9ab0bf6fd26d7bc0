// What our batched kernels share (bfloat16_gemv.cc, float32_gemv.cc): x @ y^T or x @ y per
// batch, for a few rows x [..., M, K] and matrices y [..., N, K] (or [..., K, N]), the
// batch dims broadcast as matmul broadcasts them; a decode step's attention over its KV
// cache (the scores q @ K^T and the weighted values p @ V, one head a batch). Each dtype
// brings its two per-batch products; the checks, the result's shape and the split of the
// work between the OpenMP threads are written here once.
#pragma once

#include <immintrin.h>
#include <omp.h>

#include <cstdint>
#include <string>
#include <vector>

#include "paddle/extension.h"

namespace paddlenlp_ext {

// The batch dims of x, y and the result, right-aligned as matmul broadcasts them, and
// for each batch of the result the batch of x and of y it reads.
struct Batches {
  std::vector<int64_t> shape;  // the result's batch dims
  std::vector<int64_t> x_of, y_of;
};

inline Batches BroadcastBatches(const std::vector<int64_t>& x_shape, const std::vector<int64_t>& y_shape,
                                const std::string& op) {
  const size_t x_rank = x_shape.size() - 2, y_rank = y_shape.size() - 2;
  const size_t rank = x_rank > y_rank ? x_rank : y_rank;
  Batches batches;
  std::vector<int64_t> x_dims(rank, 1), y_dims(rank, 1);
  for (size_t i = 0; i < x_rank; ++i) x_dims[rank - x_rank + i] = x_shape[i];
  for (size_t i = 0; i < y_rank; ++i) y_dims[rank - y_rank + i] = y_shape[i];
  int64_t total = 1;
  for (size_t i = 0; i < rank; ++i) {
    PD_CHECK(x_dims[i] == y_dims[i] || x_dims[i] == 1 || y_dims[i] == 1, op, ": batch dims do not broadcast");
    batches.shape.push_back(x_dims[i] == 1 ? y_dims[i] : x_dims[i]);
    total *= batches.shape.back();
  }
  for (int64_t b = 0; b < total; ++b) {
    int64_t rest = b, x_index = 0, y_index = 0, x_stride = 1, y_stride = 1;
    for (size_t i = rank; i-- > 0;) {
      const int64_t at = rest % batches.shape[i];
      rest /= batches.shape[i];
      x_index += (x_dims[i] == 1 ? 0 : at) * x_stride;
      y_index += (y_dims[i] == 1 ? 0 : at) * y_stride;
      x_stride *= x_dims[i];
      y_stride *= y_dims[i];
    }
    batches.x_of.push_back(x_index);
    batches.y_of.push_back(y_index);
  }
  return batches;
}

// The result's shape as matmul infers it (-1: known at run time only).
inline std::vector<int64_t> BatchedShape(const std::vector<int64_t>& x_shape, const std::vector<int64_t>& y_shape,
                                         bool transpose_y) {
  const size_t x_rank = x_shape.size() - 2, y_rank = y_shape.size() - 2;
  const size_t rank = x_rank > y_rank ? x_rank : y_rank;
  std::vector<int64_t> shape;
  for (size_t i = 0; i < rank; ++i) {
    const int64_t a = i + x_rank >= rank ? x_shape[i + x_rank - rank] : 1;
    const int64_t b = i + y_rank >= rank ? y_shape[i + y_rank - rank] : 1;
    shape.push_back(a == 1 ? b : (b == 1 ? a : (a == -1 ? b : a)));
  }
  shape.push_back(x_shape[x_shape.size() - 2]);
  shape.push_back(transpose_y ? y_shape[y_shape.size() - 2] : y_shape.back());
  return shape;
}

inline std::vector<std::vector<int64_t>> BatchedShapeT(const std::vector<int64_t>& x, const std::vector<int64_t>& y) {
  return {BatchedShape(x, y, true)};
}

inline std::vector<std::vector<int64_t>> BatchedShapeN(const std::vector<int64_t>& x, const std::vector<int64_t>& y) {
  return {BatchedShape(x, y, false)};
}

constexpr int64_t kBatchedRowsPerTask = 64;  // of y, transposed: a task's share of one batch

// The batched product of x and y in `dtype` (Element its storage), run by `op`:
//   scores(x_b, y_b, out_b, rows, n_total, k_total, n0, n1): out_b[m, n0:n1] = x_b[m] . y_b[n]
//     (y_b [n_total, k_total]; the transposed product, split in tasks of kBatchedRowsPerTask
//     rows of y a batch),
//   weighted(x_b, y_b, out_b, rows, s_total, n_total): out_b = x_b @ y_b (y_b [s_total,
//     n_total]; one task a batch; WeightedRows below).
template <typename Element, typename Scores, typename Weighted>
std::vector<paddle::Tensor> BatchedProduct(const paddle::Tensor& x_in, const paddle::Tensor& y_in, bool transpose_y,
                                           paddle::DataType dtype, const std::string& op, Scores scores,
                                           Weighted weighted) {
  PD_CHECK(x_in.is_cpu() && y_in.is_cpu(), op, " runs on CPU tensors only");
  PD_CHECK(x_in.dtype() == dtype && y_in.dtype() == dtype, op, " takes tensors of one dtype, its own");
  const std::vector<int64_t> x_shape = x_in.shape(), y_shape = y_in.shape();
  PD_CHECK(x_shape.size() >= 2 && y_shape.size() >= 2, op, ": matrices expected");
  const int64_t rows = x_shape[x_shape.size() - 2], k_total = x_shape.back();
  const int64_t n_total = transpose_y ? y_shape[y_shape.size() - 2] : y_shape.back();
  PD_CHECK((transpose_y ? y_shape.back() : y_shape[y_shape.size() - 2]) == k_total, op, ": the inner dims differ");
  const Batches batches = BroadcastBatches(x_shape, y_shape, op);
  const paddle::Tensor x = x_in.is_contiguous() ? x_in : x_in.contiguous();
  const paddle::Tensor y = y_in.is_contiguous() ? y_in : y_in.contiguous();
  std::vector<int64_t> out_shape(batches.shape);
  out_shape.push_back(rows);
  out_shape.push_back(n_total);
  paddle::Tensor out = paddle::empty(out_shape, dtype, x.place());
  const auto* xp = static_cast<const Element*>(x.data());
  const auto* yp = static_cast<const Element*>(y.data());
  auto* op_out = static_cast<Element*>(out.data());
  const int64_t count = static_cast<int64_t>(batches.x_of.size());
  const int64_t x_size = rows * k_total, y_size = n_total * k_total, out_size = rows * n_total;
  if (transpose_y) {
    const int64_t per_batch = (n_total + kBatchedRowsPerTask - 1) / kBatchedRowsPerTask;
#pragma omp parallel for schedule(static)
    for (int64_t task = 0; task < count * per_batch; ++task) {
      const int64_t b = task / per_batch, n0 = task % per_batch * kBatchedRowsPerTask;
      const int64_t n1 = n0 + kBatchedRowsPerTask < n_total ? n0 + kBatchedRowsPerTask : n_total;
      scores(xp + batches.x_of[b] * x_size, yp + batches.y_of[b] * y_size, op_out + b * out_size, rows, n_total,
             k_total, n0, n1);
    }
  } else {
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < count; ++b) {
      weighted(xp + batches.x_of[b] * x_size, yp + batches.y_of[b] * y_size, op_out + b * out_size, rows, k_total,
               n_total);
    }
  }
  return {out};
}

// y[m, :] = sum_s x[m, s] * v[s, :] for one batch's x [rows, s_total] and v [s_total,
// n_total] of Element: float32 sums of kColumnsPerPass columns in registers, v's rows
// streamed in order. Traits: float Widen(Element), __m512 Load(__mmask16, const Element*)
// (16 values widened to float32) and Store(Element*, __mmask16, __m512).
constexpr int64_t kColumnsPerPass = 128;  // 8 registers of sums

template <typename Element, typename Traits>
__attribute__((target("avx512f,avx512bw,avx512vl"))) void WeightedRows(const Element* x, const Element* v, Element* y,
                                                                         int64_t rows, int64_t s_total,
                                                                         int64_t n_total) {
  for (int64_t n0 = 0; n0 < n_total; n0 += kColumnsPerPass) {
    const int64_t width = n_total - n0 < kColumnsPerPass ? n_total - n0 : kColumnsPerPass;
    const int vectors = static_cast<int>((width + 15) / 16);
    __mmask16 masks[kColumnsPerPass / 16];  // the columns of each register of sums
    for (int j = 0; j < vectors; ++j) {
      const int64_t left = width - 16 * j;
      masks[j] = left >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << left) - 1);
    }
    for (int64_t m = 0; m < rows; ++m) {
      __m512 sums[kColumnsPerPass / 16];
      for (int j = 0; j < vectors; ++j) sums[j] = _mm512_setzero_ps();
      const Element* xm = x + m * s_total;
      for (int64_t s = 0; s < s_total; ++s) {
        const __m512 weight = _mm512_set1_ps(Traits::Widen(xm[s]));
        const Element* row = v + s * n_total + n0;
        for (int j = 0; j < vectors; ++j) sums[j] = _mm512_fmadd_ps(weight, Traits::Load(masks[j], row + 16 * j), sums[j]);
      }
      Element* ym = y + m * n_total + n0;
      for (int j = 0; j < vectors; ++j) Traits::Store(ym + 16 * j, masks[j], sums[j]);
    }
  }
}

// {sum of a[i]'s lanes : i < 16} as one register (lane i: a[i]'s sum), by a tree of shuffles.
__attribute__((target("avx512f"))) inline __m512 SumEach(__m512* a) {
  __m512 halves[8], quarters[4], pairs[2];
  for (int i = 0; i < 8; ++i) {  // 128-bit chunks [a0+a2, a1+a3] of a[2i], then of a[2i+1]
    const __m512 lo = _mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0));
    const __m512 hi = _mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2));
    halves[i] = _mm512_add_ps(lo, hi);
  }
  for (int i = 0; i < 4; ++i) {  // chunk c: 4 partial sums of a[4i + c]
    const __m512 lo = _mm512_shuffle_f32x4(halves[2 * i], halves[2 * i + 1], _MM_SHUFFLE(2, 0, 2, 0));
    const __m512 hi = _mm512_shuffle_f32x4(halves[2 * i], halves[2 * i + 1], _MM_SHUFFLE(3, 1, 3, 1));
    quarters[i] = _mm512_add_ps(lo, hi);
  }
  for (int i = 0; i < 2; ++i) {
    pairs[i] = _mm512_add_ps(_mm512_unpacklo_ps(quarters[2 * i], quarters[2 * i + 1]),
                             _mm512_unpackhi_ps(quarters[2 * i], quarters[2 * i + 1]));
  }
  const __m512d p0 = _mm512_castps_pd(pairs[0]), p1 = _mm512_castps_pd(pairs[1]);
  const __m512 sums = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(p0, p1)),
                                    _mm512_castpd_ps(_mm512_unpackhi_pd(p0, p1)));
  // lane 4c + j holds a[4j + c]'s sum
  const __m512i order = _mm512_set_epi32(15, 11, 7, 3, 14, 10, 6, 2, 13, 9, 5, 1, 12, 8, 4, 0);
  return _mm512_permutexvar_ps(order, sums);
}

}  // namespace paddlenlp_ext
