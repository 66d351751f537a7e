// RVAE's posterior loop with an explicit backward through time (issue 17; see bptt.h and posterior_bptt.cpp).
//
// Each step: e = z_embed(z_{t-1}); the z LSTM (ATen's LSTMCell arithmetic, layer by layer); the posterior MLP on
// [gx_t ; gz_t] (none by default), the heads; the draw.  The gx part (and bias) of the first layer reading
// [gx_t ; gz_t] (posterior layer 0, or the heads) is one GEMM over all steps before the loop.  The backward runs the LSTM's recurrence (dh, dc per layer) and the z feedback step by step; the activation
// derivatives of the gates are computed for all steps before the loop, and after it every weight gradient is one
// GEMM over all frames * batch rows (the gx gradient too).  The loop takes the ATen cell (exact_lstm = false; with
// exact_lstm the models run the composite rvae_posterior).  At small batch the step-by-step parts run on raw pointers
// (small_batch.h); on CUDA each loop is one kernel launch (row_loops.h).
#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

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
using bptt::rows;
using Grads6 = std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>,
                          std::vector<at::Tensor>, std::vector<at::Tensor>>;

// Per LSTM layer four regions: the gates after their activations [i, f, g, o] (4H), c, tanh(c), h (H each).
std::vector<int64_t> lstm_widths(at::TensorList w) {
  const int64_t hidden = w[1].size(1);
  std::vector<int64_t> out;
  for (size_t l = 0; l < w.size() / 4; ++l) {
    out.insert(out.end(), {4 * hidden, hidden, hidden, hidden});
  }
  return out;
}

// The workspace of the RVAE loop: the z_embed outputs, the LSTM's per-layer regions, the posterior outputs.
struct RvaeWorkspace {
  Regions z_embed, lstm, posterior;
  RvaeWorkspace(const at::Tensor& flat, int64_t frames, int64_t batch, at::TensorList z_embed_w, at::TensorList rnn_z,
                at::TensorList posterior_w)
      : z_embed(flat, 0, frames, batch, bptt::widths(z_embed_w)),
        lstm(flat, z_embed.end(), frames, batch, lstm_widths(rnn_z)),
        posterior(flat, lstm.end(), frames, batch, bptt::widths(posterior_w)) {}
  static int64_t size(int64_t frames, int64_t batch, at::TensorList z_embed_w, at::TensorList rnn_z,
                      at::TensorList posterior_w) {
    return frames * batch *
           (bptt::sum(bptt::widths(z_embed_w)) + bptt::sum(lstm_widths(rnn_z)) + bptt::sum(bptt::widths(posterior_w)));
  }
  const at::Tensor& gates(size_t l) const { return lstm[4 * l]; }
  const at::Tensor& c(size_t l) const { return lstm[4 * l + 1]; }
  const at::Tensor& tanh_c(size_t l) const { return lstm[4 * l + 2]; }
  const at::Tensor& h(size_t l) const { return lstm[4 * l + 3]; }
};

struct LstmLayer {
  at::Tensor w_ih_t, w_hh_t, bias;  // (in, 4H), (H, 4H), b_ih + b_hh
};

// One LSTM cell step of layer l at frame t from input x (ATen's LSTMCell), written into the workspace; returns h.
at::Tensor lstm_step(const RvaeWorkspace& ws, size_t l, int64_t t, const at::Tensor& x, const LstmLayer& w,
                     const at::Tensor& zero) {
  const int64_t hidden = zero.size(1);
  at::Tensor gates = ws.gates(l)[t];
  at::addmm_out(gates, w.bias, x, w.w_ih_t);
  gates.addmm_(t > 0 ? ws.h(l)[t - 1] : zero, w.w_hh_t);
  gates.narrow(1, 0, 2 * hidden).sigmoid_();
  gates.narrow(1, 2 * hidden, hidden).tanh_();
  gates.narrow(1, 3 * hidden, hidden).sigmoid_();
  at::Tensor c = ws.c(l)[t];
  at::mul_out(c, gates.narrow(1, hidden, hidden), t > 0 ? ws.c(l)[t - 1] : zero);
  c.addcmul_(gates.narrow(1, 0, hidden), gates.narrow(1, 2 * hidden, hidden));
  at::Tensor tanh_c = ws.tanh_c(l)[t];
  at::tanh_out(tanh_c, c);
  at::Tensor h = ws.h(l)[t];
  at::mul_out(h, gates.narrow(1, 3 * hidden, hidden), tanh_c);
  return h;
}

// ---- the raw-pointer loops (small batch; small_batch.h): the same steps as the ATen loops

// lstm_step on raw pointers: one LSTM cell step of layer l at frame t from x (batch, in); returns h.
template <typename T>
const T* lstm_step_small(const RvaeWorkspace& ws, size_t l, int64_t t, const T* x, const small::Layer<T>& ih,
                         const T* w_hh_t, const T* zero, int64_t batch) {
  const int64_t hidden = ih.out / 4;
  T* gates = small::at_step<T>(ws.lstm, 4 * l, t);
  ih(gates, x, batch);
  small::mm_acc(gates, t > 0 ? small::at_step<T>(ws.lstm, 4 * l + 3, t - 1) : zero, w_hh_t, batch, hidden,
                4 * hidden, 4 * hidden);
  const T* c_prev = t > 0 ? small::at_step<T>(ws.lstm, 4 * l + 1, t - 1) : zero;
  T* c = small::at_step<T>(ws.lstm, 4 * l + 1, t);
  T* tanh_c = small::at_step<T>(ws.lstm, 4 * l + 2, t);
  T* h = small::at_step<T>(ws.lstm, 4 * l + 3, t);
  small::lstm_cell(gates, c_prev, c, tanh_c, h, batch, hidden);
  return h;
}

// The loop of rvae_posterior_bptt on raw pointers.  projected: (frames, batch, out) the gx part and bias of the first
// layer reading [gx_t ; gz_t]; w0_gz_t: (hidden, out) its gz part.
template <typename T>
void rvae_forward_small(const RvaeWorkspace& ws, const at::Tensor& projected, const at::Tensor& w0_gz_t,
                        at::TensorList z_embed, at::TensorList rnn_z, at::TensorList posterior_mlp,
                        at::TensorList heads_w, int64_t activation, const at::Tensor& eps, const at::Tensor& z,
                        const at::Tensor& stats) {
  const int64_t frames = z.size(0), batch = z.size(1), z_dim = z.size(2), out = projected.size(2);
  const int64_t hidden = rnn_z[1].size(1);
  const auto z_embed_l = small::layers<T>(z_embed), posterior_l = small::layers<T>(posterior_mlp);
  const small::Layer<T> heads(at::cat({heads_w[0], heads_w[2]}, 0), at::cat({heads_w[1], heads_w[3]}, 0));
  std::vector<small::Layer<T>> ih;
  std::vector<at::Tensor> w_hh_t;
  for (size_t i = 0; i < rnn_z.size(); i += 4) {
    ih.emplace_back(rnn_z[i], rnn_z[i + 2] + rnn_z[i + 3]);
    w_hh_t.push_back(small::contiguous_t(rnn_z[i + 1]));
  }
  const at::Tensor w_gz = w0_gz_t.contiguous();
  const std::vector<T> z0(batch * z_dim, T(0)), zero(batch * hidden, T(0));
  T* zp = z.data_ptr<T>();
  T* sp = stats.data_ptr<T>();
  const T* pp = projected.data_ptr<T>();
  const T* ep = eps.defined() ? eps.data_ptr<T>() : nullptr;
  for (int64_t t = 0; t < frames; ++t) {
    const T* x = small::stack_forward(z_embed_l, ws.z_embed, t, t > 0 ? zp + (t - 1) * batch * z_dim : z0.data(),
                                      batch, activation);
    for (size_t l = 0; l < ih.size(); ++l) {
      x = lstm_step_small(ws, l, t, x, ih[l], w_hh_t[l].data_ptr<T>(), zero.data(), batch);
    }
    T* stats_t = sp + t * batch * 2 * z_dim;
    T* y0 = posterior_l.empty() ? stats_t : small::at_step<T>(ws.posterior, 0, t);
    std::copy(pp + t * batch * out, pp + (t + 1) * batch * out, y0);
    small::mm_acc(y0, x, w_gz.data_ptr<T>(), batch, hidden, out, out);
    if (!posterior_l.empty()) {
      small::activate(y0, batch * out, activation);
      heads(stats_t, small::stack_forward(posterior_l, ws.posterior, t, y0, batch, activation, 1), batch);
    }
    small::draw(zp + t * batch * z_dim, stats_t, ep ? ep + t * batch * z_dim : nullptr, batch, z_dim);
  }
}

// Whether the row loops take these stacks and LSTM layers (row_loops.h).
rows::Path rvae_rows_path(const at::Tensor& like, at::TensorList z_embed, at::TensorList rnn_z,
                          at::TensorList posterior_mlp) {
  if (rnn_z.size() / 4 > static_cast<size_t>(rows::kMaxLstmLayers)) return rows::Path::kNo;
  return rows::path(like, {z_embed, posterior_mlp});
}

// The loop of rvae_posterior_bptt as a row loop: one CUDA launch, or its code serially on the CPU.
template <typename T>
void rvae_forward_rows(rows::Path path, const RvaeWorkspace& ws, const at::Tensor& projected, const at::Tensor& w0_gz_t,
                       at::TensorList z_embed, at::TensorList rnn_z, at::TensorList posterior_mlp,
                       at::TensorList heads_w, int64_t activation, const at::Tensor& eps, const at::Tensor& z,
                       const at::Tensor& stats) {
  rows::Hold<T> hold;
  rows::RvaeForward<T> a;
  hold.outputs(a, z, stats, eps, heads_w, activation, std::max(z.size(2), rnn_z[1].size(1)));
  a.hidden = static_cast<int>(rnn_z[1].size(1));
  a.layers = static_cast<int>(rnn_z.size() / 4);
  a.out = static_cast<int>(projected.size(2));
  a.projected = hold(projected);
  a.w_gz = hold(w0_gz_t);
  a.z_embed = hold.forward(z_embed);
  a.posterior = hold.forward(posterior_mlp);
  for (int l = 0; l < a.layers; ++l) {
    const rows::Stack<T> ih = hold.forward({rnn_z[4 * l], rnn_z[4 * l + 2] + rnn_z[4 * l + 3]});
    a.ih[l] = ih.l[0];
    a.w_hh[l] = hold(rnn_z[4 * l + 1].t());
    a.gates[l] = hold.out(ws.gates(l));
    a.c[l] = hold.out(ws.c(l));
    a.tanh_c[l] = hold.out(ws.tanh_c(l));
    a.h[l] = hold.out(ws.h(l));
  }
  a.z_embed_out = rows::regions<T>(ws.z_embed);
  a.posterior_out = rows::regions<T>(ws.posterior);
  const int widest = rows::widest({z_embed, posterior_mlp}, std::max({4 * a.hidden, a.out, 2 * a.z_dim}));
  rows::run(path, a, rows::team_size(widest));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> rvae_posterior_bptt(
    const at::Tensor& gx_in, const std::optional<at::Tensor>& eps_in, at::TensorList z_embed, at::TensorList rnn_z,
    at::TensorList posterior_mlp, at::TensorList heads_w, int64_t activation) {
  constexpr const char* op = "lightdvae::rvae_posterior_bptt";
  const at::NoGradGuard no_grad;  // its autograd formula is the backward op
  const at::Tensor eps = eps_in.has_value() ? eps_in->contiguous() : at::Tensor();
  const int64_t z_dim = check_rvae_posterior(op, gx_in, eps, z_embed, rnn_z, posterior_mlp, heads_w, activation);
  const at::Tensor gx = gx_in.contiguous();
  const int64_t frames = gx.size(0), batch = gx.size(1), gx_dim = gx.size(2), hidden = rnn_z[1].size(1);
  at::Tensor flat = at::empty({RvaeWorkspace::size(frames, batch, z_embed, rnn_z, posterior_mlp)}, gx.options());
  const RvaeWorkspace ws(flat, frames, batch, z_embed, rnn_z, posterior_mlp);
  const auto z_embed_l = sampling::linears(z_embed), posterior_l = sampling::linears(posterior_mlp);
  const sampling::Linear heads = bptt::joint_heads(heads_w);
  std::vector<LstmLayer> lstm;
  for (size_t i = 0; i < rnn_z.size(); i += 4) {
    lstm.push_back({rnn_z[i].t(), rnn_z[i + 1].t(), rnn_z[i + 2] + rnn_z[i + 3]});
  }
  // The first layer reading [gx_t ; gz_t]: its gx part and bias for all steps at once (the width is explicit:
  // frames * batch may be 0).
  const bool mlp = !posterior_mlp.empty();
  const at::Tensor w0 = mlp ? posterior_mlp[0] : heads.wt.t();
  const at::Tensor projected = at::addmm(mlp ? posterior_mlp[1] : heads.b, rows(gx), w0.narrow(1, 0, gx_dim).t())
                                   .view({frames, batch, w0.size(0)});
  const at::Tensor w0_gz_t = w0.narrow(1, gx_dim, hidden).t();

  at::Tensor z = at::empty({frames, batch, z_dim}, gx.options());
  at::Tensor stats = at::empty({frames, batch, 2 * z_dim}, gx.options());
  at::Tensor scale = at::empty({batch, z_dim}, gx.options());
  const rows::Path rows_path = rvae_rows_path(gx, z_embed, rnn_z, posterior_mlp);
  if (rows_path != rows::Path::kNo) {
    const c10::DeviceGuard guard(gx.device());
    AT_DISPATCH_FLOATING_TYPES(gx.scalar_type(), "rvae_posterior_bptt", [&] {
      rvae_forward_rows<scalar_t>(rows_path, ws, projected, w0_gz_t, z_embed, rnn_z, posterior_mlp, heads_w,
                                  activation, eps, z, stats);
    });
    return {z, stats.narrow(2, 0, z_dim).contiguous(), stats.narrow(2, z_dim, z_dim).contiguous(), flat};
  }
  if (small::eligible(gx, batch)) {
    AT_DISPATCH_FLOATING_TYPES(gx.scalar_type(), "rvae_posterior_bptt", [&] {
      rvae_forward_small<scalar_t>(ws, projected, w0_gz_t, z_embed, rnn_z, posterior_mlp, heads_w, activation, eps, z,
                                   stats);
    });
    return {z, stats.narrow(2, 0, z_dim).contiguous(), stats.narrow(2, z_dim, z_dim).contiguous(), flat};
  }
  const at::Tensor z0 = at::zeros({batch, z_dim}, gx.options()), zero = at::zeros({batch, hidden}, gx.options());
  for (int64_t t = 0; t < frames; ++t) {
    at::Tensor x = bptt::stack_forward(z_embed_l, ws.z_embed, t, t > 0 ? z[t - 1] : z0, activation);
    for (size_t l = 0; l < lstm.size(); ++l) {
      x = lstm_step(ws, l, t, x, lstm[l], zero);
    }
    at::Tensor stats_t = stats[t];
    if (mlp) {
      at::Tensor y0 = ws.posterior[0][t];
      at::addmm_out(y0, projected[t], x, w0_gz_t);
      bptt::activate_(y0, activation);
      const at::Tensor h = bptt::stack_forward(posterior_l, ws.posterior, t, y0, activation, 1);
      at::addmm_out(stats_t, heads.b, h, heads.wt);
    } else {
      at::addmm_out(stats_t, projected[t], x, w0_gz_t);
    }
    bptt::draw_into(z[t], stats_t, eps, t, scale);
  }
  return {z, stats.narrow(2, 0, z_dim).contiguous(), stats.narrow(2, z_dim, z_dim).contiguous(), flat};
}

// What the backward of one LSTM layer needs at every step, computed for all steps before the loop: the factors m
// that turn dc (for i, f, g) and dh (for o) into the gates' pre-activation gradients, k = o * tanh'(c) (dh -> dc),
// and the buffer of those gradients.
struct LstmBackward {
  at::Tensor m, k, dgates;
  LstmBackward(const RvaeWorkspace& ws, size_t l) {
    const at::Tensor& gates = ws.gates(l);
    const int64_t hidden = gates.size(2) / 4;
    auto chunk = [hidden](const at::Tensor& t, int64_t j) { return t.narrow(2, j * hidden, hidden); };
    // sigmoid_backward(a, s) = a s (1 - s), tanh_backward(a, y) = a (1 - y^2): one pass each
    m = at::empty_like(gates);
    at::Tensor m_i = chunk(m, 0), m_f = chunk(m, 1), m_g = chunk(m, 2), m_o = chunk(m, 3);
    at::sigmoid_backward_out(m_i, chunk(gates, 2), chunk(gates, 0));
    at::sigmoid_backward_out(m_f, bptt::previous(ws.c(l)), chunk(gates, 1));
    at::tanh_backward_out(m_g, chunk(gates, 0), chunk(gates, 2));
    at::sigmoid_backward_out(m_o, ws.tanh_c(l), chunk(gates, 3));
    k = at::tanh_backward(chunk(gates, 3), ws.tanh_c(l));
    dgates = at::empty_like(gates);
  }

  // Step t: dh and dc hold the gradients of h_t and c_t from above and from step t + 1; writes the gates'
  // pre-activation gradients into dgates[t] and leaves in dh, dc the gradients of h_{t-1}, c_{t-1} through this
  // layer's recurrence (t > 0).  Returns dgates[t].
  at::Tensor step(const RvaeWorkspace& ws, size_t l, int64_t t, at::Tensor& dh, at::Tensor& dc,
                  const at::Tensor& w_hh) const {
    const int64_t batch = dh.size(0), hidden = dh.size(1);
    dc.addcmul_(dh, k[t]);
    const at::Tensor d = dgates[t];
    at::Tensor d_ifg = d.view({batch, 4, hidden}).narrow(1, 0, 3);
    at::mul_out(d_ifg, m[t].view({batch, 4, hidden}).narrow(1, 0, 3), dc.unsqueeze(1));
    at::Tensor d_o = d.narrow(1, 3 * hidden, hidden);
    at::mul_out(d_o, dh, m[t].narrow(1, 3 * hidden, hidden));
    if (t > 0) {
      dc.mul_(ws.gates(l)[t].narrow(1, hidden, hidden));
      at::mm_out(dh, d, w_hh);
    }
    return d;
  }
};

// Gradients [w_ih, w_hh, b_ih, b_hh] per layer over all steps; x0 is layer 0's input sequence.
std::vector<at::Tensor> lstm_grads(const RvaeWorkspace& ws, const std::vector<LstmBackward>& back,
                                   const at::Tensor& x0) {
  std::vector<at::Tensor> grads;
  for (size_t l = 0; l < back.size(); ++l) {
    const at::Tensor d = rows(back[l].dgates);
    grads.push_back(at::mm(d.t(), rows(l == 0 ? x0 : ws.h(l - 1))));
    grads.push_back(at::mm(d.t(), rows(bptt::previous(ws.h(l)))));
    const at::Tensor db = d.sum(0);
    grads.push_back(db);
    grads.push_back(db.clone());
  }
  return grads;
}

// The step-by-step part of rvae_posterior_bptt_backward on raw pointers (small batch): the ATen loop's steps.
struct RvaeBackwardState {
  const RvaeWorkspace& ws;
  const std::vector<LstmBackward>& back;
  const Regions &dact_embed, &dact_posterior, &dpre_embed, &dpre_posterior;
  at::Tensor dstats, dz, grad_mean, grad_logvar, half_noise, heads_cat, w0;
};

template <typename T>
void rvae_backward_small(const RvaeBackwardState& s, at::TensorList z_embed, at::TensorList rnn_z,
                         at::TensorList posterior_mlp) {
  const int64_t frames = s.dz.size(0), batch = s.dz.size(1), z_dim = s.dz.size(2);
  const int64_t hidden = rnn_z[1].size(1), layers = static_cast<int64_t>(s.back.size());
  const at::Tensor w0 = s.w0.contiguous();
  const int64_t joint_in = w0.size(1), gx_dim = joint_in - hidden, head_in = s.heads_cat.size(1);
  const auto w_embed = small::weights(z_embed), w_posterior = small::weights(posterior_mlp);
  std::vector<at::Tensor> w_ih, w_hh, m, k;
  for (int64_t l = 0; l < layers; ++l) {
    w_ih.push_back(rnn_z[4 * l].contiguous());
    w_hh.push_back(rnn_z[4 * l + 1].contiguous());
    m.push_back(s.back[l].m.contiguous());
    k.push_back(s.back[l].k.contiguous());
  }
  int64_t widest = std::max({head_in, z_dim, w_ih[0].size(1)});
  for (const auto& w : w_embed) widest = std::max(widest, w.size(1));
  for (const auto& w : w_posterior) widest = std::max(widest, w.size(1));
  std::vector<T> dhid(batch * head_in), scratch(batch * widest), d_in(batch * w_ih[0].size(1));
  std::vector<std::vector<T>> dh(layers, std::vector<T>(batch * hidden, T(0))), dc = dh;
  T* ds = s.dstats.data_ptr<T>();
  T* dz = s.dz.data_ptr<T>();
  const T* grad_mean = s.grad_mean.data_ptr<T>();
  const T* grad_logvar = s.grad_logvar.data_ptr<T>();
  const T* half_noise = s.half_noise.defined() ? s.half_noise.data_ptr<T>() : nullptr;
  const T* w0_gz = w0.data_ptr<T>() + gx_dim;  // the gz columns of the first layer on [gx_t ; gz_t], stride joint_in
  for (int64_t t = frames - 1; t >= 0; --t) {
    const int64_t at_z = t * batch * z_dim;
    const T* noise_t = half_noise ? half_noise + at_z : nullptr;
    T* dh_top = dh.back().data();
    if (!posterior_mlp.empty()) {
      std::fill(dhid.begin(), dhid.end(), T(0));
      small::heads_backward(ds + 2 * at_z, dz + at_z, grad_mean + at_z, grad_logvar + at_z, noise_t,
                            s.heads_cat.data_ptr<T>(), head_in, head_in, dhid.data(), batch, z_dim);
      const T* d0 = small::stack_backward(w_posterior, s.dact_posterior, s.dpre_posterior, t, dhid.data(), batch,
                                          scratch);
      small::mm_acc(dh_top, d0, w0_gz, batch, w0.size(0), hidden, joint_in);
    } else {
      small::heads_backward(ds + 2 * at_z, dz + at_z, grad_mean + at_z, grad_logvar + at_z, noise_t, w0_gz, hidden,
                            joint_in, dh_top, batch, z_dim);
    }
    for (int64_t l = layers; l-- > 0;) {
      // LstmBackward::step: the gates' pre-activation gradients, then dh, dc through the recurrence
      const int64_t n = batch * hidden;
      T* dh_l = dh[l].data();
      T* dc_l = dc[l].data();
      const T* k_t = k[l].data_ptr<T>() + t * n;
      const T* m_t = m[l].data_ptr<T>() + t * 4 * n;
      T* d = s.back[l].dgates.template data_ptr<T>() + t * 4 * n;
      for (int64_t j = 0; j < n; ++j) dc_l[j] += dh_l[j] * k_t[j];
      for (int64_t b = 0; b < batch; ++b) {
        for (int64_t q = 0; q < 3; ++q) {
          for (int64_t j = 0; j < hidden; ++j) {
            const int64_t at = b * 4 * hidden + q * hidden + j;
            d[at] = m_t[at] * dc_l[b * hidden + j];
          }
        }
        for (int64_t j = 0; j < hidden; ++j) {
          const int64_t at = b * 4 * hidden + 3 * hidden + j;
          d[at] = dh_l[b * hidden + j] * m_t[at];
        }
      }
      if (t > 0) {
        const T* f = small::at_step<T>(s.ws.lstm, 4 * l, t);
        for (int64_t b = 0; b < batch; ++b) {
          for (int64_t j = 0; j < hidden; ++j) dc_l[b * hidden + j] *= f[b * 4 * hidden + hidden + j];
        }
        std::fill(dh_l, dh_l + n, T(0));
        small::mm_acc(dh_l, d, w_hh[l].data_ptr<T>(), batch, 4 * hidden, hidden, hidden);
      }
      if (l > 0) {
        small::mm_acc(dh[l - 1].data(), d, w_ih[l].data_ptr<T>(), batch, 4 * hidden, hidden, hidden);
        continue;
      }
      const int64_t in = w_ih[0].size(1);
      std::fill(d_in.begin(), d_in.end(), T(0));
      small::mm_acc(d_in.data(), d, w_ih[0].data_ptr<T>(), batch, 4 * hidden, in, in);
      const T* d0 = small::stack_backward(w_embed, s.dact_embed, s.dpre_embed, t, d_in.data(), batch, scratch);
      if (t > 0) {
        T* dz_prev = dz + at_z - batch * z_dim;
        if (z_embed.empty()) {
          for (int64_t j = 0; j < batch * z_dim; ++j) dz_prev[j] += d0[j];
        } else {
          small::mm_acc(dz_prev, d0, w_embed[0].data_ptr<T>(), batch, w_embed[0].size(0), z_dim, z_dim);
        }
      }
    }
  }
}

// The step-by-step part of rvae_posterior_bptt_backward as a row loop.
template <typename T>
void rvae_backward_rows(rows::Path path, const RvaeBackwardState& s, at::TensorList z_embed, at::TensorList rnn_z,
                        at::TensorList posterior_mlp) {
  rows::Hold<T> hold;
  rows::RvaeBackward<T> a;
  hold.gradients(a, s.dstats, s.dz, s.grad_mean, s.grad_logvar, s.half_noise, s.heads_cat);
  a.hidden = static_cast<int>(rnn_z[1].size(1));
  a.layers = static_cast<int>(rnn_z.size() / 4);
  a.gx_dim = static_cast<int>(s.w0.size(1)) - a.hidden;
  a.head_in = static_cast<int>(s.heads_cat.size(1));
  a.in0 = static_cast<int>(rnn_z[0].size(1));
  a.w0 = hold(s.w0);
  a.w0_out = static_cast<int>(s.w0.size(0));
  a.z_embed = hold.backward(z_embed);
  a.posterior = hold.backward(posterior_mlp);
  for (int l = 0; l < a.layers; ++l) {
    a.w_ih[l] = hold(rnn_z[4 * l]);
    a.w_hh[l] = hold(rnn_z[4 * l + 1]);
    a.m[l] = hold(s.back[l].m);
    a.k[l] = hold(s.back[l].k);
    a.gates[l] = hold(s.ws.gates(l));
    a.dgates[l] = hold.out(s.back[l].dgates);
  }
  a.dact_embed = rows::regions<T>(s.dact_embed);
  a.dpre_embed = rows::regions<T>(s.dpre_embed);
  a.dact_posterior = rows::regions<T>(s.dact_posterior);
  a.dpre_posterior = rows::regions<T>(s.dpre_posterior);
  const int widest = rows::widest({z_embed, posterior_mlp}, std::max({a.head_in, a.in0, 4 * a.hidden, 2 * a.z_dim}));
  hold.scratch(a, 2 * a.layers * a.hidden + a.head_in + a.in0 + widest, s.dz.options());
  rows::run(path, a, rows::team_size(widest));
}

Grads6 rvae_posterior_bptt_backward(const at::Tensor& grad_z, const at::Tensor& grad_mean_in,
                                    const at::Tensor& grad_logvar_in, const std::optional<at::Tensor>& eps_in,
                                    const at::Tensor& gx_in, const at::Tensor& z, const at::Tensor& logvar,
                                    const at::Tensor& workspace, at::TensorList z_embed, at::TensorList rnn_z,
                                    at::TensorList posterior_mlp, at::TensorList heads_w, int64_t activation) {
  constexpr const char* op = "lightdvae::rvae_posterior_bptt_backward";
  const at::NoGradGuard no_grad;  // not differentiable itself (no double backward)
  const at::Tensor eps = eps_in.has_value() ? eps_in->contiguous() : at::Tensor();
  check_rvae_posterior(op, gx_in, eps, z_embed, rnn_z, posterior_mlp, heads_w, activation);
  const at::Tensor gx = gx_in.contiguous();
  const int64_t frames = gx.size(0), batch = gx.size(1), gx_dim = gx.size(2), hidden = rnn_z[1].size(1);
  TORCH_CHECK(workspace.dim() == 1 &&
                  workspace.numel() == RvaeWorkspace::size(frames, batch, z_embed, rnn_z, posterior_mlp),
              op, ": workspace is not the one rvae_posterior_bptt returned for these shapes");
  for (const auto* t : {&grad_z, &grad_mean_in, &grad_logvar_in, &logvar}) {
    TORCH_CHECK(t->sizes() == z.sizes(), op, ": every gradient and output must be (frames, batch, z_dim) = ",
                z.sizes(), ", got ", t->sizes());
  }
  const at::Tensor grad_mean = grad_mean_in.contiguous(), grad_logvar = grad_logvar_in.contiguous();
  const RvaeWorkspace ws(workspace.contiguous(), frames, batch, z_embed, rnn_z, posterior_mlp);

  const Regions dact_embed(bptt::activation_derivative(ws.z_embed.all(), activation), 0, frames, batch,
                           bptt::widths(z_embed));
  const Regions dact_posterior(bptt::activation_derivative(ws.posterior.all(), activation), 0, frames, batch,
                               bptt::widths(posterior_mlp));
  const at::Tensor dpre_flat = at::empty({ws.z_embed.all().numel() + ws.posterior.all().numel()}, z.options());
  const Regions dpre_embed(dpre_flat, 0, frames, batch, bptt::widths(z_embed));
  const Regions dpre_posterior(dpre_flat, dpre_embed.end(), frames, batch, bptt::widths(posterior_mlp));
  std::vector<LstmBackward> back;
  std::vector<at::Tensor> dh, dc;
  for (size_t l = 0; l < rnn_z.size() / 4; ++l) {
    back.emplace_back(ws, l);
    dh.push_back(at::zeros({batch, hidden}, z.options()));
    dc.push_back(at::zeros({batch, hidden}, z.options()));
  }
  const at::Tensor scale = eps.defined() ? at::exp(logvar * 0.5) : at::Tensor();
  const at::Tensor half_noise = eps.defined() ? eps * scale * 0.5 : at::Tensor();
  const at::Tensor heads_cat = at::cat({heads_w[0], heads_w[2]}, 0);
  // the first layer reading [gx_t ; gz_t] (posterior layer 0, or the heads) and the gradient of its output
  const bool mlp = !posterior_mlp.empty();
  const at::Tensor w0 = mlp ? posterior_mlp[0] : heads_cat;
  const at::Tensor w0_gz = w0.narrow(1, gx_dim, hidden);

  at::Tensor dz = grad_z.clone(at::MemoryFormat::Contiguous);  // + the recurrent terms, added step by step
  at::Tensor dstats = bptt::heads_grad_buffer(grad_logvar, eps.defined());
  const RvaeBackwardState state{ws,     back,        dact_embed, dact_posterior, dpre_embed, dpre_posterior, dstats,
                                dz,     grad_mean,   grad_logvar, half_noise,    heads_cat,  w0};
  const rows::Path rows_path = rvae_rows_path(z, z_embed, rnn_z, posterior_mlp);
  if (rows_path != rows::Path::kNo) {
    const c10::DeviceGuard guard(z.device());
    AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "rvae_posterior_bptt_backward",
                               [&] { rvae_backward_rows<scalar_t>(rows_path, state, z_embed, rnn_z, posterior_mlp); });
  } else if (small::eligible(z, batch)) {
    AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "rvae_posterior_bptt_backward",
                               [&] { rvae_backward_small<scalar_t>(state, z_embed, rnn_z, posterior_mlp); });
  } else {
    for (int64_t t = frames - 1; t >= 0; --t) {
      if (mlp) {
        const at::Tensor dhid = bptt::heads_backward(dstats, dz, grad_mean, grad_logvar, half_noise, heads_cat, t);
        dh.back().addmm_(bptt::stack_backward(posterior_mlp, dact_posterior, dpre_posterior, t, dhid), w0_gz);
      } else {
        dh.back().add_(bptt::heads_backward(dstats, dz, grad_mean, grad_logvar, half_noise, w0_gz, t));
      }
      for (size_t l = back.size(); l-- > 0;) {
        const at::Tensor d = back[l].step(ws, l, t, dh[l], dc[l], rnn_z[4 * l + 1]);
        if (l > 0) {
          dh[l - 1].addmm_(d, rnn_z[4 * l]);
          continue;
        }
        const at::Tensor d0 = bptt::stack_backward(z_embed, dact_embed, dpre_embed, t, at::mm(d, rnn_z[0]));
        if (t > 0 && z_embed.empty()) {
          dz[t - 1].add_(d0);
        } else if (t > 0) {
          dz[t - 1].addmm_(d0, z_embed[0]);
        }
      }
    }
  }
  const at::Tensor z_prev = bptt::previous(z);
  const at::Tensor embedded = z_embed.empty() ? z_prev : ws.z_embed[ws.z_embed.size() - 1];
  const at::Tensor joint = at::cat({gx, ws.h(back.size() - 1)}, 2);  // [gx_t ; gz_t]
  std::vector<at::Tensor> grads_heads =
      bptt::heads_grads(dstats, mlp ? ws.posterior[ws.posterior.size() - 1] : joint);
  const at::Tensor d_joint = mlp ? dpre_posterior[0] : dstats;
  return {at::mm(rows(d_joint), w0.narrow(1, 0, gx_dim)).view({frames, batch, gx_dim}),
          eps.defined() ? dz * scale : at::empty({0}, z.options()),
          bptt::stack_grads(dpre_embed, ws.z_embed, z_prev),
          lstm_grads(ws, back, embedded),
          bptt::stack_grads(dpre_posterior, ws.posterior, joint),
          std::move(grads_heads)};
}

}  // namespace

TORCH_LIBRARY_IMPL(lightdvae, CPU, m) {
  m.impl("rvae_posterior_bptt", &rvae_posterior_bptt);
  m.impl("rvae_posterior_bptt_backward", &rvae_posterior_bptt_backward);
}

#if defined(LIGHTDVAE_WITH_CUDA)
TORCH_LIBRARY_IMPL(lightdvae, CUDA, m) {
  m.impl("rvae_posterior_bptt", &rvae_posterior_bptt);
  m.impl("rvae_posterior_bptt_backward", &rvae_posterior_bptt_backward);
}
#endif

}  // namespace lightdvae
