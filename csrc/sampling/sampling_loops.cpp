// The sequential latent sampling loops of DKF, RVAE and SRNN (SPEC 7.3): the whole t = 1..T loop
// in C++, one ATen call per layer and step, no Python per time step.
//
// The ops are registered CompositeImplicitAutograd: they run on whatever device their inputs are on
// (on CUDA every ATen call below launches its CUDA kernel from this loop; the loops read nothing back
// from the device, so the host never waits for it inside a loop), and autograd differentiates them
// through the recorded ATen graph (the posterior loops and the scheduled-sampling decoder run in
// training).  When no input needs a gradient the loops run with gradient recording off, and the
// LSTM loops pack their weights once for the whole loop (see LSTMStepper in cells.h).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <string>
#include <vector>

#include "sampling/cells.h"
#include "sampling/row_tensors.h"
#include "sampling/sampling.h"
#include "sampling/small_batch.h"

namespace lightdvae {
namespace {

using sampling::draw;
using sampling::heads;
using sampling::Linear;
using sampling::linears;
using sampling::LSTMState;
using sampling::LSTMStepper;
using sampling::mlp;

bool any_requires_grad(std::initializer_list<at::TensorList> lists, std::initializer_list<at::Tensor> tensors) {
  if (!c10::GradMode::is_enabled()) {
    return false;
  }
  for (const auto& list : lists) {
    for (const auto& t : list) {
      if (t.requires_grad()) {
        return true;
      }
    }
  }
  for (const auto& t : tensors) {
    if (t.defined() && t.requires_grad()) {
      return true;
    }
  }
  return false;
}

// Per-step results of a loop, stacked once at the end into a time-major (frames, batch, width)
// tensor.  (Writing each step into a preallocated output instead, with out= variants for the
// last op of the step, measured no faster on the CPU: the allocations are cheap next to the
// per-call overhead, and one stack beats a copy per step.)
class Steps {
 public:
  explicit Steps(int64_t frames) { steps_.reserve(frames); }
  void put(at::Tensor value) { steps_.push_back(std::move(value)); }
  at::Tensor result() const { return at::stack(steps_); }

 private:
  std::vector<at::Tensor> steps_;
};

at::Tensor noise_at(const at::Tensor& eps, int64_t t) { return eps.defined() ? eps[t] : at::Tensor(); }

at::Tensor defined_or_empty(const std::optional<at::Tensor>& t) { return t.has_value() ? *t : at::Tensor(); }

}  // namespace

// ------------------------------------------------------------------------------------------ DKF

Tensors3 dkf_posterior(const at::Tensor& gx_in, const std::optional<at::Tensor>& eps_in, at::TensorList z_to_g,
                       at::TensorList posterior_mlp, at::TensorList heads_w, double g_terms, int64_t activation) {
  const at::Tensor eps = defined_or_empty(eps_in);
  const int64_t z_dim =
      check_dkf_posterior("lightdvae::dkf_posterior", gx_in, eps, z_to_g, posterior_mlp, heads_w, g_terms, activation);
  const int64_t frames = gx_in.size(0), batch = gx_in.size(1);
  const bool record = any_requires_grad({z_to_g, posterior_mlp, heads_w}, {gx_in, eps});
  at::AutoGradMode grad_mode(record);
  const at::Tensor gx = gx_in.contiguous();

  const auto z_to_g_l = linears(z_to_g), posterior_l = linears(posterior_mlp), heads_l = linears(heads_w);

  Steps zs(frames);
  Steps means(frames);
  Steps logvars(frames);
  at::Tensor z = at::zeros({batch, z_dim}, gx.options());
  for (int64_t t = 0; t < frames; ++t) {
    const at::Tensor g = (mlp(z, z_to_g_l, activation) + gx[t]) / g_terms;
    auto [mean, logvar] = heads(mlp(g, posterior_l, activation), heads_l);
    z = draw(mean, logvar, noise_at(eps, t));
    zs.put(z);
    means.put(mean);
    logvars.put(logvar);
  }
  return {zs.result(), means.result(), logvars.result()};
}

at::Tensor dkf_prior(const at::Tensor& eps_in, at::TensorList transition, double temperature) {
  constexpr const char* op = "lightdvae::dkf_prior";
  check_sequence(op, eps_in, "eps");
  const int64_t frames = eps_in.size(0), batch = eps_in.size(1), z_dim = eps_in.size(2);
  TORCH_CHECK(transition.size() == 12, op,
              ": transition must be the weights and biases of gate_in, gate_out, proposal_in, proposal_out, "
              "prior_mean, prior_var (12 tensors), got ",
              transition.size());
  for (size_t i = 0; i < 12; i += 2) {
    TORCH_CHECK(check_linears(op, transition.slice(i, 2), "transition", z_dim, eps_in) == z_dim, op,
                ": every transition layer maps z_dim = ", z_dim, " to z_dim");
  }
  const bool record = any_requires_grad({transition}, {eps_in});
  at::AutoGradMode grad_mode(record);
  const at::Tensor eps = temperature != 1.0 ? eps_in * temperature : eps_in;
  const auto w = linears(transition);  // gate_in, gate_out, proposal_in, proposal_out, prior_mean, prior_var

  Steps zs(frames);
  at::Tensor z = at::zeros({batch, z_dim}, eps.options());
  for (int64_t t = 0; t < frames; ++t) {
    // lightdvae.models.dkf.DKF.transition
    const at::Tensor gate = at::sigmoid(w[1](at::relu(w[0](z))));
    const at::Tensor proposal = w[3](at::relu(w[2](z)));
    const at::Tensor mean = (1 - gate) * w[4](z) + gate * proposal;
    const at::Tensor logvar = at::log(at::softplus(w[5](at::relu(proposal))));
    z = draw(mean, logvar, eps[t]);
    zs.put(z);
  }
  return zs.result();
}

// ----------------------------------------------------------------------------------------- RVAE

Tensors3 rvae_posterior(const at::Tensor& gx_in, const std::optional<at::Tensor>& eps_in, at::TensorList z_embed,
                        at::TensorList rnn_z, at::TensorList posterior_mlp, at::TensorList heads_w, int64_t activation,
                        bool exact_lstm) {
  const at::Tensor eps = defined_or_empty(eps_in);
  const int64_t z_dim = check_rvae_posterior("lightdvae::rvae_posterior", gx_in, eps, z_embed, rnn_z, posterior_mlp,
                                             heads_w, activation);
  const int64_t frames = gx_in.size(0), batch = gx_in.size(1);
  const bool record = any_requires_grad({z_embed, rnn_z, posterior_mlp, heads_w}, {gx_in, eps});
  at::AutoGradMode grad_mode(record);
  const at::Tensor gx = gx_in.contiguous();

  const auto z_embed_l = linears(z_embed), posterior_l = linears(posterior_mlp), heads_l = linears(heads_w);
  const LSTMStepper lstm(rnn_z, exact_lstm, gx, batch);

  Steps zs(frames);
  Steps means(frames);
  Steps logvars(frames);
  LSTMState state = lstm.zero_state(batch, gx.options());
  at::Tensor z = at::zeros({batch, z_dim}, gx.options());
  for (int64_t t = 0; t < frames; ++t) {
    const at::Tensor gz = lstm(mlp(z, z_embed_l, activation), state);
    auto [mean, logvar] = heads(mlp(at::cat({gx[t], gz}, -1), posterior_l, activation), heads_l);
    z = draw(mean, logvar, noise_at(eps, t));
    zs.put(z);
    means.put(mean);
    logvars.put(logvar);
  }
  return {zs.result(), means.result(), logvars.result()};
}

// ----------------------------------------------------------------------------------------- SRNN

Tensors3 srnn_posterior(const at::Tensor& g_in, const std::optional<at::Tensor>& eps_in, at::TensorList posterior_mlp,
                        at::TensorList heads_w, int64_t activation) {
  const at::Tensor eps = defined_or_empty(eps_in);
  const int64_t z_dim =
      check_srnn_posterior("lightdvae::srnn_posterior", g_in, eps, posterior_mlp, heads_w, activation);
  const int64_t frames = g_in.size(0), batch = g_in.size(1);
  const bool record = any_requires_grad({posterior_mlp, heads_w}, {g_in, eps});
  at::AutoGradMode grad_mode(record);
  const at::Tensor g = g_in.contiguous();

  const auto posterior_l = linears(posterior_mlp), heads_l = linears(heads_w);

  Steps zs(frames);
  Steps means(frames);
  Steps logvars(frames);
  at::Tensor z = at::zeros({batch, z_dim}, g.options());
  for (int64_t t = 0; t < frames; ++t) {
    auto [mean, logvar] = heads(mlp(at::cat({g[t], z}, -1), posterior_l, activation), heads_l);
    z = draw(mean, logvar, noise_at(eps, t));
    zs.put(z);
    means.put(mean);
    logvars.put(logvar);
  }
  return {zs.result(), means.result(), logvars.result()};
}

namespace {

// The sequence-level pass of srnn_own_past with gradients (CPU): from the fed-back predictions s_hat (frames, batch,
// x_dim) that a loop without a graph found, h_embed and the decoder as sequence-level GEMMs and the LSTM as one
// torch.lstm call, all recording gradients.  `h_own_found`, when defined, is the loop's own-past h: given when
// neither h_embed nor the LSTM needs gradients (the enhancement's E-step, whose decoder side is frozen), where h_own
// carries none (the fed-back predictions are detached) and only the decoder is recomputed.
Tensors3 own_past_sequence(const at::Tensor& s_hat, const at::Tensor& z, const at::Tensor& h_true,
                           const c10::List<bool>& use_own, bool all_own, const std::vector<Linear>& h_embed_l,
                           const std::vector<Linear>& decoder_l, const Linear& out_l, at::TensorList rnn_h,
                           int64_t activation, const at::Tensor& h_own_found = at::Tensor()) {
  const at::AutoGradMode sequence_grad(true);
  const int64_t frames = s_hat.size(0), batch = s_hat.size(1), x_dim = s_hat.size(2);
  const at::Tensor h_own = h_own_found.defined() ? h_own_found : [&] {
    const int64_t h_dim = rnn_h[1].size(1), layers = static_cast<int64_t>(rnn_h.size() / 4);
    const at::Tensor embedded =
        mlp(s_hat.view({frames * batch, x_dim}), h_embed_l, activation).view({frames, batch, -1});
    const at::Tensor zeros = at::zeros({layers, batch, h_dim}, z.options());
    return std::get<0>(at::lstm(embedded, {zeros, zeros}, rnn_h, /*has_biases=*/true, layers, /*dropout=*/0.0,
                                /*train=*/true, /*bidirectional=*/false, /*batch_first=*/false));
  }();
  at::Tensor h = h_own;
  if (!all_own) {
    const at::Tensor own_mask = at::zeros({frames, 1, 1}, z.options().dtype(at::kBool));
    for (int64_t t = 0; t < frames; ++t) {
      if (use_own.get(t)) {
        own_mask[t].fill_(true);  // fill_, not a copy from host memory: traceable with fake tensors
      }
    }
    h = at::where(own_mask, h_own, h_true);
  }
  const at::Tensor joint = at::cat({h, z}, -1);
  const at::Tensor logvar =
      out_l(mlp(joint.view({frames * batch, joint.size(2)}), decoder_l, activation)).view({frames, batch, x_dim});
  return {logvar, h, h_own};
}

// srnn_own_past's loop on raw pointers at small batch (issue 16: the enhancement's E-step and sample pass decode one
// SRNN utterance on its own past twice per iteration; the ATen loop is ~45 calls a frame, dispatch-bound at batch
// 1).  The same function -- h_embed, the LSTM cell (ATen's LSTMCell arithmetic, its two biases added first), the
// decoder on [h_t ; z_t], the fed-back exp(logvar) -- with every product through small_gemm.h (each weight read once
// per step for all rows).  z and h_true (if defined) time-major and contiguous; writes each of fed[t] = s_hat_{t-1},
// logvar, used and own (frames, batch, width), all contiguous, that is not null.
template <typename T>
void own_past_small(const at::Tensor& z, const at::Tensor& h_true, const c10::List<bool>& use_own,
                    at::TensorList h_embed, at::TensorList rnn_h, at::TensorList decoder, at::TensorList decoder_out,
                    int64_t activation, T* fed, T* logvar, T* used, T* own) {
  const int64_t frames = z.size(0), batch = z.size(1), z_dim = z.size(2);
  const auto embed = small::layers<T>(h_embed), dec = small::layers<T>(decoder);
  const small::Layer<T> out(decoder_out[0], decoder_out[1]);
  const int64_t x_dim = out.out, hidden = rnn_h[1].size(1), layers = static_cast<int64_t>(rnn_h.size() / 4);
  std::vector<small::Layer<T>> ih;
  std::vector<at::Tensor> hh_t;
  for (size_t i = 0; i + 3 < rnn_h.size(); i += 4) {
    ih.emplace_back(rnn_h[i], rnn_h[i + 2] + rnn_h[i + 3]);
    hh_t.push_back(small::contiguous_t(rnn_h[i + 1]));
  }
  auto widest = [](const std::vector<small::Layer<T>>& stack) {
    int64_t w = 0;
    for (const auto& l : stack) w = std::max(w, l.out);
    return w;
  };
  const int64_t joint = hidden + z_dim;
  std::vector<T> s_prev(batch * x_dim, T(0)), lv(batch * x_dim), gates(batch * 4 * hidden), joined(batch * joint);
  std::vector<T> h(layers * batch * hidden, T(0)), c(layers * batch * hidden, T(0));
  std::vector<T> a(batch * std::max(widest(embed), widest(dec))), b(a.size());
  const T* zp = z.const_data_ptr<T>();
  const T* hp = h_true.defined() ? h_true.const_data_ptr<T>() : nullptr;
  // a Linear stack with the activation after every layer, ping-ponging between a and b; returns its output
  auto stack = [&](const std::vector<small::Layer<T>>& layers_, const T* x) {
    T* y = a.data();
    for (const auto& layer : layers_) {
      layer(y, x, batch);
      small::activate(y, batch * layer.out, activation);
      x = y;
      y = y == a.data() ? b.data() : a.data();
    }
    return x;
  };
  for (int64_t t = 0; t < frames; ++t) {
    if (fed != nullptr) std::copy(s_prev.begin(), s_prev.end(), fed + t * batch * x_dim);
    const T* x = stack(embed, s_prev.data());
    for (int64_t l = 0; l < layers; ++l) {  // gates = (x W_ih^T + b_ih + b_hh) + h W_hh^T, then the cell
      T* hl = h.data() + l * batch * hidden;
      T* cl = c.data() + l * batch * hidden;
      ih[l](gates.data(), x, batch);
      small::mm_acc(gates.data(), hl, hh_t[l].const_data_ptr<T>(), batch, hidden, 4 * hidden, 4 * hidden);
      small::lstm_cell(gates.data(), cl, cl, static_cast<T*>(nullptr), hl, batch, hidden);
      x = hl;
    }
    const T* h_own = h.data() + (layers - 1) * batch * hidden;
    const T* h_used = use_own.get(t) ? h_own : hp + t * batch * hidden;
    for (int64_t r = 0; r < batch; ++r) {
      std::copy(h_used + r * hidden, h_used + (r + 1) * hidden, joined.data() + r * joint);
      std::copy(zp + (t * batch + r) * z_dim, zp + (t * batch + r + 1) * z_dim, joined.data() + r * joint + hidden);
    }
    out(lv.data(), stack(dec, joined.data()), batch);
    for (int64_t i = 0; i < batch * x_dim; ++i) s_prev[i] = std::exp(lv[i]);
    if (logvar != nullptr) std::copy(lv.begin(), lv.end(), logvar + t * batch * x_dim);
    if (used != nullptr) std::copy(h_used, h_used + batch * hidden, used + t * batch * hidden);
    if (own != nullptr) std::copy(h_own, h_own + batch * hidden, own + t * batch * hidden);
  }
}

// srnn_own_past's loop as the row code (row_loops.h's OwnPast): one CUDA launch for the whole loop, or the same code
// row after row on the CPU (the tests' switch).  z and h_true (if defined) time-major and contiguous; writes `fed`
// when defined, else logvar, used and own.
template <typename T>
void own_past_rows(rows::Path path, const at::Tensor& z, const at::Tensor& h_true, const c10::List<bool>& use_own,
                   at::TensorList h_embed, at::TensorList rnn_h, at::TensorList decoder, at::TensorList decoder_out,
                   int64_t activation, const at::Tensor& fed, const at::Tensor& logvar, const at::Tensor& used,
                   const at::Tensor& own) {
  rows::Hold<T> hold;
  rows::OwnPast<T> a;
  a.frames = z.size(0);
  a.batch = z.size(1);
  a.z_dim = static_cast<int>(z.size(2));
  a.x_dim = static_cast<int>(decoder_out[0].size(0));
  a.hidden = static_cast<int>(rnn_h[1].size(1));
  a.layers = static_cast<int>(rnn_h.size() / 4);
  a.activation = static_cast<int>(activation);
  a.widest = rows::widest({h_embed, decoder}, a.x_dim);
  a.z = hold(z);
  a.h_true = h_true.defined() ? hold(h_true) : nullptr;
  std::vector<T> flags;
  for (const bool f : use_own) flags.push_back(f ? T(1) : T(0));
  a.use_own = hold(at::tensor(c10::ArrayRef<T>(flags), z.options().device(at::kCPU)).to(z.device()));
  a.h_embed = hold.forward(h_embed);
  a.decoder = hold.forward(decoder);
  a.out = hold.forward(decoder_out).l[0];
  for (int l = 0; l < a.layers; ++l) {
    const at::Tensor& w_ih = rnn_h[4 * l];
    a.ih[l] = {hold(w_ih.t()), hold(rnn_h[4 * l + 2] + rnn_h[4 * l + 3]), static_cast<int>(w_ih.size(1)),
               static_cast<int>(w_ih.size(0))};
    a.w_hh[l] = hold(rnn_h[4 * l + 1].t());
  }
  if (fed.defined()) {
    a.fed = hold.out(fed);
  } else {
    a.logvar = hold.out(logvar);
    a.used = hold.out(used);
    a.own = hold.out(own);
  }
  const int64_t H = a.hidden;
  a.scratch_width = 2 * a.layers * H + 4 * H + a.x_dim + 2 * a.widest + H + a.z_dim;
  a.scratch = hold.out(at::empty({a.batch * a.scratch_width}, z.options()));
  rows::run(path, a, rows::team_size(std::max<int>(a.widest, 4 * a.hidden)));
}

}  // namespace

Tensors3 srnn_own_past(const at::Tensor& z_in, const std::optional<at::Tensor>& h_true_in, const c10::List<bool>& use_own,
                       at::TensorList h_embed, at::TensorList rnn_h, at::TensorList decoder, at::TensorList decoder_out,
                       int64_t activation, bool exact_lstm, bool exact) {
  constexpr const char* op = "lightdvae::srnn_own_past";
  check_sequence(op, z_in, "z");
  check_activation(op, activation);
  const int64_t frames = z_in.size(0), batch = z_in.size(1), z_dim = z_in.size(2);
  TORCH_CHECK(static_cast<int64_t>(use_own.size()) == frames, op, ": use_own must have one entry per frame (",
              frames, "), got ", use_own.size());
  TORCH_CHECK(decoder_out.size() == 2 && decoder_out[0].dim() == 2, op,
              ": decoder_out must be the output Linear [weight, bias]");
  const int64_t x_dim = decoder_out[0].size(0);
  const int64_t embed_dim = check_linears(op, h_embed, "h_embed", x_dim, z_in);
  const int64_t h_dim = check_lstm(op, rnn_h, "rnn_h", embed_dim, z_in);
  const int64_t dec_dim = check_linears(op, decoder, "decoder", h_dim + z_dim, z_in);
  check_linears(op, decoder_out, "decoder_out", dec_dim, z_in);
  const at::Tensor h_true = defined_or_empty(h_true_in);
  bool all_own = true;
  for (const bool own : use_own) {
    all_own = all_own && own;
  }
  TORCH_CHECK(all_own || h_true.defined(), op, ": h_true is needed where use_own is False");
  if (h_true.defined()) {
    check_sequence(op, h_true, "h_true");
    TORCH_CHECK(h_true.size(0) == frames && h_true.size(1) == batch && h_true.size(2) == h_dim, op,
                ": h_true must be (frames, batch, rnn_h hidden) = (", frames, ", ", batch, ", ", h_dim, "), got ",
                h_true.sizes());
    TORCH_CHECK(h_true.device() == z_in.device() && h_true.scalar_type() == z_in.scalar_type(), op,
                ": h_true must be on the device and of the dtype of z");
  }
  // The fed-back predictions s_hat_{t-1} = exp(logvar_{t-1}) are detached: the loop only finds them.  On the CPU a
  // call that records gradients runs the loop without a graph and then computes everything that carries gradients
  // once over all frames from them: h_embed and the decoder as sequence-level GEMMs, the LSTM as one torch.lstm
  // call (oneDNN's whole-sequence kernel and its backward), instead of a graph of some twenty ATen calls per step;
  // the values are the loop's within float rounding.  On CUDA the same, the loop being one launch of the row code
  // (the sequence pass's torch.lstm is cuDNN's, on the model's flattened weights); where the row code does not fit
  // (deeper stacks, other dtypes) the loop records its steps, the LSTM's only when its weights need gradients.
  const bool record_h = any_requires_grad({h_embed, rnn_h}, {});
  const bool record = record_h || any_requires_grad({decoder, decoder_out}, {z_in, h_true});
  // The row code (one CUDA launch for the loop; the CPU's serial run of it under the tests' switch) where the stacks
  // and the LSTM fit it: to find the fed-back predictions of a call that records gradients, and for the whole loop
  // without gradients when bit-parity is not asked for (exact = false).
  const rows::Path rows_path = static_cast<int64_t>(rnn_h.size() / 4) <= rows::kMaxLstmLayers
                                   ? rows::path(z_in, {h_embed, decoder, decoder_out})
                                   : rows::Path::kNo;
  // oneDNN's LSTM divides by the batch size: no sequence pass (and no rows) for an empty batch
  const bool sequence_pass = record && batch > 0 && (z_in.is_cpu() || rows_path == rows::Path::kCuda);
  const bool step_graph = record && !sequence_pass;
  const bool use_rows = rows_path != rows::Path::kNo && batch > 0 && frames > 0 && (sequence_pass || !exact);
  // made before the loop's grad mode is set: in the sequence pass these views and copies carry the gradients
  const at::Tensor z = z_in.contiguous();
  const auto h_embed_l = linears(h_embed), decoder_l = linears(decoder);
  const auto out_l = linears(decoder_out)[0];
  at::AutoGradMode grad_mode(step_graph);
  const auto time_major = [&](int64_t width) { return at::empty({frames, batch, width}, z.options()); };
  if (use_rows) {
    const at::Tensor ht = h_true.defined() ? h_true.contiguous() : at::Tensor();
    const at::Tensor fed_all = sequence_pass ? time_major(x_dim) : at::Tensor();
    const at::Tensor logvar_all = sequence_pass ? at::Tensor() : time_major(x_dim);
    const at::Tensor used_all = sequence_pass ? at::Tensor() : time_major(h_dim);
    const at::Tensor own_all = sequence_pass ? at::Tensor() : time_major(h_dim);
    AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "srnn_own_past_rows", [&] {
      own_past_rows<scalar_t>(rows_path, z, ht, use_own, h_embed, rnn_h, decoder, decoder_out, activation, fed_all,
                              logvar_all, used_all, own_all);
    });
    if (!sequence_pass) {
      return {logvar_all, used_all, own_all};
    }
    return own_past_sequence(fed_all, z, h_true, use_own, all_own, h_embed_l, decoder_l, out_l, rnn_h, activation);
  }
  // Without bit-parity (exact = false, lightdvae.ops.sampling.exact_loops), a small CPU batch whose loop records
  // nothing runs on raw pointers.
  if (!exact && !exact_lstm && !step_graph && small::eligible(z, batch)) {
    const at::Tensor ht = h_true.defined() ? h_true.contiguous() : at::Tensor();
    // with a sequence pass the loop gives the fed-back predictions, and its own-past h where that carries no
    // gradient (h_embed and the LSTM frozen): the sequence pass then recomputes the decoder alone
    const at::Tensor fed_all = sequence_pass ? time_major(x_dim) : at::Tensor();
    const at::Tensor logvar_all = sequence_pass ? at::Tensor() : time_major(x_dim);
    const at::Tensor used_all = sequence_pass ? at::Tensor() : time_major(h_dim);
    const at::Tensor own_all = !sequence_pass || !record_h ? time_major(h_dim) : at::Tensor();
    AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "srnn_own_past_small", [&] {
      auto ptr = [](const at::Tensor& t) { return t.defined() ? t.mutable_data_ptr<scalar_t>() : nullptr; };
      own_past_small<scalar_t>(z, ht, use_own, h_embed, rnn_h, decoder, decoder_out, activation, ptr(fed_all),
                               ptr(logvar_all), ptr(used_all), ptr(own_all));
    });
    if (!sequence_pass) {
      return {logvar_all, used_all, own_all};
    }
    return own_past_sequence(fed_all, z, h_true, use_own, all_own, h_embed_l, decoder_l, out_l, rnn_h, activation,
                             own_all);
  }
  const LSTMStepper lstm = [&] {
    const at::AutoGradMode h_mode(step_graph && record_h);
    return LSTMStepper(rnn_h, exact_lstm, z, batch);
  }();

  Steps logvars(frames);
  Steps used(frames);
  Steps own(frames);
  Steps fed(frames);  // s_hat_{t-1} of every step, for the sequence-level pass
  LSTMState state = lstm.zero_state(batch, z.options());
  at::Tensor s_prev = at::zeros({batch, x_dim}, z.options());
  for (int64_t t = 0; t < frames; ++t) {
    const at::Tensor h_own = [&] {
      const at::AutoGradMode h_mode(step_graph && record_h);
      return lstm(mlp(s_prev, h_embed_l, activation), state);
    }();
    const at::Tensor h = use_own.get(t) ? h_own : h_true[t];
    const at::Tensor logvar = out_l(mlp(at::cat({h, z[t]}, -1), decoder_l, activation));
    if (sequence_pass) {
      fed.put(s_prev);
    } else {
      logvars.put(logvar);
      used.put(h);
      own.put(h_own);
    }
    s_prev = at::exp(logvar.detach());  // the model's own prediction; scheduled sampling does not backprop into it
  }
  if (!sequence_pass) {
    return {logvars.result(), used.result(), own.result()};
  }
  return own_past_sequence(fed.result(), z, h_true, use_own, all_own, h_embed_l, decoder_l, out_l, rnn_h,
                           activation);
}

std::tuple<at::Tensor, at::Tensor> srnn_prior(const at::Tensor& eps_in, at::TensorList h_embed, at::TensorList rnn_h,
                                              at::TensorList prior_mlp, at::TensorList prior_heads,
                                              at::TensorList decoder, at::TensorList decoder_out, int64_t activation,
                                              double temperature, bool exact_lstm) {
  constexpr const char* op = "lightdvae::srnn_prior";
  check_sequence(op, eps_in, "eps");
  check_activation(op, activation);
  const int64_t frames = eps_in.size(0), batch = eps_in.size(1), z_dim = eps_in.size(2);
  TORCH_CHECK(decoder_out.size() == 2 && decoder_out[0].dim() == 2, op,
              ": decoder_out must be the output Linear [weight, bias]");
  const int64_t x_dim = decoder_out[0].size(0);
  const int64_t embed_dim = check_linears(op, h_embed, "h_embed", x_dim, eps_in);
  const int64_t h_dim = check_lstm(op, rnn_h, "rnn_h", embed_dim, eps_in);
  const int64_t hidden = check_linears(op, prior_mlp, "prior_mlp", h_dim + z_dim, eps_in);
  TORCH_CHECK(check_heads(op, prior_heads, "prior_heads", hidden, eps_in) == z_dim, op,
              ": prior_heads must output z_dim = ", z_dim, " (the width of eps)");
  const int64_t dec_dim = check_linears(op, decoder, "decoder", h_dim + z_dim, eps_in);
  check_linears(op, decoder_out, "decoder_out", dec_dim, eps_in);
  const bool record = any_requires_grad({h_embed, rnn_h, prior_mlp, prior_heads, decoder, decoder_out}, {eps_in});
  at::AutoGradMode grad_mode(record);
  const at::Tensor eps = temperature != 1.0 ? eps_in * temperature : eps_in;

  const auto h_embed_l = linears(h_embed), prior_l = linears(prior_mlp), heads_l = linears(prior_heads),
             decoder_l = linears(decoder);
  const LSTMStepper lstm(rnn_h, exact_lstm, eps, batch);
  const auto out_l = linears(decoder_out)[0];

  Steps zs(frames);
  Steps logvars(frames);
  LSTMState state = lstm.zero_state(batch, eps.options());
  at::Tensor s_prev = at::zeros({batch, x_dim}, eps.options());
  at::Tensor z = at::zeros({batch, z_dim}, eps.options());
  for (int64_t t = 0; t < frames; ++t) {
    const at::Tensor h = lstm(mlp(s_prev, h_embed_l, activation), state);
    auto [mean, logvar_z] = heads(mlp(at::cat({h, z}, -1), prior_l, activation), heads_l);
    z = draw(mean, logvar_z, eps[t]);
    const at::Tensor logvar = out_l(mlp(at::cat({h, z}, -1), decoder_l, activation));
    s_prev = at::exp(logvar);
    zs.put(z);
    logvars.put(logvar);
  }
  return {zs.result(), logvars.result()};
}

TORCH_LIBRARY_IMPL(lightdvae, CompositeImplicitAutograd, m) {
  m.impl("dkf_posterior", &dkf_posterior);
  m.impl("dkf_prior", &dkf_prior);
  m.impl("rvae_posterior", &rvae_posterior);
  m.impl("srnn_posterior", &srnn_posterior);
  m.impl("srnn_own_past", &srnn_own_past);
  m.impl("srnn_prior", &srnn_prior);
}

}  // namespace lightdvae
