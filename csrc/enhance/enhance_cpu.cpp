// The enhancement's native CPU kernels (issue 16), compiled per instruction set like the loss kernels (loss_isa.h:
// AVX-512, AVX2 or the baseline, the CPU's best that ATen allows).  Utterances are independent: at::parallel_for
// over the batch gives the same numbers on any number of threads.
//
// nmf_m_step, the M-step of the variational EM: IS-NMF multiplicative updates of the noise W (F, K) and H (K, T),
// the columns of W normalised, the per-frame gain g, then the divergence of the updated model -- what
// lightdvae/enhance/noise.py's m_step and mixture_divergence compute, in five passes over an utterance's (frames,
// F) bins instead of some forty ATen calls (each a pass of its own, with its own dispatch: ~1.2 ms an iteration at
// batch 1, 157 x 513 bins, a tenth of a DKF iteration).
//
// Model: V_tf = g_t v_tf + (WH)_ft.  With a = |X|^2 / V^2 and b = 1 / V (Fevotte & Idier 2011, exponent 1/2):
//   W_fk *= sqrt(sum_t a_tf H_kt / sum_t b_tf H_kt)          (a, b from the W, H, g before)
//   H_kt *= sqrt(sum_f W_fk a_tf / sum_f W_fk b_tf)          (from the new W)
//   n_k = sum_f |W_fk|;  W_fk /= n_k;  H_kt *= n_k           (every frame of H, as noise.py: WH unchanged)
//   g_t  *= sqrt(sum_f a_tf v_tf / sum_f b_tf v_tf)          (from the new W and H)
//   d = sum over the utterance's bins of |X|^2 / V - log((|X|^2 + 1e-8) / V) - 1, divided by (frames x F).
// Frames where mask is false take no part in the sums and keep their H (before the normalisation) and g.  Sums over
// frequency are vectorised (a partial sum per lane), sums over frames add blocks of 16 frames in float64; the
// element-wise terms are in the inputs' precision, the log of float inputs is fast_math.h's polynomial (about 1
// ulp).  float32 results are closer to float64's than those of the ATen calls (tests/test_enhance.py).
//
// mixture_is, the reconstruction term of the E-step (lightdvae/enhance/noise.py's mixture_reconstruction): per
// utterance, the Itakura-Saito divergence between the mixture's power p and its variance V = g_t exp(lv_tf) + n_tf,
// summed over the utterance's frames, and its gradient in lv, in one pass:
//   d_tf = p / V - log(p + eps) + log V - 1,        d d_tf / d lv_tf = (g_t exp(lv_tf) / V) (1 - p / V).
// The ATen composite it replaces (exp, addcmul, log, the IS kernel, the mask, the sum, and their backward) reads and
// writes (frames, F) arrays a dozen times an iteration.  Frames where mask is false add nothing and get a zero
// gradient.  Sums over frequency per lane in the inputs' precision, over frames in float64; exp and log of float
// inputs are fast_math.h's polynomials (about 1 ulp).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <tuple>
#include <vector>

#include "common.h"
#include "losses/fast_math.h"
#include "losses/loss_isa.h"

namespace lightdvae {
namespace {

LDV_HD float exp_of(float x) { return poly_expf(x); }
LDV_HD double exp_of(double x) { return std::exp(x); }
LDV_HD float log_of(float x) { return poly_logf(x); }
LDV_HD double log_of(double x) { return std::log(x); }

// ---------------------------------------------------------------------------------------------- the M-step
// Frames per block of the W update's sums: each block sums in T into a (K, F) array that stays in the L1/L2 cache,
// then adds into the float64 totals (a double accumulator per term would stream 2 x K x F doubles per frame).
constexpr int64_t kFramesPerBlock = 16;

// For frame t: a[f] = |X|^2 / V^2 and b[f] = 1 / V with V = g_t v_tf + sum_k W_fk H_kt (Wt: W transposed, (K, F)).
template <typename T>
LDV_HD void weights(T* a, T* b, const T* Wt, const T* H, const T* g, const T* power, const T* speech, int64_t t,
                    int64_t frames, int64_t F, int64_t K) {
  const T* v = speech + t * F;
  const T* p = power + t * F;
  const T gt = g[t];
#pragma omp simd
  for (int64_t f = 0; f < F; ++f) b[f] = gt * v[f];  // V, accumulated in b, one pass per term (in L1)
  for (int64_t k = 0; k < K; ++k) {
    const T h = H[k * frames + t];
    const T* w = Wt + k * F;
#pragma omp simd
    for (int64_t f = 0; f < F; ++f) b[f] += w[f] * h;
  }
#pragma omp simd
  for (int64_t f = 0; f < F; ++f) {
    const T inv = T(1) / b[f];
    b[f] = inv;
    a[f] = p[f] * inv * inv;
  }
}

// One utterance: W (F, K), H (K, T), g (T), power and speech (T, F), mask (T), all contiguous; K <= 64.  Returns
// the divergence of the updated model.  Scratch: Wt and a block's sums (K, F), the float64 totals (K, F) x 2, and
// a and b (F).
template <typename T>
LDV_HD double m_step_one(T* W, T* H, T* g, const T* power, const T* speech, const bool* mask, int64_t frames,
                         int64_t F, int64_t K, T* Wt, T* block_num, T* block_den, double* num, double* den, T* a,
                         T* b) {
  for (int64_t f = 0; f < F; ++f) {
    for (int64_t k = 0; k < K; ++k) Wt[k * F + f] = W[f * K + k];
  }
  // W: sums over frames, in blocks
  for (int64_t i = 0; i < K * F; ++i) num[i] = den[i] = 0.0;
  for (int64_t t0 = 0; t0 < frames; t0 += kFramesPerBlock) {
    for (int64_t i = 0; i < K * F; ++i) block_num[i] = block_den[i] = T(0);
    for (int64_t t = t0; t < std::min(frames, t0 + kFramesPerBlock); ++t) {
      if (!mask[t]) continue;
      weights(a, b, Wt, H, g, power, speech, t, frames, F, K);
      for (int64_t k = 0; k < K; ++k) {
        const T h = H[k * frames + t];
        T* nk = block_num + k * F;
        T* dk = block_den + k * F;
#pragma omp simd
        for (int64_t f = 0; f < F; ++f) {
          nk[f] += a[f] * h;
          dk[f] += b[f] * h;
        }
      }
    }
#pragma omp simd
    for (int64_t i = 0; i < K * F; ++i) {
      num[i] += static_cast<double>(block_num[i]);
      den[i] += static_cast<double>(block_den[i]);
    }
  }
  for (int64_t i = 0; i < K * F; ++i) Wt[i] *= static_cast<T>(std::sqrt(num[i] / den[i]));
  // H: sums over frequency, from the new W
  for (int64_t t = 0; t < frames; ++t) {
    if (!mask[t]) continue;
    weights(a, b, Wt, H, g, power, speech, t, frames, F, K);
    T factor[64];
    for (int64_t k = 0; k < K; ++k) {
      const T* w = Wt + k * F;
      T sa = 0, sb = 0;
#pragma omp simd reduction(+ : sa, sb)
      for (int64_t f = 0; f < F; ++f) {
        sa += w[f] * a[f];
        sb += w[f] * b[f];
      }
      factor[k] = std::sqrt(sa / sb);
    }
    for (int64_t k = 0; k < K; ++k) H[k * frames + t] *= factor[k];
  }
  // unit l1 columns of W; H takes the scale (every frame), so WH is unchanged
  for (int64_t k = 0; k < K; ++k) {
    T* w = Wt + k * F;
    double norm = 0.0;
    for (int64_t f = 0; f < F; ++f) norm += static_cast<double>(std::abs(w[f]));
    const T n = static_cast<T>(norm);
    for (int64_t f = 0; f < F; ++f) w[f] /= n;
    for (int64_t t = 0; t < frames; ++t) H[k * frames + t] *= n;
  }
  // g: sums over frequency, v fixed
  for (int64_t t = 0; t < frames; ++t) {
    if (!mask[t]) continue;
    weights(a, b, Wt, H, g, power, speech, t, frames, F, K);
    const T* v = speech + t * F;
    T sa = 0, sb = 0;
#pragma omp simd reduction(+ : sa, sb)
    for (int64_t f = 0; f < F; ++f) {
      sa += a[f] * v[f];
      sb += b[f] * v[f];
    }
    g[t] *= std::sqrt(sa / sb);
  }
  // the divergence of the updated model over the utterance's own bins (b = 1 / V)
  double total = 0.0;
  int64_t counted = 0;
  for (int64_t t = 0; t < frames; ++t) {
    if (!mask[t]) continue;
    weights(a, b, Wt, H, g, power, speech, t, frames, F, K);
    const T* p = power + t * F;
    T d = 0;
#pragma omp simd reduction(+ : d)
    for (int64_t f = 0; f < F; ++f) {
      d += p[f] * b[f] - log_of((p[f] + T(1e-8)) * b[f]) - T(1);
    }
    total += static_cast<double>(d);
    ++counted;
  }
  for (int64_t f = 0; f < F; ++f) {
    for (int64_t k = 0; k < K; ++k) W[f * K + k] = Wt[k * F + f];
  }
  return total / static_cast<double>(counted * F);
}

// Utterances [b0, b1) of the batch, each its slices and the same scratch.
template <typename T>
LDV_HD void m_step_range(T* W, T* H, T* g, const T* power, const T* speech, const bool* mask, int64_t b0, int64_t b1,
                         int64_t frames, int64_t bins, int64_t rank, T* divergence) {
  const int64_t n = rank * bins;
  std::vector<T> Wt(n), block_num(n), block_den(n), a(bins), b(bins);
  std::vector<double> num(n), den(n);
  for (int64_t i = b0; i < b1; ++i) {
    divergence[i] = static_cast<T>(m_step_one<T>(W + i * n, H + i * rank * frames, g + i * frames,
                                                 power + i * frames * bins, speech + i * frames * bins,
                                                 mask + i * frames, frames, bins, rank, Wt.data(), block_num.data(),
                                                 block_den.data(), num.data(), den.data(), a.data(), b.data()));
  }
}

// ---------------------------------------------------------------------------------------------- the E-step's term

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

// ---------------------------------------------------------------------------------------------- per instruction set

template <typename T>
using MStepFn = void (*)(T*, T*, T*, const T*, const T*, const bool*, int64_t, int64_t, int64_t, int64_t, int64_t,
                         T*);
template <typename T>
using MixtureFn = void (*)(const T*, const T*, const T*, const T*, const bool*, T, int64_t, int64_t, int64_t,
                           int64_t, T*, T*);

// Each kernel's copy for one instruction set: its range function inlined into a function compiled for that set.
#define LDV_ENHANCE_BLOCK(NS, TARGET)                                                                             \
  namespace NS {                                                                                                  \
  template <typename T>                                                                                           \
  TARGET void m_step(T* W, T* H, T* g, const T* power, const T* speech, const bool* mask, int64_t b0, int64_t b1, \
                     int64_t frames, int64_t bins, int64_t rank, T* divergence) {                                 \
    m_step_range<T>(W, H, g, power, speech, mask, b0, b1, frames, bins, rank, divergence);                        \
  }                                                                                                               \
  template <typename T>                                                                                           \
  TARGET void mixture(const T* power, const T* logvar, const T* gain, const T* noise, const bool* mask, T eps,    \
                      int64_t b0, int64_t b1, int64_t frames, int64_t F, T* loss, T* grad) {                      \
    mixture_is_range<T>(power, logvar, gain, noise, mask, eps, b0, b1, frames, F, loss, grad);                    \
  }                                                                                                               \
  }

LDV_ENHANCE_BLOCK(baseline, )
#if LDV_X86_MULTIVERSION
LDV_ENHANCE_BLOCK(avx2, __attribute__((target("arch=x86-64-v3"))))
LDV_ENHANCE_BLOCK(avx512, __attribute__((target("arch=x86-64-v4,prefer-vector-width=512"))))
#endif
#undef LDV_ENHANCE_BLOCK

template <typename T>
struct Kernels {
  MStepFn<T> m_step;
  MixtureFn<T> mixture;
};

// The copies for the instruction set the loss kernels use now.
template <typename T>
Kernels<T> kernels() {
#if LDV_X86_MULTIVERSION
  switch (cpu::current_isa()) {
    case cpu::Isa::kAvx512:
      return {&avx512::m_step<T>, &avx512::mixture<T>};
    case cpu::Isa::kAvx2:
      return {&avx2::m_step<T>, &avx2::mixture<T>};
    default:
      break;
  }
#endif
  return {&baseline::m_step<T>, &baseline::mixture<T>};
}

// ---------------------------------------------------------------------------------------------- the ops

void check_same(const at::Tensor& t, const at::Tensor& like, const char* name) {
  TORCH_CHECK(t.device() == like.device() && t.scalar_type() == like.scalar_type(), "lightdvae::nmf_m_step: ", name,
              " must be on the device and of the dtype of power");
  TORCH_CHECK(t.is_contiguous(), "lightdvae::nmf_m_step: ", name, " must be contiguous");
}

at::Tensor nmf_m_step(at::Tensor& W, at::Tensor& H, at::Tensor& g, const at::Tensor& power, const at::Tensor& speech,
                      const at::Tensor& mask) {
  constexpr const char* op = "lightdvae::nmf_m_step";
  TORCH_CHECK(power.dim() == 3, op, ": power must be (batch, frames, F), got ", power.sizes());
  TORCH_CHECK(power.scalar_type() == at::kFloat || power.scalar_type() == at::kDouble, op,
              ": float32 or float64 only, got ", power.scalar_type());
  const int64_t batch = power.size(0), frames = power.size(1), bins = power.size(2);
  TORCH_CHECK(W.dim() == 3 && W.size(0) == batch && W.size(1) == bins, op, ": W must be (batch, F, K) = (", batch,
              ", ", bins, ", K), got ", W.sizes());
  const int64_t rank = W.size(2);
  TORCH_CHECK(rank >= 1 && rank <= 64, op, ": the NMF rank K must be in [1, 64], got ", rank);
  TORCH_CHECK(H.sizes() == at::IntArrayRef({batch, rank, frames}), op, ": H must be (batch, K, frames) = (", batch,
              ", ", rank, ", ", frames, "), got ", H.sizes());
  TORCH_CHECK(g.sizes() == at::IntArrayRef({batch, frames}), op, ": g must be (batch, frames), got ", g.sizes());
  TORCH_CHECK(speech.sizes() == power.sizes(), op, ": speech must have the shape of power ", power.sizes(), ", got ",
              speech.sizes());
  TORCH_CHECK(mask.sizes() == at::IntArrayRef({batch, frames}) && mask.scalar_type() == at::kBool, op,
              ": mask must be bool (batch, frames), got ", mask.scalar_type(), " ", mask.sizes());
  check_same(W, power, "W");
  check_same(H, power, "H");
  check_same(g, power, "g");
  check_same(power, power, "power");
  check_same(speech, power, "speech");
  TORCH_CHECK(mask.is_contiguous() && mask.device() == power.device(), op,
              ": mask must be contiguous, on power's device");
  at::Tensor divergence = at::empty({batch}, power.options());
  AT_DISPATCH_FLOATING_TYPES(power.scalar_type(), "nmf_m_step", [&] {
    const MStepFn<scalar_t> fn = kernels<scalar_t>().m_step;
    scalar_t* d = divergence.mutable_data_ptr<scalar_t>();
    scalar_t* w = W.mutable_data_ptr<scalar_t>();
    scalar_t* h = H.mutable_data_ptr<scalar_t>();
    scalar_t* gp = g.mutable_data_ptr<scalar_t>();
    const scalar_t *p = power.const_data_ptr<scalar_t>(), *v = speech.const_data_ptr<scalar_t>();
    const bool* m = mask.const_data_ptr<bool>();
    at::parallel_for(0, batch, 1,
                     [&](int64_t b0, int64_t b1) { fn(w, h, gp, p, v, m, b0, b1, frames, bins, rank, d); });
  });
  return divergence;
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
    const MixtureFn<scalar_t> fn = kernels<scalar_t>().mixture;
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

TORCH_LIBRARY_IMPL(lightdvae, CPU, m) {
  m.impl("nmf_m_step", &nmf_m_step);
  m.impl("mixture_is", &mixture_is);
}

}  // namespace lightdvae
