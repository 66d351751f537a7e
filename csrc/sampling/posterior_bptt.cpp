// Posterior sampling loops with an explicit backward through time (issue 17; schemas in csrc/lightdvae.cpp).
//
// <loop>_bptt runs the loop of the composite op <loop> (sampling_loops.cpp, the reference) and also returns a flat
// workspace holding every per-step activation; <loop>_bptt_backward takes the output gradients and that workspace
// and returns the gradient of every input (see bptt.h for how the work is split between the step-by-step part and
// the part batched over all steps).  lightdvae/ops/sampling.py registers the backward as the forward's autograd
// formula.  The code is ATen calls on the device of the inputs, except each loop's step-by-step part: on CUDA one
// kernel launch (row_loops.h: a thread block per batch row), on the CPU raw-pointer steps at batch <= 4
// (small_batch.h) and ATen calls above.  DKF's and SRNN's loops here, RVAE's in rvae_bptt.cpp.
#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#include <atomic>
#include <tuple>
#include <vector>

#include "sampling/bptt.h"
#include "sampling/cells.h"
#include "sampling/row_tensors.h"
#include "sampling/sampling.h"
#include "sampling/small_batch.h"

namespace lightdvae {
namespace {

using bptt::Regions;
using bptt::draw_into;
using bptt::heads_backward;
using bptt::heads_grad_buffer;
using bptt::heads_grads;
using bptt::joint_heads;
using bptt::previous;
using Grads5 = std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>,
                          std::vector<at::Tensor>>;
using Grads4 = std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>>;

// ------------------------------------------------------------------------------------------ DKF

// The workspace of the DKF loop: the outputs of every z_to_g layer, g, the outputs of every posterior layer.
struct DkfWorkspace {
  Regions z_to_g, g, posterior;
  DkfWorkspace(const at::Tensor& flat, int64_t frames, int64_t batch, int64_t g_dim, at::TensorList z_to_g_w,
               at::TensorList posterior_w)
      : z_to_g(flat, 0, frames, batch, bptt::widths(z_to_g_w)),
        g(flat, z_to_g.end(), frames, batch, {g_dim}),
        posterior(flat, g.end(), frames, batch, bptt::widths(posterior_w)) {}
  static int64_t size(int64_t frames, int64_t batch, int64_t g_dim, at::TensorList z_to_g_w,
                      at::TensorList posterior_w) {
    return frames * batch * (bptt::sum(bptt::widths(z_to_g_w)) + g_dim + bptt::sum(bptt::widths(posterior_w)));
  }
  // The heads' input: the last posterior layer's output (g itself without posterior layers).
  at::Tensor hidden() const { return posterior.size() ? posterior[posterior.size() - 1] : g[0]; }
};

// The loop of dkf_posterior_bptt on raw pointers (small batch): the same steps as the ATen loop below.
template <typename T>
void dkf_forward_small(const at::Tensor& gx, const at::Tensor& eps, at::TensorList z_to_g, at::TensorList posterior_mlp,
                       at::TensorList heads_w, double g_terms, int64_t activation, const DkfWorkspace& ws,
                       const at::Tensor& z, const at::Tensor& stats) {
  const int64_t frames = gx.size(0), batch = gx.size(1), g_dim = gx.size(2), z_dim = z.size(2);
  const auto z_to_g_l = small::layers<T>(z_to_g), posterior_l = small::layers<T>(posterior_mlp);
  const small::Layer<T> heads(at::cat({heads_w[0], heads_w[2]}, 0), at::cat({heads_w[1], heads_w[3]}, 0));
  const std::vector<T> z0(batch * z_dim, T(0));
  const T divisor = static_cast<T>(g_terms);
  T* zp = z.data_ptr<T>();
  T* sp = stats.data_ptr<T>();
  const T* gxp = gx.data_ptr<T>();
  const T* ep = eps.defined() ? eps.data_ptr<T>() : nullptr;
  for (int64_t t = 0; t < frames; ++t) {
    const T* prev = t > 0 ? zp + (t - 1) * batch * z_dim : z0.data();
    const T* zg = small::stack_forward(z_to_g_l, ws.z_to_g, t, prev, batch, activation);
    T* g = small::at_step<T>(ws.g, 0, t);
    const T* gx_t = gxp + t * batch * g_dim;
    for (int64_t j = 0; j < batch * g_dim; ++j) {
      g[j] = (zg[j] + gx_t[j]) / divisor;
    }
    const T* h = small::stack_forward(posterior_l, ws.posterior, t, g, batch, activation);
    T* stats_t = sp + t * batch * 2 * z_dim;
    heads(stats_t, h, batch);
    small::draw(zp + t * batch * z_dim, stats_t, ep ? ep + t * batch * z_dim : nullptr, batch, z_dim);
  }
}

// The step-by-step part of dkf_posterior_bptt_backward on raw pointers (small batch): the ATen loop's steps.
struct DkfBackwardState {
  const Regions &dact_z_to_g, &dact_posterior, &dpre_z_to_g, &dpre_posterior;
  at::Tensor dstats, dz, grad_mean, grad_logvar, half_noise, heads_cat, dg;
};

template <typename T>
void dkf_backward_small(const DkfBackwardState& s, at::TensorList z_to_g, at::TensorList posterior_mlp,
                        double g_terms) {
  const int64_t frames = s.dz.size(0), batch = s.dz.size(1), z_dim = s.dz.size(2);
  const int64_t hidden = s.heads_cat.size(1), g_dim = s.dg.size(2);
  const auto w_z_to_g = small::weights(z_to_g), w_posterior = small::weights(posterior_mlp);
  int64_t widest = std::max({hidden, g_dim, z_dim});
  for (const auto& w : w_z_to_g) widest = std::max(widest, w.size(1));
  for (const auto& w : w_posterior) widest = std::max(widest, w.size(1));
  std::vector<T> dh(batch * hidden), scratch(batch * widest);
  T* ds = s.dstats.data_ptr<T>();
  T* dz = s.dz.data_ptr<T>();
  T* dg = s.dg.data_ptr<T>();
  const T* grad_mean = s.grad_mean.data_ptr<T>();
  const T* grad_logvar = s.grad_logvar.data_ptr<T>();
  const T* half_noise = s.half_noise.defined() ? s.half_noise.data_ptr<T>() : nullptr;
  const T* heads_cat = s.heads_cat.data_ptr<T>();
  const T alpha = static_cast<T>(1.0 / g_terms);
  for (int64_t t = frames - 1; t >= 0; --t) {
    const int64_t at_z = t * batch * z_dim;
    std::fill(dh.begin(), dh.end(), T(0));
    small::heads_backward(ds + 2 * at_z, dz + at_z, grad_mean + at_z, grad_logvar + at_z,
                          half_noise ? half_noise + at_z : nullptr, heads_cat, hidden, hidden, dh.data(), batch, z_dim);
    T* dg_t = dg + t * batch * g_dim;
    if (posterior_mlp.empty()) {
      std::copy(dh.begin(), dh.end(), dg_t);
    } else {
      const T* d0 =
          small::stack_backward(w_posterior, s.dact_posterior, s.dpre_posterior, t, dh.data(), batch, scratch);
      std::fill(dg_t, dg_t + batch * g_dim, T(0));
      small::mm_acc(dg_t, d0, w_posterior[0].data_ptr<T>(), batch, w_posterior[0].size(0), g_dim, g_dim);
    }
    const T* d0 = small::stack_backward(w_z_to_g, s.dact_z_to_g, s.dpre_z_to_g, t, dg_t, batch, scratch);
    if (t > 0) {
      T* dz_prev = dz + at_z - batch * z_dim;
      if (z_to_g.empty()) {
        for (int64_t j = 0; j < batch * z_dim; ++j) {
          dz_prev[j] += alpha * d0[j];
        }
      } else {
        small::mm_acc(dz_prev, d0, w_z_to_g[0].data_ptr<T>(), batch, w_z_to_g[0].size(0), z_dim, z_dim);
      }
    }
  }
}

// The loops of dkf_posterior_bptt and its backward as row loops (row_loops.h): one CUDA launch each, or their code
// serially on the CPU.
template <typename T>
void dkf_forward_rows(rows::Path path, const at::Tensor& gx, const at::Tensor& eps, at::TensorList z_to_g,
                      at::TensorList posterior_mlp, at::TensorList heads_w, double g_terms, int64_t activation,
                      const DkfWorkspace& ws, const at::Tensor& z, const at::Tensor& stats) {
  rows::Hold<T> hold;
  rows::DkfForward<T> a;
  hold.outputs(a, z, stats, eps, heads_w, activation, z.size(2));
  a.g_dim = static_cast<int>(gx.size(2));
  a.g_terms = static_cast<T>(g_terms);
  a.gx = hold(gx);
  a.z_to_g = hold.forward(z_to_g);
  a.posterior = hold.forward(posterior_mlp);
  a.z_to_g_out = rows::regions<T>(ws.z_to_g);
  a.posterior_out = rows::regions<T>(ws.posterior);
  a.g = hold.out(ws.g[0]);
  rows::run(path, a, rows::team_size(rows::widest({z_to_g, posterior_mlp}, 2 * a.z_dim)));
}

template <typename T>
void dkf_backward_rows(rows::Path path, const DkfBackwardState& s, at::TensorList z_to_g, at::TensorList posterior_mlp,
                       double g_terms) {
  rows::Hold<T> hold;
  rows::DkfBackward<T> a;
  hold.gradients(a, s.dstats, s.dz, s.grad_mean, s.grad_logvar, s.half_noise, s.heads_cat);
  a.g_dim = static_cast<int>(s.dg.size(2));
  a.hidden = static_cast<int>(s.heads_cat.size(1));
  a.alpha = static_cast<T>(1.0 / g_terms);
  a.dg = hold.out(s.dg);
  a.z_to_g = hold.backward(z_to_g);
  a.posterior = hold.backward(posterior_mlp);
  a.dact_z_to_g = rows::regions<T>(s.dact_z_to_g);
  a.dpre_z_to_g = rows::regions<T>(s.dpre_z_to_g);
  a.dact_posterior = rows::regions<T>(s.dact_posterior);
  a.dpre_posterior = rows::regions<T>(s.dpre_posterior);
  const int widest = rows::widest({z_to_g, posterior_mlp}, std::max({a.hidden, a.g_dim, 2 * a.z_dim}));
  hold.scratch(a, a.hidden + widest, s.dz.options());
  rows::run(path, a, rows::team_size(widest));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> dkf_posterior_bptt(
    const at::Tensor& gx_in, const std::optional<at::Tensor>& eps_in, at::TensorList z_to_g,
    at::TensorList posterior_mlp, at::TensorList heads_w, double g_terms, int64_t activation) {
  const at::NoGradGuard no_grad;  // its autograd formula is the backward op
  const at::Tensor eps = eps_in.has_value() ? eps_in->contiguous() : at::Tensor();
  const int64_t z_dim = check_dkf_posterior("lightdvae::dkf_posterior_bptt", gx_in, eps, z_to_g, posterior_mlp,
                                            heads_w, g_terms, activation);
  const at::Tensor gx = gx_in.contiguous();
  const int64_t frames = gx.size(0), batch = gx.size(1), g_dim = gx.size(2);
  at::Tensor flat = at::empty({DkfWorkspace::size(frames, batch, g_dim, z_to_g, posterior_mlp)}, gx.options());
  const DkfWorkspace ws(flat, frames, batch, g_dim, z_to_g, posterior_mlp);
  const auto z_to_g_l = sampling::linears(z_to_g), posterior_l = sampling::linears(posterior_mlp);
  const sampling::Linear heads = joint_heads(heads_w);

  at::Tensor z = at::empty({frames, batch, z_dim}, gx.options());
  at::Tensor stats = at::empty({frames, batch, 2 * z_dim}, gx.options());
  at::Tensor scale = at::empty({batch, z_dim}, gx.options());
  const rows::Path rows_path = rows::path(gx, {z_to_g, posterior_mlp});
  if (rows_path != rows::Path::kNo) {
    const c10::DeviceGuard guard(gx.device());
    AT_DISPATCH_FLOATING_TYPES(gx.scalar_type(), "dkf_posterior_bptt", [&] {
      dkf_forward_rows<scalar_t>(rows_path, gx, eps, z_to_g, posterior_mlp, heads_w, g_terms, activation, ws, z, stats);
    });
    return {z, stats.narrow(2, 0, z_dim).contiguous(), stats.narrow(2, z_dim, z_dim).contiguous(), flat};
  }
  if (small::eligible(gx, batch)) {
    AT_DISPATCH_FLOATING_TYPES(gx.scalar_type(), "dkf_posterior_bptt", [&] {
      dkf_forward_small<scalar_t>(gx, eps, z_to_g, posterior_mlp, heads_w, g_terms, activation, ws, z, stats);
    });
    return {z, stats.narrow(2, 0, z_dim).contiguous(), stats.narrow(2, z_dim, z_dim).contiguous(), flat};
  }
  const at::Tensor z0 = at::zeros({batch, z_dim}, gx.options());
  for (int64_t t = 0; t < frames; ++t) {
    const at::Tensor zg = bptt::stack_forward(z_to_g_l, ws.z_to_g, t, t > 0 ? z[t - 1] : z0, activation);
    at::Tensor g = ws.g[0][t];
    at::add_out(g, zg, gx[t]);
    g.div_(g_terms);
    const at::Tensor h = bptt::stack_forward(posterior_l, ws.posterior, t, g, activation);
    at::Tensor stats_t = stats[t];
    at::addmm_out(stats_t, heads.b, h, heads.wt);
    draw_into(z[t], stats_t, eps, t, scale);
  }
  return {z, stats.narrow(2, 0, z_dim).contiguous(), stats.narrow(2, z_dim, z_dim).contiguous(), flat};
}

Grads5 dkf_posterior_bptt_backward(const at::Tensor& grad_z, const at::Tensor& grad_mean_in,
                                   const at::Tensor& grad_logvar_in, const std::optional<at::Tensor>& eps_in,
                                   const at::Tensor& z, const at::Tensor& logvar, const at::Tensor& workspace,
                                   at::TensorList z_to_g, at::TensorList posterior_mlp, at::TensorList heads_w,
                                   double g_terms, int64_t activation) {
  constexpr const char* op = "lightdvae::dkf_posterior_bptt_backward";
  const at::NoGradGuard no_grad;  // not differentiable itself (no double backward)
  check_sequence(op, z, "z");
  check_activation(op, activation);
  const int64_t frames = z.size(0), batch = z.size(1);
  const int64_t g_dim = posterior_mlp.empty() ? heads_w[0].size(1) : posterior_mlp[0].size(1);
  TORCH_CHECK(workspace.dim() == 1 &&
                  workspace.numel() == DkfWorkspace::size(frames, batch, g_dim, z_to_g, posterior_mlp),
              op, ": workspace is not the one dkf_posterior_bptt returned for these shapes");
  for (const auto* t : {&grad_z, &grad_mean_in, &grad_logvar_in, &logvar}) {
    TORCH_CHECK(t->sizes() == z.sizes(), op, ": every gradient and output must be (frames, batch, z_dim) = ",
                z.sizes(), ", got ", t->sizes());
  }
  const at::Tensor eps = eps_in.has_value() ? eps_in->contiguous() : at::Tensor();
  const at::Tensor grad_mean = grad_mean_in.contiguous(), grad_logvar = grad_logvar_in.contiguous();
  const DkfWorkspace ws(workspace.contiguous(), frames, batch, g_dim, z_to_g, posterior_mlp);

  // Batched over all steps: act' of every layer (z_to_g's last one divided by g_terms, the factor of g), the noise
  // term of dlogvar, the pre-activation gradients' buffers.
  const Regions dact_z_to_g(bptt::activation_derivative(ws.z_to_g.all(), activation), 0, frames, batch,
                            bptt::widths(z_to_g));
  if (dact_z_to_g.size()) {
    dact_z_to_g[dact_z_to_g.size() - 1].div_(g_terms);
  }
  const Regions dact_posterior(bptt::activation_derivative(ws.posterior.all(), activation), 0, frames, batch,
                               bptt::widths(posterior_mlp));
  const at::Tensor dpre_flat = at::empty({ws.z_to_g.all().numel() + ws.posterior.all().numel()}, z.options());
  const Regions dpre_z_to_g(dpre_flat, 0, frames, batch, bptt::widths(z_to_g));
  const Regions dpre_posterior(dpre_flat, dpre_z_to_g.end(), frames, batch, bptt::widths(posterior_mlp));
  const at::Tensor scale = eps.defined() ? at::exp(logvar * 0.5) : at::Tensor();
  const at::Tensor half_noise = eps.defined() ? eps * scale * 0.5 : at::Tensor();
  const at::Tensor heads_cat = at::cat({heads_w[0], heads_w[2]}, 0);

  at::Tensor dz = grad_z.clone(at::MemoryFormat::Contiguous);  // + the recurrent terms, added step by step
  at::Tensor dstats = heads_grad_buffer(grad_logvar, eps.defined());
  at::Tensor dg = at::empty({frames, batch, g_dim}, z.options());
  const DkfBackwardState state{dact_z_to_g, dact_posterior, dpre_z_to_g,  dpre_posterior, dstats,
                               dz,          grad_mean,      grad_logvar,  half_noise,     heads_cat, dg};
  const rows::Path rows_path = rows::path(z, {z_to_g, posterior_mlp});
  if (rows_path != rows::Path::kNo) {
    const c10::DeviceGuard guard(z.device());
    AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "dkf_posterior_bptt_backward",
                               [&] { dkf_backward_rows<scalar_t>(rows_path, state, z_to_g, posterior_mlp, g_terms); });
  } else if (small::eligible(z, batch)) {
    AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "dkf_posterior_bptt_backward",
                               [&] { dkf_backward_small<scalar_t>(state, z_to_g, posterior_mlp, g_terms); });
  } else {
    for (int64_t t = frames - 1; t >= 0; --t) {
      const at::Tensor dh = heads_backward(dstats, dz, grad_mean, grad_logvar, half_noise, heads_cat, t);
      at::Tensor dg_t = dg[t];
      if (posterior_mlp.empty()) {
        dg_t.copy_(dh);
      } else {
        at::mm_out(dg_t, bptt::stack_backward(posterior_mlp, dact_posterior, dpre_posterior, t, dh),
                   posterior_mlp[0]);
      }
      const at::Tensor d0 = bptt::stack_backward(z_to_g, dact_z_to_g, dpre_z_to_g, t, dg_t);
      if (t > 0) {
        if (z_to_g.empty()) {
          dz[t - 1].add_(d0, 1.0 / g_terms);
        } else {
          dz[t - 1].addmm_(d0, z_to_g[0]);
        }
      }
    }
  }
  std::vector<at::Tensor> grads_heads = heads_grads(dstats, ws.hidden());
  return {dg / g_terms,
          eps.defined() ? dz * scale : at::empty({0}, z.options()),
          bptt::stack_grads(dpre_z_to_g, ws.z_to_g, previous(z)),
          bptt::stack_grads(dpre_posterior, ws.posterior, ws.g[0]),
          std::move(grads_heads)};
}

// ----------------------------------------------------------------------------------------- SRNN
//
// Each step: posterior MLP on [g_t ; z_{t-1}] (none: the heads read it), heads, draw.  The g part (and bias) of the
// first layer reading [g_t ; z_{t-1}] is one GEMM over all steps before the loop, its g gradient one after the
// backward loop.  The workspace holds the outputs of every posterior layer.

// The first layer reading [g_t ; z_{t-1}]: posterior layer 0, or the heads as one Linear.
sampling::Linear srnn_joint(at::TensorList posterior_mlp, at::TensorList heads_w) {
  if (!posterior_mlp.empty()) {
    return {posterior_mlp[0].t(), posterior_mlp[1]};
  }
  return joint_heads(heads_w);
}

// The loop of srnn_posterior_bptt on raw pointers (small batch): the same steps as the ATen loop below.
// projected: (frames, batch, out) the g part and bias of the joint layer; w_z_t: (z_dim, out) its z part.
template <typename T>
void srnn_forward_small(const at::Tensor& projected, const at::Tensor& w_z_t, at::TensorList posterior_mlp,
                        at::TensorList heads_w, const Regions& posterior, int64_t activation, const at::Tensor& eps,
                        const at::Tensor& z, const at::Tensor& stats) {
  const int64_t frames = z.size(0), batch = z.size(1), z_dim = z.size(2), out = projected.size(2);
  const auto posterior_l = small::layers<T>(posterior_mlp);
  const small::Layer<T> heads(at::cat({heads_w[0], heads_w[2]}, 0), at::cat({heads_w[1], heads_w[3]}, 0));
  const at::Tensor w_z = w_z_t.contiguous();
  const std::vector<T> z0(batch * z_dim, T(0));
  T* zp = z.data_ptr<T>();
  T* sp = stats.data_ptr<T>();
  const T* pp = projected.data_ptr<T>();
  const T* ep = eps.defined() ? eps.data_ptr<T>() : nullptr;
  for (int64_t t = 0; t < frames; ++t) {
    T* stats_t = sp + t * batch * 2 * z_dim;
    T* y0 = posterior_l.empty() ? stats_t : small::at_step<T>(posterior, 0, t);
    std::copy(pp + t * batch * out, pp + (t + 1) * batch * out, y0);
    small::mm_acc(y0, t > 0 ? zp + (t - 1) * batch * z_dim : z0.data(), w_z.data_ptr<T>(), batch, z_dim, out, out);
    if (!posterior_l.empty()) {
      small::activate(y0, batch * out, activation);
      heads(stats_t, small::stack_forward(posterior_l, posterior, t, y0, batch, activation, 1), batch);
    }
    small::draw(zp + t * batch * z_dim, stats_t, ep ? ep + t * batch * z_dim : nullptr, batch, z_dim);
  }
}

// The step-by-step part of srnn_posterior_bptt_backward on raw pointers (small batch): the ATen loop's steps.
// w_joint: (out, g_dim + z_dim), the first layer reading [g_t ; z_{t-1}] (the heads without posterior layers).
template <typename T>
void srnn_backward_small(const Regions& dact, const Regions& dpre, at::TensorList posterior_mlp,
                         const at::Tensor& heads_cat, const at::Tensor& w_joint_in, const at::Tensor& dstats,
                         const at::Tensor& dz_all, const at::Tensor& grad_mean_all, const at::Tensor& grad_logvar_all,
                         const at::Tensor& half_noise_all) {
  const int64_t frames = dz_all.size(0), batch = dz_all.size(1), z_dim = dz_all.size(2);
  const int64_t hidden = heads_cat.size(1);
  const at::Tensor w_joint = w_joint_in.contiguous();
  const int64_t joint_in = w_joint.size(1), g_dim = joint_in - z_dim;
  const auto w_posterior = small::weights(posterior_mlp);
  int64_t widest = hidden;
  for (const auto& w : w_posterior) widest = std::max(widest, w.size(1));
  std::vector<T> dh(batch * hidden), scratch(batch * widest);
  T* ds = dstats.data_ptr<T>();
  T* dz = dz_all.data_ptr<T>();
  const T* grad_mean = grad_mean_all.data_ptr<T>();
  const T* grad_logvar = grad_logvar_all.data_ptr<T>();
  const T* half_noise = half_noise_all.defined() ? half_noise_all.data_ptr<T>() : nullptr;
  const T* w_z = w_joint.data_ptr<T>() + g_dim;  // its z columns, row stride joint_in
  for (int64_t t = frames - 1; t >= 0; --t) {
    const int64_t at_z = t * batch * z_dim;
    T* dz_prev = t > 0 ? dz + at_z - batch * z_dim : nullptr;
    const T* noise_t = half_noise ? half_noise + at_z : nullptr;
    if (posterior_mlp.empty()) {
      small::heads_backward(ds + 2 * at_z, dz + at_z, grad_mean + at_z, grad_logvar + at_z, noise_t, w_z, z_dim,
                            joint_in, dz_prev, batch, z_dim);
      continue;
    }
    std::fill(dh.begin(), dh.end(), T(0));
    small::heads_backward(ds + 2 * at_z, dz + at_z, grad_mean + at_z, grad_logvar + at_z, noise_t,
                          heads_cat.data_ptr<T>(), hidden, hidden, dh.data(), batch, z_dim);
    const T* d0 = small::stack_backward(w_posterior, dact, dpre, t, dh.data(), batch, scratch);
    if (dz_prev) {
      small::mm_acc(dz_prev, d0, w_z, batch, w_joint.size(0), z_dim, joint_in);
    }
  }
}

// The loops of srnn_posterior_bptt and its backward as row loops (row_loops.h).
template <typename T>
void srnn_forward_rows(rows::Path path, const at::Tensor& projected, const at::Tensor& w_z_t,
                       at::TensorList posterior_mlp, at::TensorList heads_w, const Regions& posterior,
                       int64_t activation, const at::Tensor& eps, const at::Tensor& z, const at::Tensor& stats) {
  rows::Hold<T> hold;
  rows::SrnnForward<T> a;
  hold.outputs(a, z, stats, eps, heads_w, activation, z.size(2));
  a.out = static_cast<int>(projected.size(2));
  a.projected = hold(projected);
  a.w_z = hold(w_z_t);
  a.posterior = hold.forward(posterior_mlp);
  a.posterior_out = rows::regions<T>(posterior);
  rows::run(path, a, rows::team_size(rows::widest({posterior_mlp}, std::max(a.out, 2 * a.z_dim))));
}

template <typename T>
void srnn_backward_rows(rows::Path path, const Regions& dact, const Regions& dpre, at::TensorList posterior_mlp,
                        const at::Tensor& heads_cat, const at::Tensor& w_joint, const at::Tensor& dstats,
                        const at::Tensor& dz, const at::Tensor& grad_mean, const at::Tensor& grad_logvar,
                        const at::Tensor& half_noise) {
  rows::Hold<T> hold;
  rows::SrnnBackward<T> a;
  hold.gradients(a, dstats, dz, grad_mean, grad_logvar, half_noise, heads_cat);
  a.g_dim = static_cast<int>(w_joint.size(1)) - a.z_dim;
  a.hidden = static_cast<int>(heads_cat.size(1));
  a.w_joint = hold(w_joint);
  a.posterior = hold.backward(posterior_mlp);
  a.dact = rows::regions<T>(dact);
  a.dpre = rows::regions<T>(dpre);
  const int widest = rows::widest({posterior_mlp}, std::max(a.hidden, 2 * a.z_dim));
  hold.scratch(a, a.hidden + widest, dz.options());
  rows::run(path, a, rows::team_size(widest));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> srnn_posterior_bptt(const at::Tensor& g_in,
                                                                              const std::optional<at::Tensor>& eps_in,
                                                                              at::TensorList posterior_mlp,
                                                                              at::TensorList heads_w,
                                                                              int64_t activation) {
  const at::NoGradGuard no_grad;  // its autograd formula is the backward op
  const at::Tensor eps = eps_in.has_value() ? eps_in->contiguous() : at::Tensor();
  const int64_t z_dim =
      check_srnn_posterior("lightdvae::srnn_posterior_bptt", g_in, eps, posterior_mlp, heads_w, activation);
  const at::Tensor g = g_in.contiguous();
  const int64_t frames = g.size(0), batch = g.size(1), g_dim = g.size(2);
  const auto widths = bptt::widths(posterior_mlp);
  at::Tensor flat = at::empty({frames * batch * bptt::sum(widths)}, g.options());
  const Regions posterior(flat, 0, frames, batch, widths);
  const auto posterior_l = sampling::linears(posterior_mlp);
  const sampling::Linear heads = joint_heads(heads_w), joint = srnn_joint(posterior_mlp, heads_w);
  const at::Tensor projected = at::addmm(joint.b, bptt::rows(g), joint.wt.narrow(0, 0, g_dim))
                                 .view({frames, batch, joint.wt.size(1)});  // explicit width: frames * batch may be 0
  const at::Tensor w_z_t = joint.wt.narrow(0, g_dim, z_dim);

  at::Tensor z = at::empty({frames, batch, z_dim}, g.options());
  at::Tensor stats = at::empty({frames, batch, 2 * z_dim}, g.options());
  at::Tensor scale = at::empty({batch, z_dim}, g.options());
  const rows::Path rows_path = rows::path(g, {posterior_mlp});
  if (rows_path != rows::Path::kNo) {
    const c10::DeviceGuard guard(g.device());
    AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "srnn_posterior_bptt", [&] {
      srnn_forward_rows<scalar_t>(rows_path, projected, w_z_t, posterior_mlp, heads_w, posterior, activation, eps, z,
                                  stats);
    });
    return {z, stats.narrow(2, 0, z_dim).contiguous(), stats.narrow(2, z_dim, z_dim).contiguous(), flat};
  }
  if (small::eligible(g, batch)) {
    AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "srnn_posterior_bptt", [&] {
      srnn_forward_small<scalar_t>(projected, w_z_t, posterior_mlp, heads_w, posterior, activation, eps, z, stats);
    });
    return {z, stats.narrow(2, 0, z_dim).contiguous(), stats.narrow(2, z_dim, z_dim).contiguous(), flat};
  }
  const at::Tensor z0 = at::zeros({batch, z_dim}, g.options());
  for (int64_t t = 0; t < frames; ++t) {
    at::Tensor stats_t = stats[t];
    at::Tensor y0 = posterior_l.empty() ? stats_t : posterior[0][t];
    at::addmm_out(y0, projected[t], t > 0 ? z[t - 1] : z0, w_z_t);
    if (!posterior_l.empty()) {
      bptt::activate_(y0, activation);
      at::addmm_out(stats_t, heads.b, bptt::stack_forward(posterior_l, posterior, t, y0, activation, 1), heads.wt);
    }
    draw_into(z[t], stats_t, eps, t, scale);
  }
  return {z, stats.narrow(2, 0, z_dim).contiguous(), stats.narrow(2, z_dim, z_dim).contiguous(), flat};
}

Grads4 srnn_posterior_bptt_backward(const at::Tensor& grad_z, const at::Tensor& grad_mean_in,
                                    const at::Tensor& grad_logvar_in, const std::optional<at::Tensor>& eps_in,
                                    const at::Tensor& g_in, const at::Tensor& z, const at::Tensor& logvar,
                                    const at::Tensor& workspace, at::TensorList posterior_mlp, at::TensorList heads_w,
                                    int64_t activation) {
  constexpr const char* op = "lightdvae::srnn_posterior_bptt_backward";
  const at::NoGradGuard no_grad;  // not differentiable itself (no double backward)
  const at::Tensor eps = eps_in.has_value() ? eps_in->contiguous() : at::Tensor();
  const int64_t z_dim = check_srnn_posterior(op, g_in, eps, posterior_mlp, heads_w, activation);
  const at::Tensor g = g_in.contiguous();
  const int64_t frames = g.size(0), batch = g.size(1), g_dim = g.size(2);
  const auto widths = bptt::widths(posterior_mlp);
  TORCH_CHECK(workspace.dim() == 1 && workspace.numel() == frames * batch * bptt::sum(widths), op,
              ": workspace is not the one srnn_posterior_bptt returned for these shapes");
  for (const auto* t : {&grad_z, &grad_mean_in, &grad_logvar_in, &logvar, &z}) {
    TORCH_CHECK(t->sizes() == at::IntArrayRef({frames, batch, z_dim}), op,
                ": every gradient and output must be (frames, batch, z_dim) = (", frames, ", ", batch, ", ", z_dim,
                "), got ", t->sizes());
  }
  const at::Tensor grad_mean = grad_mean_in.contiguous(), grad_logvar = grad_logvar_in.contiguous();
  const Regions posterior(workspace.contiguous(), 0, frames, batch, widths);
  const Regions dact(bptt::activation_derivative(posterior.all(), activation), 0, frames, batch, widths);
  const Regions dpre(at::empty_like(posterior.all()), 0, frames, batch, widths);
  const at::Tensor scale = eps.defined() ? at::exp(logvar * 0.5) : at::Tensor();
  const at::Tensor half_noise = eps.defined() ? eps * scale * 0.5 : at::Tensor();
  const at::Tensor heads_cat = at::cat({heads_w[0], heads_w[2]}, 0);
  const bool mlp = !posterior_mlp.empty();
  const at::Tensor w_joint = mlp ? posterior_mlp[0] : heads_cat;  // (out, g_dim + z_dim)
  const at::Tensor w_z = w_joint.narrow(1, g_dim, z_dim);

  at::Tensor dz = grad_z.clone(at::MemoryFormat::Contiguous);  // + the recurrent terms, added step by step
  at::Tensor dstats = heads_grad_buffer(grad_logvar, eps.defined());
  const rows::Path rows_path = rows::path(z, {posterior_mlp});
  if (rows_path != rows::Path::kNo) {
    const c10::DeviceGuard guard(z.device());
    AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "srnn_posterior_bptt_backward", [&] {
      srnn_backward_rows<scalar_t>(rows_path, dact, dpre, posterior_mlp, heads_cat, w_joint, dstats, dz, grad_mean,
                                   grad_logvar, half_noise);
    });
  } else if (small::eligible(z, batch)) {
    AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "srnn_posterior_bptt_backward", [&] {
      srnn_backward_small<scalar_t>(dact, dpre, posterior_mlp, heads_cat, w_joint, dstats, dz, grad_mean, grad_logvar,
                                    half_noise);
    });
  } else {
    for (int64_t t = frames - 1; t >= 0; --t) {
      if (!mlp) {
        const at::Tensor dz_prev = heads_backward(dstats, dz, grad_mean, grad_logvar, half_noise, w_z, t);
        if (t > 0) {
          dz[t - 1].add_(dz_prev);
        }
        continue;
      }
      const at::Tensor dh = heads_backward(dstats, dz, grad_mean, grad_logvar, half_noise, heads_cat, t);
      const at::Tensor d0 = bptt::stack_backward(posterior_mlp, dact, dpre, t, dh);
      if (t > 0) {
        dz[t - 1].addmm_(d0, w_z);
      }
    }
  }
  const at::Tensor joint_in = at::cat({g, previous(z)}, 2);  // [g_t ; z_{t-1}]
  const at::Tensor d_joint = mlp ? dpre[0] : dstats;
  std::vector<at::Tensor> grads_heads = heads_grads(dstats, mlp ? posterior[posterior.size() - 1] : joint_in);
  return {at::mm(bptt::rows(d_joint), w_joint.narrow(1, 0, g_dim)).view({frames, batch, g_dim}),
          eps.defined() ? dz * scale : at::empty({0}, z.options()), bptt::stack_grads(dpre, posterior, joint_in),
          std::move(grads_heads)};
}

std::atomic<bool> row_loops_on_cpu{false};

bool set_row_loops_on_cpu(const std::optional<bool>& enabled) {
  if (enabled.has_value()) row_loops_on_cpu.store(*enabled);
  return row_loops_on_cpu.load();
}

}  // namespace

bool rows::on_cpu() { return row_loops_on_cpu.load(); }

TORCH_LIBRARY_IMPL(lightdvae, CPU, m) {
  m.impl("dkf_posterior_bptt", &dkf_posterior_bptt);
  m.impl("dkf_posterior_bptt_backward", &dkf_posterior_bptt_backward);
  m.impl("srnn_posterior_bptt", &srnn_posterior_bptt);
  m.impl("srnn_posterior_bptt_backward", &srnn_posterior_bptt_backward);
}

#if defined(LIGHTDVAE_WITH_CUDA)
// The same entry points on CUDA: the ATen orchestration around one row-kernel launch per loop.
TORCH_LIBRARY_IMPL(lightdvae, CUDA, m) {
  m.impl("dkf_posterior_bptt", &dkf_posterior_bptt);
  m.impl("dkf_posterior_bptt_backward", &dkf_posterior_bptt_backward);
  m.impl("srnn_posterior_bptt", &srnn_posterior_bptt);
  m.impl("srnn_posterior_bptt_backward", &srnn_posterior_bptt_backward);
}
#endif

// No tensor arguments: the dispatcher runs the CompositeImplicitAutograd kernel.
TORCH_LIBRARY_IMPL(lightdvae, CompositeImplicitAutograd, m) {
  m.impl("_row_loops_on_cpu", &set_row_loops_on_cpu);
}

}  // namespace lightdvae
