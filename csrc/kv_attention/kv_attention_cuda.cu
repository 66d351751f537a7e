// CUDA kernel of lightdvae::kv_attention: append the new keys/values into the caches in place and
// attend each new query over the filled prefix, in one launch on the current stream.
//
// One thread block per output row (batch, head, query).  The block's threads form groups of G lanes
// (G = 4 .. 32, a power of two dividing the warp); a group scores one key at a time, each lane
// holding ELEMS consecutive elements of the head dimension per chunk (16-byte vector loads when the
// tensors are aligned for them), the dot product finished by shuffles inside the group.  Groups walk
// the keys with a stride of (groups x kUnroll), keep their own online-softmax state (maximum, sum,
// weighted sum of values; kv_attention_math.h) in float32 (float64 for double), and are merged
// through shared memory at the end.  Scores are pre-scaled by log2(e) so that the exponentials are
// exp2.  The block of query 0 of each (batch, head) also writes that (batch, head)'s new rows into
// the caches; every block reads new rows from k_new / v_new, so no block waits for another.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdint>
#include <limits>

#include "cuda_utils.cuh"
#include "kv_attention/kv_attention.h"
#include "kv_attention/kv_attention_math.h"

namespace lightdvae {
namespace {

constexpr int kThreads = 128;
constexpr int kUnroll = 4;         // keys in flight per group and iteration
constexpr int kSlots = 8;          // head-dimension elements a lane holds at most
constexpr int kMaxHeadDim = 256;   // 32 lanes x kSlots: see MAX_CUDA_HEAD_DIM in lightdvae/ops/kv_attention.py

__device__ __forceinline__ float exp2_acc(float x) { return exp2f(x); }
__device__ __forceinline__ double exp2_acc(double x) { return exp2(x); }

template <int ELEMS, typename scalar_t, typename acc_t>
__device__ __forceinline__ void load_elems(const scalar_t* __restrict__ ptr, acc_t (&x)[ELEMS]) {
  if constexpr (ELEMS == 1) {
    x[0] = static_cast<acc_t>(*ptr);
  } else {
    const Pack<scalar_t, ELEMS> v = *reinterpret_cast<const Pack<scalar_t, ELEMS>*>(ptr);
#pragma unroll
    for (int e = 0; e < ELEMS; ++e) x[e] = static_cast<acc_t>(v.v[e]);
  }
}

// chunks: how many ELEMS-wide chunks a lane holds, ceil(head_dim / (G * ELEMS)) <= kSlots / ELEMS.
template <typename scalar_t, typename acc_t, int ELEMS, int G>
__global__ void __launch_bounds__(kThreads) kv_attention_kernel(const KVParams<scalar_t, acc_t> p, int chunks) {
  constexpr int kGroups = kThreads / G;
  constexpr int kChunks = kSlots / ELEMS;
  extern __shared__ unsigned char smem_raw[];
  acc_t* sm_m = reinterpret_cast<acc_t*>(smem_raw);  // [kGroups] running maxima
  acc_t* sm_s = sm_m + kGroups;                      // [kGroups] running sums
  acc_t* sm_acc = sm_s + kGroups;                    // [kGroups][head_dim] weighted sums of values

  const int64_t D = p.head_dim;
  const RowIndex ix = split_row(p, static_cast<int64_t>(blockIdx.x));
  const int64_t total = p.cache_len + p.n_new;

  if (ix.j == 0) {  // the append of this (batch, head)
    const scalar_t* kn = p.k_new + ix.b * p.skn.b + ix.h * p.skn.h;
    const scalar_t* vn = p.v_new + ix.b * p.svn.b + ix.h * p.svn.h;
    scalar_t* kc = p.k_cache + ix.b * p.skc.b + ix.h * p.skc.h + p.cache_len * p.skc.t;
    scalar_t* vc = p.v_cache + ix.b * p.svc.b + ix.h * p.svc.h + p.cache_len * p.svc.t;
    for (int64_t e = threadIdx.x; e < p.n_new * D; e += kThreads) {
      const int64_t i = e / D, d = e % D;
      kc[i * p.skc.t + d] = kn[i * p.skn.t + d];
      vc[i * p.svc.t + d] = vn[i * p.svn.t + d];
    }
  }

  const int group = threadIdx.x / G;
  const int lane = threadIdx.x % G;
  // Lane `lane` holds elements [(c * G + lane) * ELEMS, + ELEMS) of chunk c.
  const scalar_t* q_row = p.q + ix.b * p.sq.b + ix.h * p.sq.h + ix.j * p.sq.t;
  const acc_t q_scale = p.scale * static_cast<acc_t>(1.44269504088896340736);  // log2(e)
  acc_t qv[kChunks][ELEMS];
  acc_t acc[kChunks][ELEMS];
#pragma unroll
  for (int c = 0; c < kChunks; ++c) {
    const int64_t d0 = static_cast<int64_t>(c * G + lane) * ELEMS;
    if (c < chunks && d0 < D) {
      load_elems<ELEMS>(q_row + d0, qv[c]);
    } else {
#pragma unroll
      for (int e = 0; e < ELEMS; ++e) qv[c][e] = acc_t(0);
    }
#pragma unroll
    for (int e = 0; e < ELEMS; ++e) {
      qv[c][e] *= q_scale;
      acc[c][e] = acc_t(0);
    }
  }

  const int64_t visible = kv_visible_keys(total, p.n_q, ix.j, p.causal);
  const KVRows<scalar_t> keys = key_rows(p, ix.b, ix.h);
  const KVRows<scalar_t> values = value_rows(p, ix.b, ix.h);
  SoftmaxState<acc_t> st{-std::numeric_limits<acc_t>::infinity(), acc_t(0)};
  // The trip count is the same for every thread of the block, so the shuffles below always see
  // the full warp; keys past `visible` score -inf and add nothing.
  for (int64_t l0 = 0; l0 < visible; l0 += static_cast<int64_t>(kGroups) * kUnroll) {
    acc_t score[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t l = l0 + static_cast<int64_t>(u) * kGroups + group;
      acc_t dot = acc_t(0);
      if (l < visible) {
        const scalar_t* row = keys.row(l);
#pragma unroll
        for (int c = 0; c < kChunks; ++c) {
          const int64_t d0 = static_cast<int64_t>(c * G + lane) * ELEMS;
          if (c < chunks && d0 < D) {
            acc_t k[ELEMS];
            load_elems<ELEMS>(row + d0, k);
#pragma unroll
            for (int e = 0; e < ELEMS; ++e) dot += qv[c][e] * k[e];
          }
        }
      }
#pragma unroll
      for (int offset = G / 2; offset > 0; offset >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, offset, G);
      score[u] = l < visible ? dot : -std::numeric_limits<acc_t>::infinity();
    }
    acc_t m_new = st.m;
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) m_new = score[u] > m_new ? score[u] : m_new;
    if (m_new == -std::numeric_limits<acc_t>::infinity()) continue;  // this group had no key here
    const acc_t corr = rescale_factor(st.m, m_new, [](acc_t x) { return exp2_acc(x); });
    st.s *= corr;
#pragma unroll
    for (int c = 0; c < kChunks; ++c) {
#pragma unroll
      for (int e = 0; e < ELEMS; ++e) acc[c][e] *= corr;
    }
    st.m = m_new;
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t l = l0 + static_cast<int64_t>(u) * kGroups + group;
      if (l < visible) {
        const acc_t w = exp2_acc(score[u] - m_new);
        st.s += w;
        const scalar_t* row = values.row(l);
#pragma unroll
        for (int c = 0; c < kChunks; ++c) {
          const int64_t d0 = static_cast<int64_t>(c * G + lane) * ELEMS;
          if (c < chunks && d0 < D) {
            acc_t v[ELEMS];
            load_elems<ELEMS>(row + d0, v);
#pragma unroll
            for (int e = 0; e < ELEMS; ++e) acc[c][e] += w * v[e];
          }
        }
      }
    }
  }

  // Merge the groups: out = sum_g 2^(m_g - M) acc_g / sum_g 2^(m_g - M) s_g, M = max_g m_g.
  if (lane == 0) {
    sm_m[group] = st.m;
    sm_s[group] = st.s;
  }
#pragma unroll
  for (int c = 0; c < kChunks; ++c) {
    const int64_t d0 = static_cast<int64_t>(c * G + lane) * ELEMS;
    if (c < chunks && d0 < D) {
#pragma unroll
      for (int e = 0; e < ELEMS; ++e) {
        if (d0 + e < D) sm_acc[group * D + d0 + e] = acc[c][e];
      }
    }
  }
  __syncthreads();
  acc_t m_all = -std::numeric_limits<acc_t>::infinity();
  for (int g = 0; g < kGroups; ++g) m_all = sm_m[g] > m_all ? sm_m[g] : m_all;
  acc_t denom = acc_t(0);
  for (int g = 0; g < kGroups; ++g) {
    denom += sm_m[g] == -std::numeric_limits<acc_t>::infinity() ? acc_t(0) : exp2_acc(sm_m[g] - m_all) * sm_s[g];
  }
  scalar_t* out = p.out + static_cast<int64_t>(blockIdx.x) * D;
  for (int64_t d = threadIdx.x; d < D; d += kThreads) {
    acc_t num = acc_t(0);
    for (int g = 0; g < kGroups; ++g) {
      if (sm_m[g] != -std::numeric_limits<acc_t>::infinity()) num += exp2_acc(sm_m[g] - m_all) * sm_acc[g * D + d];
    }
    out[d] = static_cast<scalar_t>(num / denom);
  }
}

// Whether every tensor allows Pack<scalar_t, vec> loads: aligned bases, strides and head_dim multiples of vec.
bool vector_loads_ok(const at::Tensor& t, int64_t vec) {
  const auto bytes = static_cast<int64_t>(t.element_size()) * vec;
  if (reinterpret_cast<uintptr_t>(t.const_data_ptr()) % static_cast<uintptr_t>(bytes) != 0) return false;
  for (int dim = 0; dim < 3; ++dim) {
    if (t.size(dim) > 1 && t.stride(dim) % vec != 0) return false;
  }
  return t.size(3) % vec == 0;
}

int group_size(int64_t head_dim, int elems) {
  const int64_t lanes = (head_dim + elems - 1) / elems;
  int g = 4;
  while (g < 32 && g < lanes) g *= 2;
  return g;
}

template <typename scalar_t, typename acc_t, int ELEMS>
void launch_with_elems(const KVParams<scalar_t, acc_t>& p, int64_t rows, cudaStream_t stream) {
  const int g = group_size(p.head_dim, ELEMS);
  const int64_t per_chunk = static_cast<int64_t>(g) * ELEMS;  // head-dimension elements a group covers per chunk
  const int chunks = static_cast<int>((p.head_dim + per_chunk - 1) / per_chunk);
  TORCH_INTERNAL_ASSERT(chunks <= kSlots / ELEMS, "kv_attention: head_dim ", p.head_dim, " too large for the kernel");
  const auto smem = [&](int groups) {
    return static_cast<size_t>(groups) * static_cast<size_t>(p.head_dim + 2) * sizeof(acc_t);
  };
  const auto grid = static_cast<unsigned>(rows);
  switch (g) {
    case 4:
      kv_attention_kernel<scalar_t, acc_t, ELEMS, 4><<<grid, kThreads, smem(kThreads / 4), stream>>>(p, chunks);
      break;
    case 8:
      kv_attention_kernel<scalar_t, acc_t, ELEMS, 8><<<grid, kThreads, smem(kThreads / 8), stream>>>(p, chunks);
      break;
    case 16:
      kv_attention_kernel<scalar_t, acc_t, ELEMS, 16><<<grid, kThreads, smem(kThreads / 16), stream>>>(p, chunks);
      break;
    default:
      kv_attention_kernel<scalar_t, acc_t, ELEMS, 32><<<grid, kThreads, smem(kThreads / 32), stream>>>(p, chunks);
      break;
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

Strides3 strides3(const at::Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2)}; }

at::Tensor rows_contiguous(const at::Tensor& t) { return t.stride(3) == 1 || t.size(3) == 1 ? t : t.contiguous(); }

}  // namespace

at::Tensor kv_attention_cuda(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                             const at::Tensor& k_new, const at::Tensor& v_new, int64_t cache_len,
                             std::optional<double> softmax_scale, bool causal) {
  const KVShape s = check_kv_attention(q, k_cache, v_cache, k_new, v_new, cache_len, /*cuda=*/true);
  TORCH_CHECK(s.head_dim <= kMaxHeadDim, "kv_attention: the CUDA kernel takes head_dim <= ", kMaxHeadDim, ", got ",
              s.head_dim, " (kv_attention runs larger heads through kv_attention_ref)");
  const c10::cuda::CUDAGuard guard(q.device());
  at::Tensor out = at::empty({s.batch, s.heads, s.n_q, s.head_dim}, q.options());
  if (s.batch == 0 || s.heads == 0) return out;
  if (s.n_q == 0) {  // nothing to attend: only the append
    kv_append_with_copy(k_cache, v_cache, k_new, v_new, cache_len);
    return out;
  }
  const int64_t rows = s.batch * s.heads * s.n_q;
  TORCH_CHECK(rows <= std::numeric_limits<int32_t>::max(), "kv_attention: batch * heads * n_q = ", rows,
              " exceeds the CUDA grid");
  const at::Tensor qc = rows_contiguous(q), kn = rows_contiguous(k_new), vn = rows_contiguous(v_new);
  const double scale = kv_softmax_scale(softmax_scale, s.head_dim);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "kv_attention_cuda", [&] {
    using acc_t = typename AccType<scalar_t>::type;
    constexpr int kVec = 16 / sizeof(scalar_t);
    const KVParams<scalar_t, acc_t> p{qc.const_data_ptr<scalar_t>(),
                                      k_cache.mutable_data_ptr<scalar_t>(),
                                      v_cache.mutable_data_ptr<scalar_t>(),
                                      kn.const_data_ptr<scalar_t>(),
                                      vn.const_data_ptr<scalar_t>(),
                                      out.mutable_data_ptr<scalar_t>(),
                                      strides3(qc),
                                      strides3(k_cache),
                                      strides3(v_cache),
                                      strides3(kn),
                                      strides3(vn),
                                      s.batch,
                                      s.heads,
                                      s.n_q,
                                      s.n_new,
                                      s.head_dim,
                                      s.cache_len,
                                      static_cast<acc_t>(scale),
                                      causal};
    const bool vec = vector_loads_ok(qc, kVec) && vector_loads_ok(k_cache, kVec) && vector_loads_ok(v_cache, kVec) &&
                     vector_loads_ok(kn, kVec) && vector_loads_ok(vn, kVec);
    if (vec) {
      launch_with_elems<scalar_t, acc_t, kVec>(p, rows, stream);
    } else {
      launch_with_elems<scalar_t, acc_t, 1>(p, rows, stream);
    }
  });
  return out;
}

TORCH_LIBRARY_IMPL(lightdvae, CUDA, m) { m.impl("kv_attention", &kv_attention_cuda); }

}  // namespace lightdvae
