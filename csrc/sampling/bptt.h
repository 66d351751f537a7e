// Backward through time of the posterior sampling loops (issue 17): the pieces shared by the loops of
// posterior_bptt.cpp.
//
// The forward loop writes every per-step activation that the backward needs into one flat workspace
// (one (frames, batch, width) region per layer, so that a step's slice of a region is a contiguous
// (batch, width) matrix and a whole region a contiguous (frames * batch, width) one).  The backward
// loop then runs the recurrence step by step (the input gradients of every layer, which depend on the
// next step), storing each layer's pre-activation gradient in a region of its own; everything that
// does not depend on the recurrence is done once over all steps: the activation derivatives before
// the loop, and after it the weight and bias gradients, one GEMM and one sum per layer over all
// frames * batch rows (cuDNN's RNNs do the same).
//
// All of it is ATen calls on the device of the inputs, with the loops' arithmetic (sampling/cells.h);
// it records no autograd graph: lightdvae/ops/sampling.py registers the backward op as the forward
// op's autograd formula.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/ArrayRef.h>

#include <vector>

#include "sampling/cells.h"

namespace lightdvae::bptt {

using TensorList = c10::ArrayRef<at::Tensor>;

// Consecutive (frames, batch, width) regions of a flat buffer, in the order of `widths`.
class Regions {
 public:
  Regions(const at::Tensor& flat, int64_t offset, int64_t frames, int64_t batch, const std::vector<int64_t>& widths)
      : flat_(flat), begin_(offset) {
    int64_t at = offset;
    for (const int64_t w : widths) {
      parts_.push_back(flat.narrow(0, at, frames * batch * w).view({frames, batch, w}));
      at += frames * batch * w;
    }
    end_ = at;
  }
  const at::Tensor& operator[](size_t i) const { return parts_[i]; }
  size_t size() const { return parts_.size(); }
  int64_t end() const { return end_; }
  // Every region as one flat tensor (for element-wise work over all of them at once).
  at::Tensor all() const { return flat_.narrow(0, begin_, end_ - begin_); }

 private:
  at::Tensor flat_;
  int64_t begin_ = 0;
  int64_t end_ = 0;
  std::vector<at::Tensor> parts_;
};

// Output widths of a Linear stack [w0, b0, w1, b1, ...].
inline std::vector<int64_t> widths(TensorList params) {
  std::vector<int64_t> out;
  for (size_t i = 0; i + 1 < params.size(); i += 2) {
    out.push_back(params[i].size(0));
  }
  return out;
}

inline int64_t sum(const std::vector<int64_t>& v) {
  int64_t s = 0;
  for (const int64_t x : v) {
    s += x;
  }
  return s;
}

inline void activate_(const at::Tensor& y, int64_t activation) {
  if (activation == sampling::kTanh) {
    y.tanh_();
  } else {
    y.relu_();
  }
}

// The derivative of the activation from its output y: 1 - y^2 (tanh), y > 0 (relu; 0 at 0, as ATen's).
inline at::Tensor activation_derivative(const at::Tensor& y, int64_t activation) {
  if (activation == sampling::kTanh) {
    return at::mul(y, y).neg_().add_(1);
  }
  return at::gt(y, 0).to(y.scalar_type());
}

// One step of a Linear stack (activation after every layer), writing layer i's output into out[i][t];
// returns the last output (x itself for an empty stack).
inline at::Tensor stack_forward(const std::vector<sampling::Linear>& layers, const Regions& out, int64_t t,
                                at::Tensor x, int64_t activation) {
  for (size_t i = 0; i < layers.size(); ++i) {
    at::Tensor y = out[i][t];
    at::addmm_out(y, layers[i].b, x, layers[i].wt);
    activate_(y, activation);
    x = y;
  }
  return x;
}

// One backward step of a Linear stack: dy is the gradient of the last layer's output at step t.  Writes
// each layer's pre-activation gradient dy * act'(.) into dpre[i][t] (dact holds act' of every step) and
// returns dpre[0][t], whose product with w0 is the gradient of the stack's input (left to the caller,
// who knows where it goes); an empty stack returns dy.
inline at::Tensor stack_backward(TensorList params, const Regions& dact, const Regions& dpre, int64_t t,
                                 at::Tensor dy) {
  for (size_t i = dpre.size(); i-- > 0;) {
    at::Tensor d = dpre[i][t];
    at::mul_out(d, dy, dact[i][t]);
    dy = i > 0 ? at::mm(d, params[2 * i]) : d;
  }
  return dy;
}

// (frames, batch, width) -> (frames * batch, width).
inline at::Tensor rows(const at::Tensor& t) { return t.reshape({-1, t.size(-1)}); }

// Weight and bias gradients of one Linear layer over all steps: dW = dpre^T x, db = sum of dpre's rows.
inline void linear_grads(const at::Tensor& dpre, const at::Tensor& x, std::vector<at::Tensor>& out) {
  out.push_back(at::mm(rows(dpre).t(), rows(x)));
  out.push_back(rows(dpre).sum(0));
}

// Gradients of every weight and bias of a Linear stack whose layer 0 read `x0` (frames, batch, in) and
// layer i > 0 layer i - 1's output (outputs[i - 1]); [dw0, db0, dw1, db1, ...].
inline std::vector<at::Tensor> stack_grads(const Regions& dpre, const Regions& outputs, const at::Tensor& x0) {
  std::vector<at::Tensor> grads;
  for (size_t i = 0; i < dpre.size(); ++i) {
    linear_grads(dpre[i], i == 0 ? x0 : outputs[i - 1], grads);
  }
  return grads;
}

}  // namespace lightdvae::bptt
