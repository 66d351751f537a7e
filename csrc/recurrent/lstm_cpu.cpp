// One LSTM layer over a sequence at small batch, with its explicit backward (issue 16: the enhancement E-step
// fine-tunes the inference LSTMs of DKF and RVAE one utterance at a time; schemas in csrc/lightdvae.cpp).
//
// At batch 1 ATen's CPU LSTM (oneDNN's primitive) spends most of a DKF E-step's LSTM time in its backward, about
// three times its forward.  Here the parts batched over all frames are single ATen products (the input projection
// x W_ih^T + b before the loop; dW_ih, dx, dW_hh and db after it), and the recurrence is raw pointers: each step one
// row-times-matrix product (small_gemm.h: every weight read once a step, the terms of each output summed in order,
// so the result does not depend on the instruction set) and ATen's LSTMCell arithmetic, in float32 with the
// vectorised tanh of tanh_math.h (at most 2 ulp) and a sigmoid made of it.
//
//   lstm_layer(x (T, B, I), w_ih (4H, I), w_hh (4H, H), b_ih, b_hh (4H), reverse)
//       -> out (T, B, H), gates (T, B, 4H) (the activated [i, f, g, o]), cell (2, T, B, H) ([c ; tanh(c)])
//   lstm_layer_backward(grad_out, x, w_ih, w_hh, out, gates, cell, reverse, input_grad)
//       -> dx (T, B, I) (empty unless input_grad), dw_ih, dw_hh, db (4H: the gradient of b_ih and of b_hh alike)
//
// reverse runs the layer from the last frame to the first (a backward LSTM: out[t] summarises frames t..T-1) on the
// frames where they are, without flipping the sequence.  The state starts at zero.  lightdvae/ops/lstm.py takes it
// for the LSTMs of the models (lightdvae.models.layers.run_lstm) when a gradient is recorded at batch <= 4.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

#include "activations/tanh_math.h"
#include "sampling/small_batch.h"

namespace lightdvae {
namespace {

void check_layer(const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& b_ih,
                 const at::Tensor& b_hh) {
  TORCH_CHECK(x.dim() == 3, "lstm_layer: x must be (frames, batch, input), got ", x.sizes());
  TORCH_CHECK(x.is_cpu(), "lstm_layer: a CPU op, got ", x.device());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "lstm_layer: float32 or float64, got ", x.scalar_type());
  const int64_t hidden = w_hh.size(1);
  TORCH_CHECK(w_ih.dim() == 2 && w_ih.size(0) == 4 * hidden && w_ih.size(1) == x.size(2),
              "lstm_layer: w_ih must be (4 hidden, input) = (", 4 * hidden, ", ", x.size(2), "), got ", w_ih.sizes());
  TORCH_CHECK(w_hh.dim() == 2 && w_hh.size(0) == 4 * hidden, "lstm_layer: w_hh must be (4 hidden, hidden), got ",
              w_hh.sizes());
  TORCH_CHECK(b_ih.dim() == 1 && b_ih.size(0) == 4 * hidden && b_hh.dim() == 1 && b_hh.size(0) == 4 * hidden,
              "lstm_layer: the biases must be (4 hidden)");
  for (const auto* t : {&w_ih, &w_hh, &b_ih, &b_hh}) {
    TORCH_CHECK(t->scalar_type() == x.scalar_type() && t->is_cpu(), "lstm_layer: every tensor of x's dtype, on the CPU");
  }
}

// ATen's LSTMCell after its products (small_batch.h's lstm_cell) for float32 with the vectorised tanh and sigmoid
// (tanh_math.h): libm's scalar exp and tanh on the 5 H activations of a row were most of a step.
LDV_CPU_CLONES void lstm_cell_f32(float* __restrict gates, const float* __restrict c_prev, float* __restrict c,
                                  float* __restrict tanh_c, float* __restrict h, int64_t rows, int64_t hidden) {
  for (int64_t b = 0; b < rows; ++b) {
    float* __restrict g = gates + b * 4 * hidden;
#pragma omp simd
    for (int64_t j = 0; j < 2 * hidden; ++j) g[j] = sigmoid_one(g[j]);
#pragma omp simd
    for (int64_t j = 2 * hidden; j < 3 * hidden; ++j) g[j] = tanh_one(g[j]);
#pragma omp simd
    for (int64_t j = 3 * hidden; j < 4 * hidden; ++j) g[j] = sigmoid_one(g[j]);
    const int64_t r0 = b * hidden;
#pragma omp simd
    for (int64_t j = 0; j < hidden; ++j) {
      const float cj = g[hidden + j] * c_prev[r0 + j] + g[j] * g[2 * hidden + j];
      const float tc = tanh_one(cj);
      c[r0 + j] = cj;
      tanh_c[r0 + j] = tc;
      h[r0 + j] = g[3 * hidden + j] * tc;
    }
  }
}

template <typename T>
void activate_cell(T* g, const T* c_prev, T* c, T* tanh_c, T* h, int64_t rows, int64_t hidden) {
  if constexpr (std::is_same_v<T, float>) {
    lstm_cell_f32(g, c_prev, c, tanh_c, h, rows, hidden);
  } else {
    small::lstm_cell(g, c_prev, c, tanh_c, h, rows, hidden);
  }
}

template <typename T>
void forward_steps(const at::Tensor& w_hh_t, const at::Tensor& out, const at::Tensor& gates, const at::Tensor& cell,
                   bool reverse) {
  const int64_t frames = out.size(0), batch = out.size(1), hidden = out.size(2);
  const T* w = w_hh_t.data_ptr<T>();  // (H, 4H)
  T* h_all = out.data_ptr<T>();
  T* g_all = gates.data_ptr<T>();
  T* c_all = cell.data_ptr<T>();
  T* tc_all = c_all + frames * batch * hidden;
  const std::vector<T> zero(batch * hidden, T(0));
  const int64_t row = batch * hidden;
  for (int64_t s = 0; s < frames; ++s) {
    const int64_t t = reverse ? frames - 1 - s : s;
    const int64_t prev = reverse ? t + 1 : t - 1;
    T* g = g_all + t * 4 * row;  // holds x W_ih^T + b on entry
    if (s > 0) {
      small::mm_acc(g, h_all + prev * row, w, batch, hidden, 4 * hidden, 4 * hidden);
    }
    const T* c_prev = s > 0 ? c_all + prev * row : zero.data();
    activate_cell(g, c_prev, c_all + t * row, tc_all + t * row, h_all + t * row, batch, hidden);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> lstm_layer(const at::Tensor& x_in, const at::Tensor& w_ih,
                                                          const at::Tensor& w_hh, const at::Tensor& b_ih,
                                                          const at::Tensor& b_hh, bool reverse) {
  check_layer(x_in, w_ih, w_hh, b_ih, b_hh);
  const auto x = x_in.contiguous();
  const int64_t frames = x.size(0), batch = x.size(1), hidden = w_hh.size(1);
  // the input projection of every frame at once; the steps add the recurrent product in place
  auto gates = at::addmm(b_ih + b_hh, x.reshape({frames * batch, x.size(2)}), w_ih.t())
                   .reshape({frames, batch, 4 * hidden});
  auto out = at::empty({frames, batch, hidden}, x.options());
  auto cell = at::empty({2, frames, batch, hidden}, x.options());
  if (frames > 0 && batch > 0) {
    const auto w_hh_t = w_hh.t().contiguous();
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "lstm_layer", [&] {
      forward_steps<scalar_t>(w_hh_t, out, gates, cell, reverse);
    });
  }
  return {out, gates, cell};
}

// The recurrence backwards: dgates (T, B, 4H) of the pre-activations, step by step.
template <typename T>
void backward_steps(const at::Tensor& grad_out, const at::Tensor& w_hh, const at::Tensor& gates, const at::Tensor& cell,
                    const at::Tensor& dgates, bool reverse) {
  const int64_t frames = gates.size(0), batch = gates.size(1), hidden = w_hh.size(1);
  const int64_t row = batch * hidden;
  const T* w = w_hh.data_ptr<T>();  // (4H, H): dh_prev = dgates . W_hh
  const T* go = grad_out.defined() ? grad_out.data_ptr<T>() : nullptr;
  const T* g_all = gates.data_ptr<T>();
  const T* c_all = cell.data_ptr<T>();
  const T* tc_all = c_all + frames * row;
  T* dg_all = dgates.data_ptr<T>();
  std::vector<T> dh_next(row, T(0)), dc_next(row, T(0));
  for (int64_t s = frames - 1; s >= 0; --s) {
    const int64_t t = reverse ? frames - 1 - s : s;
    const int64_t prev = reverse ? t + 1 : t - 1;
    const T* g = g_all + t * 4 * row;
    const T* tc = tc_all + t * row;
    const T* c_prev = s > 0 ? c_all + prev * row : nullptr;
    T* dg = dg_all + t * 4 * row;
    for (int64_t b = 0; b < batch; ++b) {
      const T* gb = g + b * 4 * hidden;
      T* db = dg + b * 4 * hidden;
      for (int64_t j = 0; j < hidden; ++j) {
        const int64_t r = b * hidden + j;
        const T i = gb[j], f = gb[hidden + j], gg = gb[2 * hidden + j], o = gb[3 * hidden + j];
        const T dh = (go ? go[t * row + r] : T(0)) + dh_next[r];
        const T dc = dh * o * (T(1) - tc[r] * tc[r]) + dc_next[r];
        db[j] = dc * gg * i * (T(1) - i);
        db[hidden + j] = c_prev ? dc * c_prev[r] * f * (T(1) - f) : T(0);
        db[2 * hidden + j] = dc * i * (T(1) - gg * gg);
        db[3 * hidden + j] = dh * tc[r] * o * (T(1) - o);
        dc_next[r] = dc * f;
      }
    }
    if (s > 0) {
      std::fill(dh_next.begin(), dh_next.end(), T(0));
      small::mm_acc(dh_next.data(), dg, w, batch, 4 * hidden, hidden, hidden);
    }
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_layer_backward(
    const std::optional<at::Tensor>& grad_out_in, const at::Tensor& x_in, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const at::Tensor& out, const at::Tensor& gates, const at::Tensor& cell, bool reverse, bool input_grad) {
  const auto x = x_in.contiguous();
  const int64_t frames = x.size(0), batch = x.size(1), input = x.size(2), hidden = w_hh.size(1);
  TORCH_CHECK(out.sizes() == at::IntArrayRef({frames, batch, hidden}) && out.is_contiguous() &&
                  gates.sizes() == at::IntArrayRef({frames, batch, 4 * hidden}) && gates.is_contiguous() &&
                  cell.sizes() == at::IntArrayRef({2, frames, batch, hidden}) && cell.is_contiguous(),
              "lstm_layer_backward: out, gates and cell must be lstm_layer's outputs for this x");
  const at::Tensor grad_out =
      grad_out_in.has_value() && grad_out_in->defined() ? grad_out_in->contiguous() : at::Tensor();
  auto dgates = at::empty({frames, batch, 4 * hidden}, x.options());
  if (frames > 0 && batch > 0) {
    const auto w = w_hh.contiguous();
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "lstm_layer_backward", [&] {
      backward_steps<scalar_t>(grad_out, w, gates, cell, dgates, reverse);
    });
  }
  const auto dg = dgates.reshape({frames * batch, 4 * hidden});
  const auto x2 = x.reshape({frames * batch, input});
  auto dw_ih = at::mm(dg.t(), x2);
  auto db = dg.sum(0);
  // dW_hh: each step's dgates times the h it read (the previous step's; none at the first step)
  at::Tensor dw_hh;
  if (frames > 1) {
    const auto later = reverse ? dgates.narrow(0, 0, frames - 1) : dgates.narrow(0, 1, frames - 1);
    const auto read = reverse ? out.narrow(0, 1, frames - 1) : out.narrow(0, 0, frames - 1);
    dw_hh = at::mm(later.reshape({-1, 4 * hidden}).t(), read.reshape({-1, hidden}));
  } else {
    dw_hh = at::zeros({4 * hidden, hidden}, x.options());
  }
  auto dx = input_grad ? at::mm(dg, w_ih).reshape({frames, batch, input}) : at::empty({0}, x.options());
  return {dx, dw_ih, dw_hh, db};
}

}  // namespace

TORCH_LIBRARY_IMPL(lightdvae, CPU, m) {
  m.impl("lstm_layer", &lstm_layer);
  m.impl("lstm_layer_backward", &lstm_layer_backward);
}

}  // namespace lightdvae
