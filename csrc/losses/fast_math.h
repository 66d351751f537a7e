// exp and log for the CPU kernels: branch-free float polynomials (Cephes coefficients, about 1 ulp
// on the normal range) that the compiler vectorises, where a libm call would stop vectorisation.
// Two versions of each: poly_* handle every input (inf, nan, zero, denormals, overflow), fast_* only
// the common domain (see exp_fast_ok / log_fast_ok) and are about twice as fast.  The CPU loops check
// a block of inputs once and take the fast versions when the whole block is in their domain.
// The CUDA kernels use the device's expf / logf in both cases.
#pragma once

#include <cmath>
#include <limits>

#include "common.h"

namespace lightdvae {

// exp(x) = 2^n * exp(r), n = round(x / ln 2), |r| <= ln(2) / 2: returns exp(r) and sets n.
LDV_HD float expf_reduced(float x, int32_t& n) {
  const float t = x * 1.44269504088896341f;
  n = static_cast<int32_t>(t + (t >= 0.0f ? 0.5f : -0.5f));
  const float nf = static_cast<float>(n);
  float r = x - nf * 0.693359375f;  // ln 2 split in two for an exact reduction
  r = r + nf * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  return p * (r * r) + r + 1.0f;
}

LDV_HD float pow2i(int32_t n) {  // 2^n for n in [-126, 127]
  return bit_cast<float>(static_cast<int32_t>((n + 127) << 23));
}

// log(x * 2^-shift) for x positive, normal and finite: mantissa polynomial plus the exponent times ln 2.
LDV_HD float logf_normal(float x, int32_t shift) {
  const int32_t bits = bit_cast<int32_t>(x);
  int32_t e = ((bits >> 23) & 0xff) - 126 - shift;
  const float m = bit_cast<float>((bits & 0x007fffff) | 0x3f000000);  // mantissa in [0.5, 1)
  const bool low = m < 0.707106781186547524f;
  const float f = low ? m + m - 1.0f : m - 1.0f;  // log(1 + f), f in [sqrt(.5) - 1, sqrt(2) - 1)
  e = low ? e - 1 : e;
  const float ef = static_cast<float>(e);
  const float z = f * f;
  float y = 7.0376836292e-2f;
  y = y * f - 1.1514610310e-1f;
  y = y * f + 1.1676998740e-1f;
  y = y * f - 1.2420140846e-1f;
  y = y * f + 1.4249322787e-1f;
  y = y * f - 1.6668057665e-1f;
  y = y * f + 2.0000714765e-1f;
  y = y * f - 2.4999993993e-1f;
  y = y * f + 3.3333331174e-1f;
  y = y * f * z;
  y = y - 2.12194440e-4f * ef;
  y = y - 0.5f * z;
  return f + y + 0.693359375f * ef;
}

// Domain of the fast versions: |x| <= 87 for exp (no overflow, normal 2^n), positive normal finite for log.
template <typename T>
LDV_HD bool exp_fast_ok(T x) {
  return (x >= T(-87)) & (x <= T(87));
}
template <typename T>
LDV_HD bool log_fast_ok(T x) {
  return (x >= T(std::numeric_limits<float>::min())) & (x <= T(std::numeric_limits<float>::max()));
}

LDV_HD float fast_expf(float x) {
  int32_t n;
  const float y = expf_reduced(x, n);
  return y * pow2i(n);
}

LDV_HD float fast_logf(float x) { return logf_normal(x, 0); }

LDV_HD float poly_expf(float x) {
  x = x < -104.0f ? -104.0f : x;  // comparisons keep NaN as it is
  x = x > 88.8f ? 88.8f : x;
  int32_t n;
  const float y = expf_reduced(x, n);
  // 2^n in two factors, so that n in [-150, 128] never overflows the exponent field.
  const int32_t n1 = n >> 1;
  return y * pow2i(n1) * pow2i(n - n1);
}

LDV_HD float poly_logf(float x) {
  constexpr float kInf = std::numeric_limits<float>::infinity();
  const bool tiny = x < 1.17549435e-38f;  // denormals (and the special inputs): scale by 2^23 first
  float r = logf_normal(tiny ? x * 8388608.0f : x, tiny ? 23 : 0);
  r = x == 0.0f ? -kInf : r;
  r = x < 0.0f ? std::numeric_limits<float>::quiet_NaN() : r;
  r = x == kInf ? kInf : r;
  r = x != x ? x : r;
  return r;
}

// Overloads used by the shared kernel math (losses_math.h).  Fast = the caller checked the domain.
template <bool Fast = false>
LDV_HD float ldv_exp(float x) {
#if defined(__CUDA_ARCH__)
  return expf(x);
#else
  return Fast ? fast_expf(x) : poly_expf(x);
#endif
}
template <bool Fast = false>
LDV_HD float ldv_log(float x) {
#if defined(__CUDA_ARCH__)
  return logf(x);
#else
  return Fast ? fast_logf(x) : poly_logf(x);
#endif
}
template <bool Fast = false>
LDV_HD double ldv_exp(double x) {
  return exp(x);
}
template <bool Fast = false>
LDV_HD double ldv_log(double x) {
  return log(x);
}

}  // namespace lightdvae
