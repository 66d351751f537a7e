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

LDV_HD float poly_expf(float x) {
  // exp(x) = 2^n * exp(r), n = round(x / ln 2), |r| <= ln(2) / 2.
  x = x < -104.0f ? -104.0f : x;  // comparisons keep NaN as it is
  x = x > 88.8f ? 88.8f : x;
  const float t = x * 1.44269504088896341f;
  const int32_t ni = static_cast<int32_t>(t + (t >= 0.0f ? 0.5f : -0.5f));
  const float n = static_cast<float>(ni);
  float r = x - n * 0.693359375f;  // ln 2 split in two for an exact reduction
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * (r * r) + r + 1.0f;
  // 2^n in two factors, so that n in [-150, 128] never overflows the exponent field.
  const int32_t n1 = ni >> 1;
  const int32_t n2 = ni - n1;
  const float s1 = bit_cast<float>(static_cast<int32_t>((n1 + 127) << 23));
  const float s2 = bit_cast<float>(static_cast<int32_t>((n2 + 127) << 23));
  return y * s1 * s2;
}

LDV_HD float poly_logf(float x) {
  constexpr float kInf = std::numeric_limits<float>::infinity();
  // Denormals: scale by 2^23 first.
  const bool tiny = x < 1.17549435e-38f;
  const float xs = tiny ? x * 8388608.0f : x;
  const int32_t bits = bit_cast<int32_t>(xs);
  int32_t e = ((bits >> 23) & 0xff) - 126 - (tiny ? 23 : 0);
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
  float r = f + y;
  r = r + 0.693359375f * ef;
  r = x == 0.0f ? -kInf : r;
  r = x < 0.0f ? std::numeric_limits<float>::quiet_NaN() : r;
  r = x == kInf ? kInf : r;
  r = x != x ? x : r;
  return r;
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
  const float t = x * 1.44269504088896341f;
  const int32_t ni = static_cast<int32_t>(t + (t >= 0.0f ? 0.5f : -0.5f));
  const float n = static_cast<float>(ni);
  float r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * (r * r) + r + 1.0f;
  return y * bit_cast<float>(static_cast<int32_t>((ni + 127) << 23));
}

LDV_HD float fast_logf(float x) {
  const int32_t bits = bit_cast<int32_t>(x);
  int32_t e = ((bits >> 23) & 0xff) - 126;
  const float m = bit_cast<float>((bits & 0x007fffff) | 0x3f000000);
  const bool low = m < 0.707106781186547524f;
  const float f = low ? m + m - 1.0f : m - 1.0f;
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
