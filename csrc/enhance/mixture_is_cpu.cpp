// The reconstruction term of the enhancement's E-step on the CPU (issue 16; lightdvae/enhance/noise.py's
// mixture_reconstruction): per utterance, the Itakura-Saito divergence between the mixture's power p and its
// variance V = g_t exp(lv_tf) + n_tf, summed over the utterance's frames, and its gradient in lv, in one pass:
//   d_tf = p / V - log(p + eps) + log V - 1,        d d_tf / d lv_tf = (g_t exp(lv_tf) / V) (1 - p / V).
// The ATen composite it replaces (exp, addcmul, log, the IS kernel, the mask, the sum, and their backward) reads and
// writes (frames, F) arrays a dozen times an iteration.  Frames where mask is false add nothing and get a zero
// gradient.  Sums over frequency per lane in the inputs' precision, over frames in float64; exp and log of float
// inputs are fast_math.h's polynomials (about 1 ulp), compiled per instruction set like the loss kernels.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <tuple>

#include "common.h"
#include "losses/fast_math.h"
#include "losses/loss_isa.h"

namespace lightdvae {
namespace {

LDV_HD float exp_of(float x) { return poly_expf(x); }
LDV_HD double exp_of(double x) { return std::exp(x); }
LDV_HD float log_of(float x) { return poly_logf(x); }
LDV_HD double log_of(double x) { return std::log(x); }

// Utterances [b0, b1): power, logvar, noise, grad (batch, frames, F); gain and mask (batch, frames); loss (batch).
// grad == nullptr: the loss alone.
template <typename T>
LDV_HD void mixture_is_range(const T* power, const T* logvar, const T* gain, const T* noise, const bool* mask,
                             T eps, int64_t b0, int64_t b1, int64_t frames, int64_t F, T* loss, T* grad) {
  for (int64_t i = b0; i < b1; ++i) {
    double total = 0.0;
    for (int64_t t = 0; t < frames; ++t) {
      const int64_t row = (i * frames + t) * F;
      const T* p = power + row;
      const T* lv = logvar + row;
      const T* n = noise + row;
      T* gr = grad == nullptr ? nullptr : grad + row;
      if (!mask[i * frames + t]) {
        if (gr != nullptr) {
          for (int64_t f = 0; f < F; ++f) gr[f] = T(0);
        }
        continue;
      }
      const T g = gain[i * frames + t];
      T sum = 0;
      if (gr != nullptr) {
#pragma omp simd reduction(+ : sum)
        for (int64_t f = 0; f < F; ++f) {
          const T speech = g * exp_of(lv[f]);
          const T vx = speech + n[f];
          const T inv = T(1) / vx;
          const T r = p[f] * inv;
          sum += r - log_of(p[f] + eps) + log_of(vx) - T(1);
          gr[f] = speech * inv * (T(1) - r);
        }
      } else {
#pragma omp simd reduction(+ : sum)
        for (int64_t f = 0; f < F; ++f) {
          const T vx = g * exp_of(lv[f]) + n[f];
          sum += p[f] / vx - log_of(p[f] + eps) + log_of(vx) - T(1);
        }
      }
      total += static_cast<double>(sum);
    }
    loss[i] = static_cast<T>(total);
  }
}

template <typename T>
using RangeFn = void (*)(const T*, const T*, const T*, const T*, const bool*, T, int64_t, int64_t, int64_t, int64_t,
                         T*, T*);

#define LDV_MIXTURE_BLOCK(NS, TARGET)                                                                            \
  namespace NS {                                                                                                 \
  template <typename T>                                                                                          \
  TARGET void run(const T* power, const T* logvar, const T* gain, const T* noise, const bool* mask, T eps,        \
                  int64_t b0, int64_t b1, int64_t frames, int64_t F, T* loss, T* grad) {                         \
    mixture_is_range<T>(power, logvar, gain, noise, mask, eps, b0, b1, frames, F, loss, grad);                   \
  }                                                                                                              \
  }

LDV_MIXTURE_BLOCK(baseline, )
#if LDV_X86_MULTIVERSION
LDV_MIXTURE_BLOCK(avx2, __attribute__((target("arch=x86-64-v3"))))
LDV_MIXTURE_BLOCK(avx512, __attribute__((target("arch=x86-64-v4,prefer-vector-width=512"))))
#endif
#undef LDV_MIXTURE_BLOCK

template <typename T>
RangeFn<T> run_for(cpu::Isa isa) {
#if LDV_X86_MULTIVERSION
  if (isa == cpu::Isa::kAvx512) return &avx512::run<T>;
  if (isa == cpu::Isa::kAvx2) return &avx2::run<T>;
#endif
  (void)isa;
  return &baseline::run<T>;
}

std::tuple<at::Tensor, at::Tensor> mixture_is(const at::Tensor& power, const at::Tensor& logvar, const at::Tensor& gain,
                                              const at::Tensor& noise, const at::Tensor& mask, double eps,
                                              bool with_grad) {
  constexpr const char* op = "lightdvae::mixture_is";
  TORCH_CHECK(power.dim() == 3, op, ": power must be (batch, frames, F), got ", power.sizes());
  TORCH_CHECK(power.scalar_type() == at::kFloat || power.scalar_type() == at::kDouble, op,
              ": float32 or float64 only, got ", power.scalar_type());
  const int64_t batch = power.size(0), frames = power.size(1), bins = power.size(2);
  for (const at::Tensor* t : {&logvar, &noise}) {
    TORCH_CHECK(t->sizes() == power.sizes(), op, ": logvar and noise must have the shape of power ", power.sizes(),
                ", got ", t->sizes());
  }
  TORCH_CHECK(gain.sizes() == at::IntArrayRef({batch, frames}), op, ": gain must be (batch, frames), got ",
              gain.sizes());
  TORCH_CHECK(mask.sizes() == at::IntArrayRef({batch, frames}) && mask.scalar_type() == at::kBool, op,
              ": mask must be bool (batch, frames), got ", mask.scalar_type(), " ", mask.sizes());
  for (const at::Tensor* t : {&power, &logvar, &gain, &noise}) {
    TORCH_CHECK(t->device() == power.device() && t->scalar_type() == power.scalar_type(), op,
                ": power, logvar, gain and noise must share a device and a dtype");
  }
  const at::Tensor p = power.contiguous(), lv = logvar.contiguous(), g = gain.contiguous(), n = noise.contiguous();
  const at::Tensor m = mask.contiguous();
  at::Tensor loss = at::empty({batch}, power.options());
  at::Tensor grad = with_grad ? at::empty_like(p, at::MemoryFormat::Contiguous) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(power.scalar_type(), "mixture_is", [&] {
    const RangeFn<scalar_t> fn = run_for<scalar_t>(cpu::current_isa());
    scalar_t* gr = with_grad ? grad.mutable_data_ptr<scalar_t>() : nullptr;
    scalar_t* out = loss.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, batch, 1, [&](int64_t b0, int64_t b1) {
      fn(p.const_data_ptr<scalar_t>(), lv.const_data_ptr<scalar_t>(), g.const_data_ptr<scalar_t>(),
         n.const_data_ptr<scalar_t>(), m.const_data_ptr<bool>(), static_cast<scalar_t>(eps), b0, b1, frames, bins, out,
         gr);
    });
  });
  return {loss, grad};
}

}  // namespace

TORCH_LIBRARY_IMPL(lightdvae, CPU, m) { m.impl("mixture_is", &mixture_is); }

}  // namespace lightdvae
