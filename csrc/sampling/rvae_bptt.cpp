// RVAE's posterior loop with an explicit backward through time (issue 17; see bptt.h and posterior_bptt.cpp).
//
// Each step: e = z_embed(z_{t-1}); the z LSTM (ATen's LSTMCell arithmetic, layer by layer); the posterior MLP on
// [gx_t ; gz_t] (none by default), the heads; the draw.  The gx part (and bias) of the first layer reading
// [gx_t ; gz_t] (posterior layer 0, or the heads) is one GEMM over all steps before the loop.  The backward runs the LSTM's recurrence (dh, dc per layer) and the z feedback step by step; the activation
// derivatives of the gates are computed for all steps before the loop, and after it every weight gradient is one
// GEMM over all frames * batch rows (the gx gradient too).  The loop takes the ATen cell (exact_lstm = false; with
// exact_lstm the models run the composite rvae_posterior).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "sampling/bptt.h"
#include "sampling/cells.h"
#include "sampling/sampling.h"

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

}  // namespace lightdvae
