// Fused dropout on the CPU (issue 17): y = x * keep / (1 - p), the mask drawn from a counter-based hash of
// (seed, element index) instead of a stored tensor of random numbers.
//
// ATen's CPU dropout draws a Bernoulli tensor (MKL's generator, then a conversion), divides it and multiplies:
// three passes and ~13 ns per element, a third of a LigHT-DVAE training step on one thread.  Here one pass
// computes each element's 32 random bits from its index (two rounds of a 32-bit integer mixer on a Weyl
// sequence: multiply, shift, xor, which vectorise), compares them with p * 2^32 and scales.  The mask is a pure
// function of (seed, index), so the backward is the same op applied to the incoming gradient with the same seed:
// nothing is saved between forward and backward.  The loop is compiled per instruction set like the loss kernels
// (loss_isa.h) and follows the same run-time choice.
//
// relu_dropout fuses the transformer feed-forward's activation into the same pass: y = relu(x) * keep / (1 - p), the
// mask the one `dropout` draws for the seed (so dropout(relu(x)) and relu_dropout(x) are equal bit for bit).  Its
// backward needs only y, which the next Linear keeps anyway: dx = dy / (1 - p) where y > 0, else 0 (y > 0 exactly
// where the element was kept and x > 0); one pass each way where the two ops took two.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>

#include "common.h"
#include "losses/loss_isa.h"

namespace lightdvae {
namespace {

// Two rounds of a 32-bit mixer (multiply-xorshift; full avalanche) keyed by the seed: the mask bits of element
// lo + 2^32 hi.  `hi_key` is mix(hi + key1), constant over a run of 2^32 elements.
LDV_HD uint32_t mix32(uint32_t h) {
  h ^= h >> 16;
  h *= 0x7feb352dU;
  h ^= h >> 15;
  h *= 0x846ca68bU;
  h ^= h >> 16;
  return h;
}

LDV_HD uint32_t mask_bits(uint32_t lo, uint32_t key0, uint32_t hi_key) {
  return mix32(mix32(lo * 0x9e3779b9U + key0) ^ hi_key);
}

// y[i] = x[i] * scale where the bits of element `first + i` are >= threshold, 0 elsewhere, for i in [0, n); the
// element indices first .. first + n - 1 share their high 32 bits.
// With RELU the kept elements are relu(x[i]) * scale (relu keeps NaN, as ATen's does).  kept_scale: dx[i] =
// dy[i] * scale where y[i] > 0, 0 elsewhere (relu_dropout's backward).
#define LDV_DROPOUT_BLOCK(NS, TARGET)                                                                          \
  namespace NS {                                                                                               \
  template <bool RELU, typename T>                                                                             \
  TARGET void apply(const T* x, T* y, int64_t n, uint32_t first_lo, uint32_t key0, uint32_t hi_key,          \
                    uint32_t threshold, T scale) {                                                             \
    for (int64_t i = 0; i < n; ++i) {                                                                          \
      const uint32_t bits = mask_bits(first_lo + static_cast<uint32_t>(i), key0, hi_key);                    \
      const T v = RELU ? (x[i] < T(0) ? T(0) : x[i]) : x[i];                                                  \
      y[i] = bits >= threshold ? v * scale : T(0);                                                            \
    }                                                                                                          \
  }                                                                                                            \
  template <typename T>                                                                                        \
  TARGET void kept_scale(const T* dy, const T* y, T* dx, int64_t n, T scale) {                               \
    for (int64_t i = 0; i < n; ++i) dx[i] = y[i] > T(0) ? dy[i] * scale : T(0);                              \
  }                                                                                                            \
  }

LDV_DROPOUT_BLOCK(baseline, )
#if LDV_X86_MULTIVERSION
LDV_DROPOUT_BLOCK(avx2, __attribute__((target("arch=x86-64-v3"))))
LDV_DROPOUT_BLOCK(avx512, __attribute__((target("arch=x86-64-v4,prefer-vector-width=512"))))
#endif
#undef LDV_DROPOUT_BLOCK

template <typename T>
using ApplyFn = void (*)(const T*, T*, int64_t, uint32_t, uint32_t, uint32_t, uint32_t, T);
template <typename T>
using KeptScaleFn = void (*)(const T*, const T*, T*, int64_t, T);

template <bool RELU, typename T>
ApplyFn<T> apply_for(cpu::Isa isa) {
#if LDV_X86_MULTIVERSION
  if (isa == cpu::Isa::kAvx512) return &avx512::apply<RELU, T>;
  if (isa == cpu::Isa::kAvx2) return &avx2::apply<RELU, T>;
#endif
  (void)isa;
  return &baseline::apply<RELU, T>;
}

template <typename T>
KeptScaleFn<T> kept_scale_for(cpu::Isa isa) {
#if LDV_X86_MULTIVERSION
  if (isa == cpu::Isa::kAvx512) return &avx512::kept_scale<T>;
  if (isa == cpu::Isa::kAvx2) return &avx2::kept_scale<T>;
#endif
  (void)isa;
  return &baseline::kept_scale<T>;
}

void check_p_and_dtype(const char* op, double p, const at::Tensor& x, const char* name) {
  TORCH_CHECK(p >= 0.0 && p < 1.0, op, ": p must be in [0, 1), got ", p);
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op, ": ", name,
              " must be float32 or float64, got ", x.scalar_type());
}

// p * 2^32 rounded: an element is kept when its 32 bits are at least this (p = 0 keeps all).
uint32_t threshold_of(double p) {
  const double t = std::nearbyint(p * 4294967296.0);
  return t >= 4294967295.0 ? 0xffffffffU : static_cast<uint32_t>(t);
}

template <bool RELU>
at::Tensor masked(const char* op, const at::Tensor& x_in, double p, int64_t seed) {
  check_p_and_dtype(op, p, x_in, "x");
  const at::Tensor x = x_in.contiguous();
  at::Tensor y = at::empty_like(x, at::MemoryFormat::Contiguous);
  const auto s = static_cast<uint64_t>(seed);
  const uint32_t key0 = mix32(static_cast<uint32_t>(s)), key1 = mix32(static_cast<uint32_t>(s >> 32) ^ 0x5bd1e995U);
  const uint32_t threshold = threshold_of(p);
  const int64_t n = x.numel();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "lightdvae_dropout", [&] {
    const auto fn = apply_for<RELU, scalar_t>(cpu::current_isa());
    const scalar_t scale = static_cast<scalar_t>(1.0 / (1.0 - p));
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    at::parallel_for(0, n, 1 << 16, [&](int64_t b, int64_t e) {
      while (b < e) {  // runs that share the high 32 bits of the index
        const auto hi = static_cast<uint32_t>(static_cast<uint64_t>(b) >> 32);
        const int64_t run_end = std::min<int64_t>(e, (static_cast<int64_t>(hi) + 1) << 32);
        fn(xp + b, yp + b, run_end - b, static_cast<uint32_t>(b), key0, mix32(hi + key1), threshold, scale);
        b = run_end;
      }
    });
  });
  return y;
}

at::Tensor dropout(const at::Tensor& x, double p, int64_t seed) { return masked<false>("lightdvae::dropout", x, p, seed); }

at::Tensor relu_dropout(const at::Tensor& x, double p, int64_t seed) {
  return masked<true>("lightdvae::relu_dropout", x, p, seed);
}

at::Tensor relu_dropout_backward(const at::Tensor& grad_in, const at::Tensor& y_in, double p) {
  constexpr const char* op = "lightdvae::relu_dropout_backward";
  check_p_and_dtype(op, p, grad_in, "grad");
  TORCH_CHECK(y_in.sizes() == grad_in.sizes() && y_in.scalar_type() == grad_in.scalar_type(), op,
              ": y must be the forward's output, of grad's shape and dtype; got ", y_in.sizes(), " ",
              y_in.scalar_type(), " against ", grad_in.sizes(), " ", grad_in.scalar_type());
  const at::Tensor grad = grad_in.contiguous(), y = y_in.contiguous();
  at::Tensor dx = at::empty_like(grad, at::MemoryFormat::Contiguous);
  const int64_t n = grad.numel();
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "lightdvae_relu_dropout_backward", [&] {
    const auto fn = kept_scale_for<scalar_t>(cpu::current_isa());
    const scalar_t scale = static_cast<scalar_t>(1.0 / (1.0 - p));
    const scalar_t* gp = grad.data_ptr<scalar_t>();
    const scalar_t* yp = y.data_ptr<scalar_t>();
    scalar_t* dp = dx.data_ptr<scalar_t>();
    at::parallel_for(0, n, 1 << 16, [&](int64_t b, int64_t e) { fn(gp + b, yp + b, dp + b, e - b, scale); });
  });
  return dx;
}

}  // namespace

TORCH_LIBRARY_IMPL(lightdvae, CPU, m) {
  m.impl("dropout", &dropout);
  m.impl("relu_dropout", &relu_dropout);
  m.impl("relu_dropout_backward", &relu_dropout_backward);
}

}  // namespace lightdvae
