// The posterior loops at small batch on raw pointers (issue 16: enhancement runs one utterance at a time).
//
// A step of a posterior loop at batch 1 is a few thousand multiply-adds: well under a microsecond of arithmetic,
// against 2-10 us of dispatch for each of the ten-odd ATen calls (and the tensor views) the step makes.  Below
// kMaxBatch rows the loops of posterior_bptt.cpp and rvae_bptt.cpp run their per-step work here instead: the same
// arithmetic in the same order of operations, on the same workspace (so a forward and a backward of either path
// fit together), with every product an accumulation loop over contiguous rows that the compiler vectorises.  What
// is batched over all steps (the input projections, the activation derivatives, the weight gradients) stays ATen's.
// Results are those of the ATen loop within float rounding (tests/test_ops_sampling_bptt.py runs both paths, at
// batch 1 and 17, against a float64 reference).
#pragma once

#include <ATen/ATen.h>
#include <c10/core/impl/TorchDispatchModeTLS.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "sampling/bptt.h"
#include "small_gemm.h"
#include "sampling/cells.h"

namespace lightdvae::small {

// The largest batch that takes the raw path.  Measured on DKF's loop (157 frames, forward + backward, one thread):
// 2.7 ms at batch 1 and 6.9 ms at batch 4 here, against about 10 ms for the ATen loop at any batch up to 16 (its
// cost is dispatch); the raw steps grow by a row's arithmetic per row and pass the ATen loop at batch 6 to 8.
constexpr int64_t kMaxBatch = 4;

// Whether raw pointers into `like` (a loop's first input) may be taken: float32 or float64, a real tensor (no
// dispatch mode, no Python or functionalisation wrapper).  Also the condition of the row loops (row_loops.h).
inline bool plain(const at::Tensor& like) {
  if (c10::impl::dispatch_mode_enabled()) {
    return false;
  }
  const auto traced = c10::python_ks | c10::DispatchKeySet(c10::DispatchKey::Functionalize);
  return !like.key_set().has_any(traced) &&
         (like.scalar_type() == at::kFloat || like.scalar_type() == at::kDouble);
}

// Whether a loop on `like` (its first input) with `batch` rows runs here: CPU, at most kMaxBatch rows, plain.
inline bool eligible(const at::Tensor& like, int64_t batch) {
  return batch >= 1 && batch <= kMaxBatch && like.is_cpu() && plain(like);
}

// y (rows, n) += x (rows, k) . w, w a (k, n) block with row stride ldw (small_gemm.h: each output sums its terms in
// order, so the result does not depend on the ISA).
template <typename T>
inline void mm_acc(T* y, const T* x, const T* w, int64_t rows, int64_t k, int64_t n, int64_t ldw) {
  small_gemm::rows_times(y, n, x, k, w, ldw, rows, k, n);
}

// y (rows, n) = bias broadcast over the rows.
template <typename T>
inline void fill_rows(T* y, const T* bias, int64_t rows, int64_t n) {
  for (int64_t r = 0; r < rows; ++r) {
    std::copy(bias, bias + n, y + r * n);
  }
}

template <typename T>
inline void activate(T* y, int64_t n, int64_t activation) {
  if (activation == sampling::kTanh) {
    for (int64_t i = 0; i < n; ++i) {
      y[i] = std::tanh(y[i]);
    }
  } else {
    for (int64_t i = 0; i < n; ++i) {
      y[i] = y[i] > T(0) ? y[i] : T(0);  // relu; NaN stays NaN as in ATen (NaN > 0 is false: NaN < 0 too)
    }
  }
}

template <typename T>
inline T sigmoid(T x) {
  return T(1) / (T(1) + std::exp(-x));
}

// ATen's LSTMCell after its products, for `rows` rows: gates (rows, 4H) = [i, f, g, o] pre-activation, activated in
// place; c = f * c_prev + i * g (c may be c_prev itself), tanh_c = tanh(c) (unless null), h = o * tanh(c).
template <typename T>
inline void lstm_cell(T* gates, const T* c_prev, T* c, T* tanh_c, T* h, int64_t rows, int64_t hidden) {
  for (int64_t b = 0; b < rows; ++b) {
    T* g = gates + b * 4 * hidden;
    for (int64_t j = 0; j < 2 * hidden; ++j) g[j] = sigmoid(g[j]);
    for (int64_t j = 2 * hidden; j < 3 * hidden; ++j) g[j] = std::tanh(g[j]);
    for (int64_t j = 3 * hidden; j < 4 * hidden; ++j) g[j] = sigmoid(g[j]);
    for (int64_t j = 0; j < hidden; ++j) {
      const int64_t r = b * hidden + j;
      c[r] = g[hidden + j] * c_prev[r] + g[j] * g[2 * hidden + j];
      const T tc = std::tanh(c[r]);
      if (tanh_c != nullptr) tanh_c[r] = tc;
      h[r] = g[3 * hidden + j] * tc;
    }
  }
}

inline at::Tensor contiguous_t(const at::Tensor& w) { return w.t().contiguous(); }

// A Linear layer for the forward direction: W^T as a contiguous (in, out) copy and the bias.
template <typename T>
struct Layer {
  at::Tensor wt_store, b_store;
  const T* wt = nullptr;
  const T* b = nullptr;
  int64_t in = 0, out = 0;
  Layer(const at::Tensor& weight, const at::Tensor& bias)
      : wt_store(contiguous_t(weight)), b_store(bias.contiguous()), in(weight.size(1)), out(weight.size(0)) {
    wt = wt_store.data_ptr<T>();
    b = b_store.data_ptr<T>();
  }
  // y (rows, out) = x (rows, in) W^T + b
  void operator()(T* y, const T* x, int64_t rows) const {
    fill_rows(y, b, rows, out);
    mm_acc(y, x, wt, rows, in, out, out);
  }
};

template <typename T>
std::vector<Layer<T>> layers(at::TensorList params) {
  std::vector<Layer<T>> out;
  for (size_t i = 0; i + 1 < params.size(); i += 2) {
    out.emplace_back(params[i], params[i + 1]);
  }
  return out;
}

// The weights [w0, b0, w1, b1, ...] of a stack as contiguous (out, in) matrices, for input gradients dx = dy W.
inline std::vector<at::Tensor> weights(at::TensorList params) {
  std::vector<at::Tensor> out;
  for (size_t i = 0; i + 1 < params.size(); i += 2) {
    out.push_back(params[i].contiguous());
  }
  return out;
}

// Row t of region i of a workspace: a (batch, width) matrix.
template <typename T>
inline T* at_step(const bptt::Regions& r, size_t i, int64_t t) {
  return r[i].data_ptr<T>() + t * r[i].stride(0);
}

// One step of a Linear stack from layer `first` on (bptt::stack_forward): layer i's output into out[i] at t; returns
// the last output (x itself for an empty stack).
template <typename T>
const T* stack_forward(const std::vector<Layer<T>>& stack, const bptt::Regions& out, int64_t t, const T* x,
                       int64_t rows, int64_t activation, size_t first = 0) {
  for (size_t i = first; i < stack.size(); ++i) {
    T* y = at_step<T>(out, i, t);
    stack[i](y, x, rows);
    activate(y, rows * stack[i].out, activation);
    x = y;
  }
  return x;
}

// One backward step of a Linear stack (bptt::stack_backward): dpre[i] at t = dy * dact[i] at t, from the last layer
// down; returns dpre[0] at t (dy itself for an empty stack).  `scratch` holds rows * the widest layer.
template <typename T>
const T* stack_backward(const std::vector<at::Tensor>& w, const bptt::Regions& dact, const bptt::Regions& dpre,
                        int64_t t, const T* dy, int64_t rows, std::vector<T>& scratch) {
  for (size_t i = dpre.size(); i-- > 0;) {
    T* d = at_step<T>(dpre, i, t);
    const T* a = at_step<T>(dact, i, t);
    const int64_t n = rows * dpre[i].size(2);
    for (int64_t j = 0; j < n; ++j) {
      d[j] = dy[j] * a[j];
    }
    if (i == 0) {
      return d;
    }
    const int64_t in = w[i].size(1), out = w[i].size(0);
    std::fill(scratch.begin(), scratch.begin() + rows * in, T(0));
    mm_acc(scratch.data(), d, w[i].data_ptr<T>(), rows, out, in, in);
    dy = scratch.data();
  }
  return dy;
}

// z_t = mean_t + exp(logvar_t / 2) * eps_t (the mean without noise) from stats_t = [mean | logvar] (bptt::draw_into).
template <typename T>
inline void draw(T* z, const T* stats, const T* eps, int64_t rows, int64_t z_dim) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* mean = stats + r * 2 * z_dim;
    const T* logvar = mean + z_dim;
    for (int64_t k = 0; k < z_dim; ++k) {
      z[r * z_dim + k] = eps ? mean[k] + eps[r * z_dim + k] * std::exp(logvar[k] * T(0.5)) : mean[k];
    }
  }
}

// The backward of the draw and the heads at one step (bptt::heads_backward): writes [dmean | dlogvar] into dstats_t
// and accumulates dstats_t . w (w: (2 z_dim, n) with row stride ldw) into dx (rows, n) unless dx is null.  dlogvar
// is preset when half_noise is null.
template <typename T>
inline void heads_backward(T* dstats_t, const T* dz_t, const T* grad_mean_t, const T* grad_logvar_t,
                           const T* half_noise_t, const T* w, int64_t n, int64_t ldw, T* dx, int64_t rows,
                           int64_t z_dim) {
  for (int64_t r = 0; r < rows; ++r) {
    T* d = dstats_t + r * 2 * z_dim;
    for (int64_t k = 0; k < z_dim; ++k) {
      const int64_t j = r * z_dim + k;
      d[k] = dz_t[j] + grad_mean_t[j];
      if (half_noise_t) {
        d[z_dim + k] = grad_logvar_t[j] + dz_t[j] * half_noise_t[j];
      }
    }
  }
  if (dx) {
    mm_acc(dx, dstats_t, w, rows, 2 * z_dim, n, ldw);
  }
}

}  // namespace lightdvae::small
