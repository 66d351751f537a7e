// Rows times a matrix at batch 1 to 4: the products of the raw-pointer loops (issue 16: the posterior loops of
// sampling/small_batch.h, SRNN's own-past loop, the transformer decoding loop of transformer/decode_small.h).
//
// At a few rows a step's product is a matrix-vector product: every weight is read once per step and used by one to
// four rows, so the product is bound by the weights' traffic, not by the multiply-adds.  The kernel keeps a block of
// outputs of every row in registers while it walks down the weight rows, reading each weight once for all rows; the plain loop it replaces (y[r] += x[r][j] * w[j] for each j) loaded and stored the whole output
// row per weight row, three memory operations per multiply-add.  Each output still sums its k terms in order j = 0,
// 1, ..., so the result does not depend on the vector width.  Compiled for AVX2+FMA and the baseline (common.h).
#pragma once

#include <algorithm>
#include <cstdint>

#include "common.h"

namespace lightdvae::small_gemm {

// y[r] (n) += x[r] (k) . w for R rows (row strides ys, xs), w a (k, n) block of row stride ldw.
template <typename T, int R>
LDV_CPU_CLONES void accumulate(T* __restrict y, int64_t ys, const T* __restrict x, int64_t xs, const T* __restrict w,
                               int64_t ldw, int64_t k, int64_t n) {
  // 256 bytes of outputs across the rows: 64 floats of one row, 16 of each of four; what measured fastest on the
  // weights of SRNN's decoding step (0.5 M floats): 41 us at one row and 84 at four, against 49 and 173 us for
  // the plain loop (AVX2 both; one core of a Xeon with 2 MB of L2; 128 or 512 bytes were slower, AVX-512 too).
  constexpr int64_t B = 256 / static_cast<int64_t>(sizeof(T)) / (R == 3 ? 4 : R);
  int64_t i0 = 0;
  for (; i0 + B <= n; i0 += B) {
    T acc[R][B];
    for (int r = 0; r < R; ++r) {
      for (int64_t i = 0; i < B; ++i) acc[r][i] = y[r * ys + i0 + i];
    }
    for (int64_t j = 0; j < k; ++j) {
      const T* __restrict wj = w + j * ldw + i0;
      for (int r = 0; r < R; ++r) {
        const T a = x[r * xs + j];
#pragma omp simd
        for (int64_t i = 0; i < B; ++i) acc[r][i] += a * wj[i];
      }
    }
    for (int r = 0; r < R; ++r) {
      for (int64_t i = 0; i < B; ++i) y[r * ys + i0 + i] = acc[r][i];
    }
  }
  if (i0 < n) {  // the last n % B outputs
    const int64_t m = n - i0;
    for (int64_t j = 0; j < k; ++j) {
      const T* __restrict wj = w + j * ldw + i0;
      for (int r = 0; r < R; ++r) {
        const T a = x[r * xs + j];
        T* __restrict yr = y + r * ys + i0;
        for (int64_t i = 0; i < m; ++i) yr[i] += a * wj[i];
      }
    }
  }
}

// y (rows, n) += x (rows, k) . w for any number of rows, four at a time.
template <typename T>
void rows_times(T* y, int64_t ys, const T* x, int64_t xs, const T* w, int64_t ldw, int64_t rows, int64_t k,
                int64_t n) {
  for (int64_t r = 0; r < rows; r += 4) {
    T* yr = y + r * ys;
    const T* xr = x + r * xs;
    switch (std::min<int64_t>(4, rows - r)) {
      case 1: accumulate<T, 1>(yr, ys, xr, xs, w, ldw, k, n); break;
      case 2: accumulate<T, 2>(yr, ys, xr, xs, w, ldw, k, n); break;
      case 3: accumulate<T, 3>(yr, ys, xr, xs, w, ldw, k, n); break;
      default: accumulate<T, 4>(yr, ys, xr, xs, w, ldw, k, n); break;
    }
  }
}

}  // namespace lightdvae::small_gemm
