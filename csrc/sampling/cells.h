// The recurrent cells of the sequential sampling loops (SPEC 7.3), written as ATen calls.
//
// Every function here runs on any device and dtype that ATen supports and is differentiable through
// ATen's autograd: the loops built from them are CompositeImplicitAutograd ops, so on a CUDA tensor
// each call launches ATen's CUDA kernel from the C++ loop, and backward comes from the recorded graph.
//
// The arithmetic mirrors the Python cells of lightdvae/models op for op (same ATen kernels, same
// argument order), so that the native loops reproduce the reference loops exactly where the kernels
// are the same; see LSTMStepper for the one place where the caller chooses how exact to be.
//
// Weights arrive as flat tensor lists in nn.Module layout:
//   Linear stack  [w0, b0, w1, b1, ...], w_i (out_i, in_i), b_i (out_i,)
//   Gaussian heads [w_mean, b_mean, w_logvar, b_logvar], each w (z_dim, hidden)
//   LSTM          [w_ih_l0, w_hh_l0, b_ih_l0, b_hh_l0, w_ih_l1, ...] = nn.LSTM._flat_weights
#pragma once

#include <ATen/ATen.h>
#include <ATen/Config.h>
#include <ATen/Context.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/TorchDispatchModeTLS.h>
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

// The state of a multi-layer LSTM, one (batch, hidden) tensor per layer.
struct LSTMState {
  std::vector<at::Tensor> h;
  std::vector<at::Tensor> c;
};

// Steps a unidirectional multi-layer nn.LSTM one frame at a time: x (batch, in) -> the last layer's
// output (batch, hidden), updating the state.
//
// exact = true reproduces nn.LSTM bit for bit: it runs the kernel that nn.LSTM (at::lstm) picks.
// On the CPU in float32 with oneDNN enabled that is oneDNN's LSTM primitive; when no gradient is
// recorded the weights are reordered into oneDNN's packed layout once, for the whole loop
// (mkldnn::_reorder_mkldnn_rnn_layer_weight, the prepacking torch's own graph passes use), and
// each step calls at::mkldnn_rnn_layer on them: the same primitive and the same results as at::lstm,
// without at::lstm's reorder of the weights at every call (about 100 us a step).  Everywhere else
// (autograd, CUDA's cuDNN, float64) each step calls at::lstm on a length-1 sequence.
//
// exact = false writes the cell out as ATen's own LSTMCell does (linear_hh(h) + linear_ih(x),
// in-place gate activations): identical to nn.LSTM wherever nn.LSTM itself uses that cell (CPU
// float64), within float rounding elsewhere, and cheaper than at::lstm when gradients are recorded.
class LSTMStepper {
 public:
  // An empty batch always takes the cell path: there is nothing to be exact about, and oneDNN's LSTM
  // primitive divides by the batch size (SIGFPE at batch 0).
  LSTMStepper(TensorList w, bool exact, const at::Tensor& like, int64_t batch) : w_(w), exact_(exact && batch > 0) {
    layers_ = static_cast<int64_t>(w.size() / 4);
    hidden_ = w[1].size(1);
    if (!exact_) {
      for (size_t i = 0; i + 3 < w.size(); i += 4) {
        cell_.push_back({w[i].t(), w[i + 2]});      // input -> gates
        cell_.push_back({w[i + 1].t(), w[i + 3]});  // hidden -> gates
      }
    } else if (!c10::GradMode::is_enabled()) {
      pack_for_onednn(like, batch);
    }
  }

  // Zero (h, c), laid out as restack() keeps them.
  LSTMState zero_state(int64_t batch, const at::TensorOptions& options) const {
    return {at::zeros({layers_, batch, hidden_}, options).unbind(0),
            at::zeros({layers_, batch, hidden_}, options).unbind(0)};
  }

  at::Tensor operator()(const at::Tensor& x, LSTMState& state) const {
    if (!exact_) {
      return cell(x, state);
    }
    if (!packed_.empty()) {
      return onednn(x, state);
    }
    // train only decides whether cuDNN keeps what its backward needs; the values are the same.
    auto [out, h, c] = at::lstm(x.unsqueeze(0), {layered(state.h), layered(state.c)}, w_, /*has_biases=*/true,
                                layers_, /*dropout=*/0.0, /*train=*/c10::GradMode::is_enabled(),
                                /*bidirectional=*/false, /*batch_first=*/false);
    state.h = h.unbind(0);
    state.c = c.unbind(0);
    return out.squeeze(0);
  }

 private:
  // The conditions under which at::lstm runs oneDNN (use_mkldnn in ATen's RNN.cpp, for float32).
  void pack_for_onednn(const at::Tensor& like, int64_t batch) {
#if AT_MKLDNN_ENABLED()
    if (!like.is_cpu() || like.scalar_type() != at::kFloat || !at::globalContext().userEnabledMkldnn()) {
      return;
    }
    // Packed oneDNN weights are opaque tensors: only for real computation, not when the loop is
    // traced or checked (fake tensors, functionalization, Python dispatch modes), where the
    // ATen path gives the same values.
    if (c10::impl::dispatch_mode_enabled()) {
      return;
    }
    const auto traced = c10::python_ks | c10::DispatchKeySet(c10::DispatchKey::Functionalize);
    if (like.key_set().has_any(traced)) {
      return;
    }
    for (const auto& t : w_) {
      if (t.key_set().has_any(traced)) {
        return;
      }
    }
    const auto schema = c10::Dispatcher::singleton().findSchema({"mkldnn::_reorder_mkldnn_rnn_layer_weight", ""});
    if (!schema.has_value()) {
      return;  // a torch without the prepacking op: at::lstm at every step
    }
    for (int64_t l = 0; l < layers_; ++l) {
      const at::Tensor& w_ih = w_[4 * l];
      // A boxed call: it does not depend on how the op's C++ kernel spells its signature.
      // (weight0, weight1, hidden_size, reverse, has_biases, batch_first, input_size) -> Tensor[]
      std::vector<c10::IValue> stack{w_ih, w_[4 * l + 1], hidden_, false, true, false,
                                     std::vector<int64_t>{1, batch, w_ih.size(1)}};
      schema->callBoxed(&stack);
      TORCH_INTERNAL_ASSERT(stack.size() == 1, "mkldnn::_reorder_mkldnn_rnn_layer_weight returned ", stack.size());
      auto packed = stack[0].toTensorVector();
      TORCH_INTERNAL_ASSERT(packed.size() == 2, "mkldnn::_reorder_mkldnn_rnn_layer_weight gave ", packed.size());
      packed_.push_back(std::move(packed[0]));
      packed_.push_back(std::move(packed[1]));
    }
#else
    (void)like;
    (void)batch;
#endif
  }

  // (layers, batch, hidden) from one tensor per layer.
  static at::Tensor layered(const std::vector<at::Tensor>& per_layer) {
    return per_layer.size() == 1 ? per_layer[0].unsqueeze(0) : at::stack(per_layer);
  }

  // at::lstm's oneDNN path, layer by layer, on the packed weights.
  at::Tensor onednn(const at::Tensor& x, LSTMState& state) const {
    constexpr int64_t kLSTMMode = 2;  // ideep::rnn_kind::LSTM
    at::Tensor input = x.unsqueeze(0);
    for (int64_t l = 0; l < layers_; ++l) {
      auto [out, h, c, workspace] =
          at::mkldnn_rnn_layer(input, packed_[2 * l], packed_[2 * l + 1], w_[4 * l + 2], w_[4 * l + 3], state.h[l],
                               state.c[l], /*reverse=*/false, /*batch_sizes=*/{}, kLSTMMode, hidden_,
                               /*num_layers=*/layers_, /*has_biases=*/true, /*bidirectional=*/false,
                               /*batch_first=*/false, /*train=*/false);
      input = out;
      state.h[l] = h;
      state.c[l] = c;
    }
    restack(state);
    return input.squeeze(0);
  }

  // ATen's LSTMCell (aten/src/ATen/native/RNN.cpp), layer by layer.
  at::Tensor cell(const at::Tensor& x, LSTMState& state) const {
    at::Tensor input = x;
    for (int64_t l = 0; l < layers_; ++l) {
      const at::Tensor gates = cell_[2 * l + 1](state.h[l]).add_(cell_[2 * l](input));
      const auto chunks = gates.unsafe_chunk(4, 1);
      const at::Tensor in_gate = chunks[0].sigmoid_();
      const at::Tensor forget_gate = chunks[1].sigmoid_();
      const at::Tensor cell_gate = chunks[2].tanh_();
      const at::Tensor out_gate = chunks[3].sigmoid_();
      state.c[l] = (forget_gate * state.c[l]).add_(in_gate * cell_gate);
      input = out_gate * state.c[l].tanh();
      state.h[l] = input;
    }
    restack(state);
    return input;
  }

  // at::lstm keeps a multi-layer state in one (layers, batch, hidden) tensor and reads layer l at an
  // offset into it; MKL's GEMMs can round differently with differently aligned operands, so the
  // loops keep that layout too (one layer needs nothing: offset 0).
  void restack(LSTMState& state) const {
    if (layers_ > 1) {
      state.h = at::stack(state.h).unbind(0);
      state.c = at::stack(state.c).unbind(0);
    }
  }

  TensorList w_;
  bool exact_;
  int64_t layers_ = 0;
  int64_t hidden_ = 0;
  std::vector<Linear> cell_;
  std::vector<at::Tensor> packed_;  // oneDNN-packed [w_ih, w_hh] per layer
};

}  // namespace lightdvae::sampling
