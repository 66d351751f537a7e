// CPU kernel of lightdvae::kv_attention: append the new keys/values into the caches in place and
// attend each new query over the filled prefix with an online softmax (kv_attention_math.h).
//
// Work item = one output row (batch, head, query); rows run in parallel (at::parallel_for) when the
// call is big enough to pay for the threads (kTaskWork) -- a decoding step at batch 1 is not, and
// runs on the calling thread.  Per row, keys are taken in blocks of kKeyBlock: the block's scores
// (four dot products at a time, vectorised over the head dimension), their maximum, their
// exponentials (a vectorised polynomial, fast_math.h) and the weighted sum of the value rows (four
// rows at a time); the running sums are rescaled only when a block raises the maximum.  Common head
// dimensions (16, 32, 64, 128) are compiled as constants so the inner loops unroll completely;
// GCC on x86-64 also builds an AVX2+FMA clone of the row loop (LDV_CPU_CLONES).
// float32 is computed in float32, float64 in float64.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "common.h"
#include "kv_attention/kv_attention.h"
#include "kv_attention/kv_attention_math.h"
#include "losses/fast_math.h"

namespace lightdvae {
namespace cpu {
namespace {

constexpr int64_t kKeyBlock = 128;  // keys per block: their scores stay in L1
// Multiply-adds (keys x head_dim per row) worth a parallel task, about 40 us of work: a decoding step
// at batch 1 (4 heads of 32, up to ~2000 keys) stays on the calling thread, where waking threads would
// cost more than it saves -- and much more on a machine whose cores are busy with other work.
constexpr int64_t kTaskWork = int64_t{1} << 18;

// exp(x) for x <= 0: a score minus the running maximum.  float: the branch-free polynomial of
// fast_math.h (vectorises) on max(x, -87), i.e. weights below exp(-87) ~ 1.6e-38 of the largest one
// are rounded up to that, a change far below float resolution; NaN stays NaN.  double: libm.
LDV_HD float exp_nonpositive(float x) { return fast_expf(x < -87.0f ? -87.0f : x); }
LDV_HD double exp_nonpositive(double x) { return std::exp(x); }

// scores[i] = q . row_i for n rows base + i * stride (head dimension D, a constant when kD > 0).
template <int kD, typename T>
LDV_HD void block_scores(const T* __restrict q, const T* __restrict base, int64_t stride, int64_t n, int64_t D_rt,
                         T* __restrict scores) {
  const int64_t D = kD > 0 ? kD : D_rt;
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const T* __restrict k0 = base + i * stride;
    const T* __restrict k1 = k0 + stride;
    const T* __restrict k2 = k1 + stride;
    const T* __restrict k3 = k2 + stride;
    T a0 = 0, a1 = 0, a2 = 0, a3 = 0;
#pragma omp simd reduction(+ : a0, a1, a2, a3)
    for (int64_t d = 0; d < D; ++d) {
      const T qd = q[d];
      a0 += qd * k0[d];
      a1 += qd * k1[d];
      a2 += qd * k2[d];
      a3 += qd * k3[d];
    }
    scores[i] = a0;
    scores[i + 1] = a1;
    scores[i + 2] = a2;
    scores[i + 3] = a3;
  }
  for (; i < n; ++i) {
    const T* __restrict k0 = base + i * stride;
    T a0 = 0;
#pragma omp simd reduction(+ : a0)
    for (int64_t d = 0; d < D; ++d) a0 += q[d] * k0[d];
    scores[i] = a0;
  }
}

// acc += sum_i p[i] * row_i for n rows base + i * stride.
template <int kD, typename T>
LDV_HD void block_values(const T* __restrict p, const T* __restrict base, int64_t stride, int64_t n, int64_t D_rt,
                         T* __restrict acc) {
  const int64_t D = kD > 0 ? kD : D_rt;
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const T* __restrict v0 = base + i * stride;
    const T* __restrict v1 = v0 + stride;
    const T* __restrict v2 = v1 + stride;
    const T* __restrict v3 = v2 + stride;
    const T p0 = p[i], p1 = p[i + 1], p2 = p[i + 2], p3 = p[i + 3];
#pragma omp simd
    for (int64_t d = 0; d < D; ++d) acc[d] += (p0 * v0[d] + p1 * v1[d]) + (p2 * v2[d] + p3 * v3[d]);
  }
  for (; i < n; ++i) {
    const T* __restrict v0 = base + i * stride;
    const T p0 = p[i];
#pragma omp simd
    for (int64_t d = 0; d < D; ++d) acc[d] += p0 * v0[d];
  }
}

// One run of n consecutive key/value rows (n <= kKeyBlock) folded into the softmax state and acc.
template <int kD, typename T>
LDV_HD void fold_block(const T* __restrict q, const T* __restrict k, int64_t k_stride, const T* __restrict v,
                       int64_t v_stride, int64_t n, int64_t D_rt, T* __restrict scores, T* __restrict acc,
                       SoftmaxState<T>& st) {
  const int64_t D = kD > 0 ? kD : D_rt;
  block_scores<kD>(q, k, k_stride, n, D, scores);
  T block_max = -std::numeric_limits<T>::infinity();
#pragma omp simd reduction(max : block_max)
  for (int64_t i = 0; i < n; ++i) block_max = std::max(block_max, scores[i]);
  if (block_max > st.m) {  // a new maximum: bring the running sums to it
    const T corr = rescale_factor(st.m, block_max, [](T x) { return exp_nonpositive(x); });
    st.s *= corr;
#pragma omp simd
    for (int64_t d = 0; d < D; ++d) acc[d] *= corr;
    st.m = block_max;
  }
  const T m = st.m;
  T sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) {
    const T e = exp_nonpositive(scores[i] - m);
    scores[i] = e;
    sum += e;
  }
  st.s += sum;
  block_values<kD>(scores, v, v_stride, n, D, acc);
}

// n rows of one segment (cache or new rows), block by block.
template <int kD, typename T>
LDV_HD void fold_segment(const T* q, const T* k, int64_t k_stride, const T* v, int64_t v_stride, int64_t n,
                         int64_t D, T* scores, T* acc, SoftmaxState<T>& st) {
  for (int64_t i0 = 0; i0 < n; i0 += kKeyBlock) {
    fold_block<kD>(q, k + i0 * k_stride, k_stride, v + i0 * v_stride, v_stride, std::min(kKeyBlock, n - i0), D,
                   scores, acc, st);
  }
}

template <typename T>
void append_rows(const KVParams<T, T>& p, int64_t b, int64_t h, int64_t D) {
  for (int64_t i = 0; i < p.n_new; ++i) {
    const int64_t t = p.cache_len + i;
    // memmove: k_new may be a view of the very rows it is written to.
    std::memmove(p.k_cache + b * p.skc.b + h * p.skc.h + t * p.skc.t, p.k_new + b * p.skn.b + h * p.skn.h + i * p.skn.t,
                 static_cast<size_t>(D) * sizeof(T));
    std::memmove(p.v_cache + b * p.svc.b + h * p.svc.h + t * p.svc.t, p.v_new + b * p.svn.b + h * p.svn.h + i * p.svn.t,
                 static_cast<size_t>(D) * sizeof(T));
  }
}

// Output rows [r0, r1) of the flattened (batch, heads, n_q) grid.  The task holding query j = 0 of
// a (batch, head) also appends that (batch, head)'s new rows; every task reads new rows from
// k_new / v_new (KVRows), so no task waits for another.
template <int kD, typename T>
LDV_CPU_CLONES void attend_rows(const KVParams<T, T>& p, int64_t r0, int64_t r1) {
  const int64_t D = kD > 0 ? kD : p.head_dim;
  constexpr int64_t kStack = kD > 0 ? kD : 1;
  alignas(64) T q_stack[kStack];
  alignas(64) T acc_stack[kStack];
  alignas(64) T scores[kKeyBlock];
  std::vector<T> heap(kD > 0 ? 0 : static_cast<size_t>(2 * D));
  T* __restrict q = kD > 0 ? q_stack : heap.data();
  T* __restrict acc = kD > 0 ? acc_stack : heap.data() + D;
  const int64_t total = p.cache_len + p.n_new;
  for (int64_t r = r0; r < r1; ++r) {
    const RowIndex ix = split_row(p, r);
    if (ix.j == 0) append_rows(p, ix.b, ix.h, D);
    const T* __restrict q_row = p.q + ix.b * p.sq.b + ix.h * p.sq.h + ix.j * p.sq.t;
    const T scale = p.scale;
#pragma omp simd
    for (int64_t d = 0; d < D; ++d) {
      q[d] = q_row[d] * scale;
      acc[d] = 0;
    }
    const int64_t visible = kv_visible_keys(total, p.n_q, ix.j, p.causal);
    const int64_t from_cache = std::min(visible, p.cache_len);
    const KVRows<T> k = key_rows(p, ix.b, ix.h);
    const KVRows<T> v = value_rows(p, ix.b, ix.h);
    SoftmaxState<T> st{-std::numeric_limits<T>::infinity(), T(0)};
    fold_segment<kD>(q, k.cache, k.cache_stride, v.cache, v.cache_stride, from_cache, D, scores, acc, st);
    fold_segment<kD>(q, k.fresh, k.fresh_stride, v.fresh, v.fresh_stride, visible - from_cache, D, scores, acc, st);
    T* __restrict out = p.out + r * D;
    const T inv = T(1) / st.s;
#pragma omp simd
    for (int64_t d = 0; d < D; ++d) out[d] = acc[d] * inv;
  }
}

template <int kD, typename T>
void run(const KVParams<T, T>& p) {
  const int64_t rows = p.batch * p.heads * p.n_q;
  const int64_t row_work = std::max<int64_t>(1, (p.cache_len + p.n_new) * p.head_dim);
  const int64_t grain = std::max<int64_t>(1, kTaskWork / row_work);
  at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) { attend_rows<kD>(p, r0, r1); });
}

template <typename T>
void run_for_head_dim(const KVParams<T, T>& p) {
  switch (p.head_dim) {
    case 16:
      return run<16>(p);
    case 32:
      return run<32>(p);
    case 64:
      return run<64>(p);
    case 128:
      return run<128>(p);
    default:
      return run<0>(p);
  }
}

Strides3 strides3(const at::Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2)}; }

// The kernels read rows with stride 1 along head_dim; other strides are free.
at::Tensor rows_contiguous(const at::Tensor& t) { return t.stride(3) == 1 || t.size(3) == 1 ? t : t.contiguous(); }

}  // namespace
}  // namespace cpu

at::Tensor kv_attention_cpu(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                            const at::Tensor& k_new, const at::Tensor& v_new, int64_t cache_len,
                            std::optional<double> softmax_scale, bool causal) {
  const KVShape s = check_kv_attention(q, k_cache, v_cache, k_new, v_new, cache_len, /*cuda=*/false);
  at::Tensor out = at::empty({s.batch, s.heads, s.n_q, s.head_dim}, q.options());
  if (s.batch == 0 || s.heads == 0) return out;
  if (s.n_q == 0) {  // nothing to attend: only the append
    kv_append_with_copy(k_cache, v_cache, k_new, v_new, cache_len);
    return out;
  }
  const at::Tensor qc = cpu::rows_contiguous(q), kn = cpu::rows_contiguous(k_new), vn = cpu::rows_contiguous(v_new);
  const double scale = kv_softmax_scale(softmax_scale, s.head_dim);
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "kv_attention_cpu", [&] {
    const KVParams<scalar_t, scalar_t> p{qc.const_data_ptr<scalar_t>(),
                                         k_cache.mutable_data_ptr<scalar_t>(),
                                         v_cache.mutable_data_ptr<scalar_t>(),
                                         kn.const_data_ptr<scalar_t>(),
                                         vn.const_data_ptr<scalar_t>(),
                                         out.mutable_data_ptr<scalar_t>(),
                                         cpu::strides3(qc),
                                         cpu::strides3(k_cache),
                                         cpu::strides3(v_cache),
                                         cpu::strides3(kn),
                                         cpu::strides3(vn),
                                         s.batch,
                                         s.heads,
                                         s.n_q,
                                         s.n_new,
                                         s.head_dim,
                                         s.cache_len,
                                         static_cast<scalar_t>(scale),
                                         causal};
    cpu::run_for_head_dim(p);
  });
  return out;
}

TORCH_LIBRARY_IMPL(lightdvae, CPU, m) { m.impl("kv_attention", &kv_attention_cpu); }

}  // namespace lightdvae
