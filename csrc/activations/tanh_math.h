// The float32 tanh of the vectorised kernels (csrc/activations/tanh_cpu.cpp, which describes it; the LSTM layer of
// csrc/recurrent/lstm_cpu.cpp): branch-free, inlined into loops the compiler vectorises.
#pragma once

#include <algorithm>
#include <cstdint>

#include "common.h"
#include "losses/fast_math.h"

namespace lightdvae {

// where ? a : b on the bits: a float select written as one makes GCC branch (and stop vectorising) once both sides
// are polynomials.
LDV_HD float select_bits(bool where, float a, float b) {
  const int32_t m = -static_cast<int32_t>(where);
  return bit_cast<float>((bit_cast<int32_t>(a) & m) | (bit_cast<int32_t>(b) & ~m));
}

LDV_HD float tanh_one(float x) {
  const int32_t bits = bit_cast<int32_t>(x);
  const float ax = bit_cast<float>(bits & 0x7fffffff);
  const float z = ax * ax;
  float p = -5.70498872745e-3f;
  p = p * z + 2.06390887954e-2f;
  p = p * z - 5.37397155531e-2f;
  p = p * z + 1.33314422036e-1f;
  p = p * z - 3.33332819422e-1f;
  const float small = ax + ax * z * p;
  const float e = fast_expf(std::min(20.0f, ax + ax));  // NaN (and inf) take 20 here; NaN is restored below
  const float big = 1.0f - 2.0f / (e + 1.0f);
  // tanh is odd: tanh|x| with x's sign bit (so -0 stays -0); NaN stays x
  const float y = bit_cast<float>(bit_cast<int32_t>(select_bits(ax < 0.625f, small, big)) | (bits & INT32_MIN));
  return select_bits(x != x, x, y);
}

// The logistic sigmoid through tanh_one: 1 / (1 + exp(-x)) = (1 + tanh(x / 2)) / 2.  Its absolute error is tanh's
// (a few 1e-8), what an LSTM's gates are used at (they scale c and g); near 0 its relative error is larger.
LDV_HD float sigmoid_one(float x) { return 0.5f + 0.5f * tanh_one(0.5f * x); }

}  // namespace lightdvae
