// AVX-512 versions of the fast exp and log (fast_math.h) and the fused Itakura-Saito loop built on them, for
// the AVX-512 copy of the CPU loss kernels (loss_isa_cpu.cpp).  Same polynomials as fast_expf / fast_logf,
// with AVX-512's own instructions for the range reduction (vrndscaleps, vscalefps, vgetexpps, vgetmantps),
// which the compiler does not derive from the portable code: about half the instructions per element.
// Only for inputs in the fast domain (exp_fast_ok, log_fast_ok), which the caller checks per block.
#pragma once

#include "common.h"

#if LDV_X86_MULTIVERSION
#include <immintrin.h>

#include "losses/losses_math.h"

#define LDV_AVX512_INLINE inline __attribute__((target("arch=x86-64-v4,prefer-vector-width=512"), always_inline))

namespace lightdvae {
namespace avx512_math {

LDV_AVX512_INLINE __m512 set1(float v) { return _mm512_set1_ps(v); }

// exp(x), |x| <= 87: x = n ln2 + r, exp(r) by the Cephes polynomial, times 2^n by vscalefps.
LDV_AVX512_INLINE __m512 exp_fast(__m512 x) {
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, set1(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, set1(0.693359375f), x);  // ln 2 split in two for an exact reduction
  r = _mm512_fmadd_ps(n, set1(2.12194440e-4f), r);
  __m512 p = _mm512_fmadd_ps(set1(1.9875691500e-4f), r, set1(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, set1(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, set1(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, set1(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, set1(5.0000001201e-1f));
  const __m512 y = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, set1(1.0f)));
  return _mm512_scalef_ps(y, n);
}

// log(x), x positive, normal, finite: x = m 2^e with m in [sqrt(1/2), sqrt(2)], log(m) = log(1 + f) by the
// Cephes polynomial.
LDV_AVX512_INLINE __m512 log_fast(__m512 x) {
  __m512 m = _mm512_getmant_ps(x, _MM_MANT_NORM_1_2, _MM_MANT_SIGN_zero);  // [1, 2)
  __m512 e = _mm512_getexp_ps(x);                                         // floor(log2(x))
  const __mmask16 high = _mm512_cmp_ps_mask(m, set1(1.41421356237309505f), _CMP_GT_OQ);
  m = _mm512_mask_mul_ps(m, high, m, set1(0.5f));
  e = _mm512_mask_add_ps(e, high, e, set1(1.0f));
  const __m512 f = _mm512_sub_ps(m, set1(1.0f));
  const __m512 z = _mm512_mul_ps(f, f);
  __m512 y = _mm512_fmadd_ps(set1(7.0376836292e-2f), f, set1(-1.1514610310e-1f));
  y = _mm512_fmadd_ps(y, f, set1(1.1676998740e-1f));
  y = _mm512_fmadd_ps(y, f, set1(-1.2420140846e-1f));
  y = _mm512_fmadd_ps(y, f, set1(1.4249322787e-1f));
  y = _mm512_fmadd_ps(y, f, set1(-1.6668057665e-1f));
  y = _mm512_fmadd_ps(y, f, set1(2.0000714765e-1f));
  y = _mm512_fmadd_ps(y, f, set1(-2.4999993993e-1f));
  y = _mm512_fmadd_ps(y, f, set1(3.3333331174e-1f));
  y = _mm512_mul_ps(_mm512_mul_ps(y, f), z);
  y = _mm512_fnmadd_ps(set1(2.12194440e-4f), e, y);
  y = _mm512_fnmadd_ps(set1(0.5f), z, y);
  return _mm512_fmadd_ps(set1(0.693359375f), e, _mm512_add_ps(f, y));
}

// The IS loop on [b, e) (inputs in the fast domain): the value stored in out (Store) or summed, and with Grad
// g_lv = scale * (1 - s exp(-lv)).  The tail is one masked vector.
template <bool Store, bool Grad>
LDV_AVX512_INLINE float is_loop(ISTerm<float> op, const float* s, const float* lv, float scale, float* out,
                                float* g_lv, int64_t b, int64_t e) {
  __m512 acc = _mm512_setzero_ps();
  const __m512 eps = set1(op.eps), sc = set1(scale), one = set1(1.0f);
  for (int64_t i = b; i < e; i += 16) {
    const __mmask16 mask = e - i >= 16 ? __mmask16(0xffff) : __mmask16((1u << (e - i)) - 1u);
    const __m512 sv = _mm512_maskz_loadu_ps(mask, s + i);
    const __m512 lvv = _mm512_maskz_loadu_ps(mask, lv + i);
    const __m512 se = _mm512_mul_ps(sv, exp_fast(_mm512_sub_ps(_mm512_setzero_ps(), lvv)));
    if (Grad) _mm512_mask_storeu_ps(g_lv + i, mask, _mm512_fnmadd_ps(sc, se, sc));
    const __m512 v = _mm512_sub_ps(_mm512_add_ps(_mm512_sub_ps(se, log_fast(_mm512_add_ps(sv, eps))), lvv), one);
    if (Store) {
      _mm512_mask_storeu_ps(out + i, mask, v);
    } else {
      acc = _mm512_mask_add_ps(acc, mask, acc, v);
    }
  }
  return Store ? 0.0f : _mm512_reduce_add_ps(acc);
}

}  // namespace avx512_math
}  // namespace lightdvae

#endif  // LDV_X86_MULTIVERSION
