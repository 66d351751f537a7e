// tanh on the CPU (issue 17): the recurrent models' MLP activation, vectorised.
//
// ATen's CPU tanh runs libm's scalar tanhf on float32 (2.2-2.7 ns per element on one thread, the same at every
// ATEN_CPU_CAPABILITY, where its sigmoid takes 0.2-0.4 ns): 3-6 % of a VAE, DKF or SRNN training step at
// batch 128.  Here one branch-free pass per element that the compiler vectorises, compiled per instruction set like
// the loss and dropout kernels (loss_isa.h) and following the same run-time choice (AVX-512 or AVX2; below that
// ATen's tanh runs):
//   |x| <  0.625: x + x^3 P(x^2), the minimax odd polynomial of Cephes' tanhf;
//   |x| >= 0.625: sign(x) (1 - 2 / (exp(2|x|) + 1)), exp from fast_math.h on 2|x| clamped to 20 (tanh(10) rounds
//                 to 1 in float32, so larger inputs and infinities give +-1 exactly);
// NaN stays NaN, -0 stays -0.  The error is at most 1.32 ulp measured (tests/test_ops_activations.py bounds it by
// 2 against float64 on every ISA).  float64 takes ATen's tanh.  The backward is ATen's tanh_backward on the output.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "common.h"
#include "activations/tanh_math.h"
#include "losses/fast_math.h"
#include "losses/loss_isa.h"

namespace lightdvae {
namespace {

// The loop, inlined into each instruction set's copy below (so compiled for that set), vectorised by omp simd.
LDV_HD void tanh_block(const float* __restrict x, float* __restrict y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    y[i] = tanh_one(x[i]);
  }
}

#define LDV_TANH_BLOCK(NS, TARGET)                                                \
  namespace NS {                                                                  \
  TARGET void apply(const float* x, float* y, int64_t n) { tanh_block(x, y, n); } \
  }

#if LDV_X86_MULTIVERSION
LDV_TANH_BLOCK(avx2, __attribute__((target("arch=x86-64-v3"))))
LDV_TANH_BLOCK(avx512, __attribute__((target("arch=x86-64-v4,prefer-vector-width=512"))))
#endif
#undef LDV_TANH_BLOCK

using ApplyFn = void (*)(const float*, float*, int64_t);

// The copy for the instruction set in use; null below AVX2, where the portable loop (4-wide, no FMA) is slower
// than libm's scalar tanhf and the op takes ATen's tanh.
ApplyFn apply_for(cpu::Isa isa) {
#if LDV_X86_MULTIVERSION
  if (isa == cpu::Isa::kAvx512) return &avx512::apply;
  if (isa == cpu::Isa::kAvx2) return &avx2::apply;
#endif
  (void)isa;
  return nullptr;
}

at::Tensor tanh(const at::Tensor& x_in) {
  TORCH_CHECK(x_in.is_floating_point(), "lightdvae::tanh: x must be floating point, got ", x_in.scalar_type());
  const ApplyFn fn = apply_for(cpu::current_isa());
  if (x_in.scalar_type() != at::kFloat || fn == nullptr) {
    return at::tanh(x_in);
  }
  const at::Tensor x = x_in.contiguous();
  at::Tensor y = at::empty_like(x, at::MemoryFormat::Contiguous);
  const float* xp = x.const_data_ptr<float>();
  float* yp = y.mutable_data_ptr<float>();
  at::parallel_for(0, x.numel(), 1 << 15, [&](int64_t b, int64_t e) { fn(xp + b, yp + b, e - b); });
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(lightdvae, CPU, m) { m.impl("tanh", &tanh); }

}  // namespace lightdvae
