// What the CPU and CUDA kernels of lightdvae::kv_attention share: the kernel parameters, the causal
// alignment of queries to keys, where key/value row l lives, and the online-softmax update.
//
// One output row per (batch b, head h, query j).  With n_q queries and L = cache_len + n_new keys
// after the append, query j sits at position L - n_q + j and, when causal, sees keys 0 .. L - n_q + j
// (flash-attention's bottom-right aligned mask).  Its output is
//     out = sum_l softmax_l(scale * q.k_l) v_l,
// computed in one pass over the keys with the running maximum m and running sum s of the online
// softmax (Milakov & Gimelshein 2018): a new block of scores with maximum m' > m rescales the
// partial sums by exp(m - m') before adding the block's terms exp(score - m').
#pragma once

#include <cstdint>

#include "common.h"

namespace lightdvae {

// Element strides of a (batch, heads, time, head_dim) tensor over its first three dimensions; the
// last dimension has stride 1 (the entry points make sure of it).
struct Strides3 {
  int64_t b, h, t;
};

template <typename scalar_t, typename acc_t>
struct KVParams {
  const scalar_t* q;
  scalar_t* k_cache;
  scalar_t* v_cache;
  const scalar_t* k_new;
  const scalar_t* v_new;
  scalar_t* out;  // contiguous (batch, heads, n_q, head_dim)
  Strides3 sq, skc, svc, skn, svn;
  int64_t batch, heads, n_q, n_new, head_dim, cache_len;
  acc_t scale;
  bool causal;
};

// Number of keys query j (0-based, of n_q) attends to, out of `total` filled positions.
LDV_HD int64_t kv_visible_keys(int64_t total, int64_t n_q, int64_t j, bool causal) {
  return causal ? total - n_q + j + 1 : total;
}

// Rows 0 .. L-1 of the keys (or values) of one (batch, head) after the append: the cache for
// l < cache_len, the new rows for the others.  The new rows are read from k_new / v_new, never from
// the cache rows this same call writes, so the kernels need no ordering between the append and the
// attention: one task writes a (batch, head)'s new rows while the others read them from the source.
template <typename scalar_t>
struct KVRows {
  const scalar_t* cache;
  const scalar_t* fresh;
  int64_t cache_stride, fresh_stride, cache_len;

  LDV_HD const scalar_t* row(int64_t l) const {
    return l < cache_len ? cache + l * cache_stride : fresh + (l - cache_len) * fresh_stride;
  }
};

template <typename scalar_t, typename acc_t>
LDV_HD KVRows<scalar_t> key_rows(const KVParams<scalar_t, acc_t>& p, int64_t b, int64_t h) {
  return {p.k_cache + b * p.skc.b + h * p.skc.h, p.k_new + b * p.skn.b + h * p.skn.h, p.skc.t, p.skn.t, p.cache_len};
}

template <typename scalar_t, typename acc_t>
LDV_HD KVRows<scalar_t> value_rows(const KVParams<scalar_t, acc_t>& p, int64_t b, int64_t h) {
  return {p.v_cache + b * p.svc.b + h * p.svc.h, p.v_new + b * p.svn.b + h * p.svn.h, p.svc.t, p.svn.t, p.cache_len};
}

// Output row r = (b * heads + h) * n_q + j of the flattened (batch, heads, n_q) grid.
struct RowIndex {
  int64_t b, h, j;
};
template <typename scalar_t, typename acc_t>
LDV_HD RowIndex split_row(const KVParams<scalar_t, acc_t>& p, int64_t r) {
  const int64_t j = r % p.n_q;
  const int64_t bh = r / p.n_q;
  return {bh / p.heads, bh % p.heads, j};
}

// Online-softmax state of one query: running maximum m (of the scaled scores) and running sum s of
// exp(score - m); the weighted sum of values lives beside it (a vector the caller owns).
template <typename acc_t>
struct SoftmaxState {
  acc_t m;
  acc_t s;
};

// Factor that brings sums taken relative to m_old to m_new >= m_old.  Equal maxima give exactly 1,
// which also keeps an empty state (m_old = m_new = -inf) away from exp(-inf - -inf) = NaN; an empty
// state meeting a finite maximum gets exp(-inf) = 0.  `exp` is the caller's exponential.
template <typename acc_t, typename Exp>
LDV_HD acc_t rescale_factor(acc_t m_old, acc_t m_new, Exp exp) {
  return m_old == m_new ? acc_t(1) : exp(m_old - m_new);
}

}  // namespace lightdvae
