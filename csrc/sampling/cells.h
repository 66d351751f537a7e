// The recurrent cells of the sequential sampling loops (SPEC 7.3), written as ATen calls.
//
// Every function here runs on any device and dtype that ATen supports and is differentiable through
// ATen's autograd: the loops built from them are CompositeImplicitAutograd ops, so on a CUDA tensor
// each call launches ATen's CUDA kernel from the C++ loop, and backward comes from the recorded graph.
//
// The arithmetic mirrors the Python cells of lightdvae/models op for op (same ATen kernels, same
// argument order), so that the native loops reproduce the reference loops exactly where the kernels
// are the same; see lstm_step for the one place where the caller chooses between speed and exactness.
//
// Weights arrive as flat tensor lists in nn.Module layout:
//   Linear stack  [w0, b0, w1, b1, ...], w_i (out_i, in_i), b_i (out_i,)
//   Gaussian heads [w_mean, b_mean, w_logvar, b_logvar], each w (z_dim, hidden)
//   LSTM          [w_ih_l0, w_hh_l0, b_ih_l0, b_hh_l0, w_ih_l1, ...] = nn.LSTM._flat_weights
#pragma once

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <c10/util/ArrayRef.h>

#include <tuple>
#include <vector>

namespace lightdvae::sampling {

using TensorList = c10::ArrayRef<at::Tensor>;

// Activation codes of the `activation` schema argument (the models' config.activation).
enum Activation : int64_t { kTanh = 0, kRelu = 1 };

// One Linear layer with its weight transposed once, outside the loop: x W^T + b is then the very
// addmm(b, x, W^T) call that at::linear (torch.nn.functional.linear) makes, without re-creating the
// transposed view at every step.
struct Linear {
  at::Tensor wt;  // (in, out), a view of the (out, in) weight
  at::Tensor b;   // (out,)
  at::Tensor operator()(const at::Tensor& x) const { return at::addmm(b, x, wt); }
};

// [w0, b0, w1, b1, ...] -> Linear layers.
inline std::vector<Linear> linears(TensorList params) {
  std::vector<Linear> layers;
  layers.reserve(params.size() / 2);
  for (size_t i = 0; i + 1 < params.size(); i += 2) {
    layers.push_back({params[i].t(), params[i + 1]});
  }
  return layers;
}

// act(L_k(... act(L_1(x)))): lightdvae.models.layers.MLP without dropout (an empty list is the identity).
// The activation runs in place on the fresh Linear output (same values, one allocation less).
inline at::Tensor mlp(at::Tensor x, const std::vector<Linear>& layers, int64_t activation) {
  for (const auto& layer : layers) {
    x = layer(x);
    if (activation == kTanh) {
      x.tanh_();
    } else {
      x.relu_();
    }
  }
  return x;
}

// The two Gaussian heads [mean, logvar] on one hidden vector.
inline std::tuple<at::Tensor, at::Tensor> heads(const at::Tensor& hidden, const std::vector<Linear>& w) {
  return {w[0](hidden), w[1](hidden)};
}

// Fused reparameterisation z = mean + exp(logvar / 2) * eps, the reference's
// torch.addcmul(mean, eps, torch.exp(0.5 * logvar)); without noise (deterministic mode) the mean.
inline at::Tensor draw(const at::Tensor& mean, const at::Tensor& logvar, const at::Tensor& eps) {
  if (!eps.defined()) {
    return mean;
  }
  return at::addcmul(mean, eps, at::exp(logvar * 0.5));
}

struct LSTMState {
  at::Tensor h;  // (layers, batch, hidden)
  at::Tensor c;  // (layers, batch, hidden)
};

// One step of a unidirectional multi-layer nn.LSTM on x (batch, in); returns the last layer's
// output (batch, hidden) and the new state.
//
// exact = true calls at::lstm on a length-1 sequence: the very kernel nn.LSTM runs (oneDNN on the
// CPU in float32, cuDNN on CUDA), so the step equals the Python reference bit for bit; it pays
// oneDNN's per-call weight reordering (about 150 us a step on a CPU core at 256 -> 128).
// exact = false writes the cell out as ATen's own LSTMCell does (linear_hh(h) + linear_ih(x),
// in-place gate activations): identical to nn.LSTM wherever nn.LSTM itself uses that cell (CPU
// float64), within float rounding elsewhere, and several times cheaper per step.
inline at::Tensor lstm_step(const at::Tensor& x, LSTMState& state, TensorList w, const std::vector<Linear>& cell,
                            bool exact) {
  const auto layers = static_cast<int64_t>(w.size() / 4);
  if (exact) {
    // train only decides whether cuDNN keeps what its backward needs; the values are the same.
    const bool train = c10::GradMode::is_enabled();
    auto [out, h, c] = at::lstm(x.unsqueeze(0), {state.h, state.c}, w, /*has_biases=*/true, layers,
                                /*dropout=*/0.0, train, /*bidirectional=*/false, /*batch_first=*/false);
    state.h = h;
    state.c = c;
    return out.squeeze(0);
  }
  at::Tensor input = x;
  std::vector<at::Tensor> hs, cs;
  hs.reserve(layers);
  cs.reserve(layers);
  for (int64_t l = 0; l < layers; ++l) {
    const Linear& ih = cell[2 * l];
    const Linear& hh = cell[2 * l + 1];
    const at::Tensor gates = hh(state.h[l]).add_(ih(input));
    const auto chunks = gates.unsafe_chunk(4, 1);
    const at::Tensor in_gate = chunks[0].sigmoid_();
    const at::Tensor forget_gate = chunks[1].sigmoid_();
    const at::Tensor cell_gate = chunks[2].tanh_();
    const at::Tensor out_gate = chunks[3].sigmoid_();
    at::Tensor c = (forget_gate * state.c[l]).add_(in_gate * cell_gate);
    input = out_gate * c.tanh();
    hs.push_back(input);
    cs.push_back(std::move(c));
  }
  state.h = layers == 1 ? hs[0].unsqueeze(0) : at::stack(hs);
  state.c = layers == 1 ? cs[0].unsqueeze(0) : at::stack(cs);
  return input;
}

// The LSTM cell's layers [ih_l0, hh_l0, ih_l1, ...] from nn.LSTM's flat weights.
inline std::vector<Linear> lstm_linears(TensorList w) {
  std::vector<Linear> layers;
  layers.reserve(w.size() / 2);
  for (size_t i = 0; i + 3 < w.size(); i += 4) {
    layers.push_back({w[i].t(), w[i + 2]});
    layers.push_back({w[i + 1].t(), w[i + 3]});
  }
  return layers;
}

}  // namespace lightdvae::sampling
