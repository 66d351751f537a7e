// CPU drivers of the fused losses: reductions and element-wise maps over the terms of losses_math.h.
// The inner loops run on blocks of contiguous elements and are written so that the compiler
// vectorises them (omp simd, scalar locals, one exp/log polynomial per lane).  The block functions
// here are always-inline bodies: loss_blocks_isa.inc compiles them once per instruction set
// (AVX-512, AVX2+FMA, baseline on x86-64) and loss_isa_cpu.cpp picks one set at run time
// (loss_isa.h).  The outer loop runs in parallel over chunks of a fixed size, so a sum does not
// depend on the number of threads.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "common.h"
#include "losses/losses_math.h"

namespace lightdvae {
namespace cpu {

constexpr int64_t kBlock = 1024;         // elements summed in the accumulation type before widening
constexpr int64_t kChunk = 32 * kBlock;  // elements per parallel task

// Deterministic parallel sum: block(b, e) returns the sum over [b, e) of at most kBlock elements.
template <typename Block>
double chunked_sum(int64_t n, const Block& block) {
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<double> partial(static_cast<size_t>(chunks), 0.0);
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t end = std::min(n, (c + 1) * kChunk);
      double s = 0.0;
      for (int64_t b = c * kChunk; b < end; b += kBlock) s += static_cast<double>(block(b, std::min(end, b + kBlock)));
      partial[static_cast<size_t>(c)] = s;
    }
  });
  double total = 0.0;
  for (double p : partial) total += p;
  return total;
}

template <typename Block>
void chunked_map(int64_t n, const Block& block) {
  at::parallel_for(0, n, kChunk, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; i += kBlock) block(i, std::min(e, i + kBlock));
  });
}

// Each block function checks its block once (fast_ok on every element, a cheap vectorised pass
// over data that then stays in L1) and runs the loop with the fast float exp/log when the whole
// block is in their domain, the general ones otherwise.  Double always takes the general path.

// ---- Itakura-Saito ------------------------------------------------------------------------

template <typename T, bool Fast>
LDV_HD T is_sum_loop(ISTerm<T> op, const T* __restrict s, const T* __restrict lv, int64_t b, int64_t e) {
  T acc = 0;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = b; i < e; ++i) acc += op.template value<Fast>(s[i], lv[i]);
  return acc;
}

template <typename T>
LDV_HD bool is_block_fast(ISTerm<T> op, const T* __restrict s, const T* __restrict lv, int64_t b, int64_t e,
                          bool for_grad) {
  if (!std::is_same_v<T, float>) return false;
  int bad = 0;
  if (for_grad) {
#pragma omp simd reduction(| : bad)
    for (int64_t i = b; i < e; ++i) bad |= !op.grad_fast_ok(s[i], lv[i]);
  } else {
#pragma omp simd reduction(| : bad)
    for (int64_t i = b; i < e; ++i) bad |= !op.fast_ok(s[i], lv[i]);
  }
  return bad == 0;
}

template <typename T>
LDV_HD T is_block_sum(ISTerm<T> op, const T* __restrict s, const T* __restrict lv, int64_t b, int64_t e) {
  return is_block_fast(op, s, lv, b, e, false) ? is_sum_loop<T, true>(op, s, lv, b, e)
                                               : is_sum_loop<T, false>(op, s, lv, b, e);
}

template <typename T, bool Fast>
LDV_HD void is_value_loop(ISTerm<T> op, const T* __restrict s, const T* __restrict lv, T* __restrict out, int64_t b,
                          int64_t e) {
#pragma omp simd
  for (int64_t i = b; i < e; ++i) out[i] = op.template value<Fast>(s[i], lv[i]);
}

template <typename T>
LDV_HD void is_block_value(ISTerm<T> op, const T* __restrict s, const T* __restrict lv, T* __restrict out,
                                   int64_t b, int64_t e) {
  if (is_block_fast(op, s, lv, b, e, false)) {
    is_value_loop<T, true>(op, s, lv, out, b, e);
  } else {
    is_value_loop<T, false>(op, s, lv, out, b, e);
  }
}

// grad == nullptr: the upstream gradient is the scalar `scale`; else grad[i] * scale.
template <typename T, bool Fast>
LDV_HD void is_grad_loop(ISTerm<T> op, const T* __restrict s, const T* __restrict lv, const T* __restrict grad,
                         T scale, T* __restrict g_lv, int64_t b, int64_t e) {
  if (grad == nullptr) {
#pragma omp simd
    for (int64_t i = b; i < e; ++i) op.template grad<Fast>(scale, s[i], lv[i], g_lv[i]);
  } else {
#pragma omp simd
    for (int64_t i = b; i < e; ++i) op.template grad<Fast>(grad[i] * scale, s[i], lv[i], g_lv[i]);
  }
}

template <typename T>
LDV_HD void is_block_grad(ISTerm<T> op, const T* __restrict s, const T* __restrict lv,
                                  const T* __restrict grad, T scale, T* __restrict g_lv, int64_t b, int64_t e) {
  if (is_block_fast(op, s, lv, b, e, true)) {
    is_grad_loop<T, true>(op, s, lv, grad, scale, g_lv, b, e);
  } else {
    is_grad_loop<T, false>(op, s, lv, grad, scale, g_lv, b, e);
  }
}

// The fused forward+backward: the value (stored in out, or summed when out == nullptr) and
// g_lv = scale * d value / d lv, from one read of each input.
template <typename T, bool Fast>
LDV_HD T is_fused_loop(ISTerm<T> op, const T* __restrict s, const T* __restrict lv, T scale, T* __restrict out,
                       T* __restrict g_lv, int64_t b, int64_t e) {
  T acc = 0;
  if (out == nullptr) {
#pragma omp simd reduction(+ : acc)
    for (int64_t i = b; i < e; ++i) acc += op.template value_grad<Fast>(scale, s[i], lv[i], g_lv[i]);
  } else {
#pragma omp simd
    for (int64_t i = b; i < e; ++i) out[i] = op.template value_grad<Fast>(scale, s[i], lv[i], g_lv[i]);
  }
  return acc;
}

template <typename T>
LDV_HD T is_block_fused(ISTerm<T> op, const T* __restrict s, const T* __restrict lv, T scale, T* __restrict out,
                        T* __restrict g_lv, int64_t b, int64_t e) {
  return is_block_fast(op, s, lv, b, e, false) ? is_fused_loop<T, true>(op, s, lv, scale, out, g_lv, b, e)
                                               : is_fused_loop<T, false>(op, s, lv, scale, out, g_lv, b, e);
}

// ---- Gaussian KL --------------------------------------------------------------------------
// HasMuP / HasLvP: whether the prior mean / log-variance are given (absent = 0).

template <typename T, bool HasLvP>
LDV_HD bool kl_block_fast(const T* __restrict lq, const T* __restrict lp, int64_t b, int64_t e) {
  if (!std::is_same_v<T, float>) return false;
  const KLTerm<T> op;
  int bad = 0;
#pragma omp simd reduction(| : bad)
  for (int64_t i = b; i < e; ++i) bad |= !op.fast_ok(T(0), lq[i], T(0), HasLvP ? lp[i] : T(0));
  return bad == 0;
}

template <typename T, bool HasMuP, bool HasLvP, bool Fast>
LDV_HD T kl_sum_loop(const T* __restrict mq, const T* __restrict lq, const T* __restrict mp, const T* __restrict lp,
                     int64_t b, int64_t e) {
  const KLTerm<T> op;
  T acc = 0;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = b; i < e; ++i) {
    acc += op.template value<Fast>(mq[i], lq[i], HasMuP ? mp[i] : T(0), HasLvP ? lp[i] : T(0));
  }
  return acc;
}

template <typename T, bool HasMuP, bool HasLvP>
LDV_HD T kl_block_sum(const T* __restrict mq, const T* __restrict lq, const T* __restrict mp,
                              const T* __restrict lp, int64_t b, int64_t e) {
  return kl_block_fast<T, HasLvP>(lq, lp, b, e) ? kl_sum_loop<T, HasMuP, HasLvP, true>(mq, lq, mp, lp, b, e)
                                                : kl_sum_loop<T, HasMuP, HasLvP, false>(mq, lq, mp, lp, b, e);
}

template <typename T, bool HasMuP, bool HasLvP, bool Fast>
LDV_HD void kl_value_loop(const T* __restrict mq, const T* __restrict lq, const T* __restrict mp,
                          const T* __restrict lp, T* __restrict out, int64_t b, int64_t e) {
  const KLTerm<T> op;
#pragma omp simd
  for (int64_t i = b; i < e; ++i) {
    out[i] = op.template value<Fast>(mq[i], lq[i], HasMuP ? mp[i] : T(0), HasLvP ? lp[i] : T(0));
  }
}

template <typename T, bool HasMuP, bool HasLvP>
LDV_HD void kl_block_value(const T* __restrict mq, const T* __restrict lq, const T* __restrict mp,
                                   const T* __restrict lp, T* __restrict out, int64_t b, int64_t e) {
  if (kl_block_fast<T, HasLvP>(lq, lp, b, e)) {
    kl_value_loop<T, HasMuP, HasLvP, true>(mq, lq, mp, lp, out, b, e);
  } else {
    kl_value_loop<T, HasMuP, HasLvP, false>(mq, lq, mp, lp, out, b, e);
  }
}

template <typename T, bool HasMuP, bool HasLvP, bool PerElementGrad, bool Fast>
LDV_HD void kl_grad_loop(const T* __restrict mq, const T* __restrict lq, const T* __restrict mp,
                         const T* __restrict lp, const T* __restrict grad, T scale, T* __restrict g_mq,
                         T* __restrict g_lq, T* __restrict g_mp, T* __restrict g_lp, int64_t b, int64_t e) {
  const KLTerm<T> op;
#pragma omp simd
  for (int64_t i = b; i < e; ++i) {
    T r_mp, r_lp;
    op.template grad<Fast>(PerElementGrad ? grad[i] * scale : scale, mq[i], lq[i], HasMuP ? mp[i] : T(0),
                           HasLvP ? lp[i] : T(0), g_mq[i], g_lq[i], r_mp, r_lp);
    if (HasMuP) g_mp[i] = r_mp;
    if (HasLvP) g_lp[i] = r_lp;
  }
}

template <typename T, bool HasMuP, bool HasLvP, bool PerElementGrad>
LDV_HD void kl_block_grad(const T* __restrict mq, const T* __restrict lq, const T* __restrict mp,
                                  const T* __restrict lp, const T* __restrict grad, T scale, T* __restrict g_mq,
                                  T* __restrict g_lq, T* __restrict g_mp, T* __restrict g_lp, int64_t b,
                                  int64_t e) {
  if (kl_block_fast<T, HasLvP>(lq, lp, b, e)) {
    kl_grad_loop<T, HasMuP, HasLvP, PerElementGrad, true>(mq, lq, mp, lp, grad, scale, g_mq, g_lq, g_mp, g_lp, b, e);
  } else {
    kl_grad_loop<T, HasMuP, HasLvP, PerElementGrad, false>(mq, lq, mp, lp, grad, scale, g_mq, g_lq, g_mp, g_lp, b,
                                                           e);
  }
}


// The fused forward+backward of the KL: the value (stored in out, or summed when out == nullptr)
// and the gradients scaled by `scale` (g_mp / g_lp written only when the prior term is given).
template <typename T, bool HasMuP, bool HasLvP, bool Store, bool Fast>
LDV_HD T kl_fused_loop(const T* __restrict mq, const T* __restrict lq, const T* __restrict mp, const T* __restrict lp,
                       T scale, T* __restrict out, T* __restrict g_mq, T* __restrict g_lq, T* __restrict g_mp,
                       T* __restrict g_lp, int64_t b, int64_t e) {
  const KLTerm<T> op;
  T acc = 0;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = b; i < e; ++i) {
    T r_mp, r_lp;
    const T v = op.template value_grad<Fast>(scale, mq[i], lq[i], HasMuP ? mp[i] : T(0), HasLvP ? lp[i] : T(0),
                                             g_mq[i], g_lq[i], r_mp, r_lp);
    if (HasMuP) g_mp[i] = r_mp;
    if (HasLvP) g_lp[i] = r_lp;
    if (Store) out[i] = v;
    acc += v;
  }
  return acc;
}

template <typename T, bool HasMuP, bool HasLvP>
LDV_HD T kl_block_fused(const T* __restrict mq, const T* __restrict lq, const T* __restrict mp,
                        const T* __restrict lp, T scale, T* __restrict out, T* __restrict g_mq, T* __restrict g_lq,
                        T* __restrict g_mp, T* __restrict g_lp, int64_t b, int64_t e) {
  const bool fast = kl_block_fast<T, HasLvP>(lq, lp, b, e);
  if (out != nullptr) {
    return fast ? kl_fused_loop<T, HasMuP, HasLvP, true, true>(mq, lq, mp, lp, scale, out, g_mq, g_lq, g_mp, g_lp, b, e)
                : kl_fused_loop<T, HasMuP, HasLvP, true, false>(mq, lq, mp, lp, scale, out, g_mq, g_lq, g_mp, g_lp, b,
                                                                e);
  }
  return fast ? kl_fused_loop<T, HasMuP, HasLvP, false, true>(mq, lq, mp, lp, scale, out, g_mq, g_lq, g_mp, g_lp, b, e)
              : kl_fused_loop<T, HasMuP, HasLvP, false, false>(mq, lq, mp, lp, scale, out, g_mq, g_lq, g_mp, g_lp, b,
                                                               e);
}

}  // namespace cpu
}  // namespace lightdvae
