// The element-wise math of the fused losses, shared by the CPU (C++) and CUDA kernels.
//
// Each term is a small functor over `kInputs` element values (in the accumulation type), scalar
// arguments only, so that the CPU loops vectorise:
//   value(x0, x1, ...)                 the divergence of one element
//   grad(g, x0, x1, ..., r0, r1, ...)  r_k = g * d value / d x_k
//   value_grad(g, x0, ..., r0, ...)    both at once, sharing the exp/log (the fused forward+backward)
//   fast_ok(x0, x1, ...)               the element is in the domain of the fast exp/log (fast_math.h);
//                                      value<true> / grad<true> may then be used
// Optional inputs (the prior of the KL) that are absent read as 0.
#pragma once

#include "common.h"
#include "losses/fast_math.h"

namespace lightdvae {

// Itakura-Saito divergence from the log-variance:  s * exp(-lv) - log(s + eps) + lv - 1.
// Inputs: {power s, logvar lv}.  Output gradient: d/dlv = 1 - s * exp(-lv).
template <typename acc_t>
struct ISTerm {
  static constexpr int kInputs = 2;
  static constexpr int kOutputs = 1;
  acc_t eps;

  template <bool Fast = false>
  LDV_HD acc_t value(acc_t s, acc_t lv) const {
    return s * ldv_exp<Fast>(-lv) - ldv_log<Fast>(s + eps) + lv - acc_t(1);
  }
  template <bool Fast = false>
  LDV_HD void grad(acc_t g, acc_t s, acc_t lv, acc_t& g_lv) const {
    g_lv = g * (acc_t(1) - s * ldv_exp<Fast>(-lv));
  }
  // The value, and g_lv = g * d value / d lv, from one exp.
  template <bool Fast = false>
  LDV_HD acc_t value_grad(acc_t g, acc_t s, acc_t lv, acc_t& g_lv) const {
    const acc_t se = s * ldv_exp<Fast>(-lv);
    g_lv = g * (acc_t(1) - se);
    return se - ldv_log<Fast>(s + eps) + lv - acc_t(1);
  }
  LDV_HD bool fast_ok(acc_t s, acc_t lv) const { return log_fast_ok(s + eps) & exp_fast_ok(lv); }
  LDV_HD bool grad_fast_ok(acc_t, acc_t lv) const { return exp_fast_ok(lv); }
};

// KL(N(mq, exp(lq)) || N(mp, exp(lp))) = 0.5 * (lp - lq + (exp(lq) + (mq - mp)^2) * exp(-lp) - 1).
// Inputs: {mq, lq, mp, lp}; outputs: gradients for the same four.
template <typename acc_t>
struct KLTerm {
  static constexpr int kInputs = 4;
  static constexpr int kOutputs = 4;

  template <bool Fast = false>
  LDV_HD acc_t value(acc_t mq, acc_t lq, acc_t mp, acc_t lp) const {
    const acc_t d = mq - mp;
    return acc_t(0.5) * (lp - lq + (ldv_exp<Fast>(lq) + d * d) * ldv_exp<Fast>(-lp) - acc_t(1));
  }
  LDV_HD bool fast_ok(acc_t, acc_t lq, acc_t, acc_t lp) const { return exp_fast_ok(lq) & exp_fast_ok(lp); }
  template <bool Fast = false>
  LDV_HD void grad(acc_t g, acc_t mq, acc_t lq, acc_t mp, acc_t lp, acc_t& g_mq, acc_t& g_lq, acc_t& g_mp,
                   acc_t& g_lp) const {
    const acc_t d = mq - mp;
    const acc_t inv_vp = ldv_exp<Fast>(-lp);
    const acc_t vq_over_vp = ldv_exp<Fast>(lq) * inv_vp;
    g_mq = g * d * inv_vp;
    g_lq = acc_t(0.5) * g * (vq_over_vp - acc_t(1));
    g_mp = -g_mq;
    g_lp = acc_t(0.5) * g * (acc_t(1) - vq_over_vp - d * d * inv_vp);
  }
  // The value and the four gradients (scaled by g) from the same two exps.
  template <bool Fast = false>
  LDV_HD acc_t value_grad(acc_t g, acc_t mq, acc_t lq, acc_t mp, acc_t lp, acc_t& g_mq, acc_t& g_lq, acc_t& g_mp,
                          acc_t& g_lp) const {
    const acc_t d = mq - mp;
    const acc_t inv_vp = ldv_exp<Fast>(-lp);
    const acc_t vq_over_vp = ldv_exp<Fast>(lq) * inv_vp;
    const acc_t d2_over_vp = d * d * inv_vp;
    g_mq = g * d * inv_vp;
    g_lq = acc_t(0.5) * g * (vq_over_vp - acc_t(1));
    g_mp = -g_mq;
    g_lp = acc_t(0.5) * g * (acc_t(1) - vq_over_vp - d2_over_vp);
    return acc_t(0.5) * (lp - lq + vq_over_vp + d2_over_vp - acc_t(1));
  }
};

}  // namespace lightdvae
