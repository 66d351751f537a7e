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
// it records no autograd graph: lightdvae/ops/sampling_bptt.py registers the backward op as the forward
// op's autograd formula (the backward op itself has none: no double backward).
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

// One step of a Linear stack (activation after every layer) from layer `first` on, writing layer i's output into
// out[i][t]; returns the last output (x itself for an empty stack).
inline at::Tensor stack_forward(const std::vector<sampling::Linear>& layers, const Regions& out, int64_t t,
                                at::Tensor x, int64_t activation, size_t first = 0) {
  for (size_t i = first; i < layers.size(); ++i) {
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

// ---- the draw and the Gaussian heads, shared by the posterior loops

// z_t = mean_t + exp(logvar_t / 2) * eps_t written into z[t] (the mean without noise); stats[t] is [mean_t | logvar_t].
inline void draw_into(at::Tensor z_t, const at::Tensor& stats_t, const at::Tensor& eps, int64_t t, at::Tensor& scale) {
  const int64_t z_dim = z_t.size(1);
  const at::Tensor mean = stats_t.narrow(1, 0, z_dim);
  if (!eps.defined()) {
    z_t.copy_(mean);
    return;
  }
  at::mul_out(scale, stats_t.narrow(1, z_dim, z_dim), 0.5);
  scale.exp_();
  at::addcmul_out(z_t, mean, eps[t], scale);
}

// The Gaussian heads [w_mean, b_mean, w_logvar, b_logvar] as one Linear hidden -> [mean | logvar].
inline sampling::Linear joint_heads(at::TensorList heads) {
  return {at::cat({heads[0], heads[2]}, 0).t(), at::cat({heads[1], heads[3]}, 0)};
}

// Backward of the draw and of the heads at step t: from dz_t (the gradient of z_t, complete) and the output
// gradients, writes [dmean_t | dlogvar_t] into dstats[t] and returns the gradient of the heads' input.
// half_noise = exp(logvar / 2) * eps / 2 over all steps (undefined without noise, dlogvar then preset).
inline at::Tensor heads_backward(const at::Tensor& dstats, const at::Tensor& dz, const at::Tensor& grad_mean,
                          const at::Tensor& grad_logvar, const at::Tensor& half_noise, const at::Tensor& heads_cat,
                          int64_t t) {
  const int64_t z_dim = dz.size(2);
  const at::Tensor d = dstats[t];
  at::Tensor dmean = d.narrow(1, 0, z_dim);
  at::add_out(dmean, dz[t], grad_mean[t]);
  if (half_noise.defined()) {
    at::Tensor dlogvar = d.narrow(1, z_dim, z_dim);
    at::addcmul_out(dlogvar, grad_logvar[t], dz[t], half_noise[t]);
  }
  return at::mm(d, heads_cat);
}

// The output gradients of the heads, [dmean | dlogvar] per step, ready for the loop: dlogvar preset when there is no
// noise (then z = mean and dlogvar is the output gradient alone).
inline at::Tensor heads_grad_buffer(const at::Tensor& grad_logvar, bool noise) {
  const int64_t frames = grad_logvar.size(0), batch = grad_logvar.size(1), z_dim = grad_logvar.size(2);
  at::Tensor dstats = at::empty({frames, batch, 2 * z_dim}, grad_logvar.options());
  if (!noise) {
    dstats.narrow(2, z_dim, z_dim).copy_(grad_logvar);
  }
  return dstats;
}

// Gradients of [w_mean, b_mean, w_logvar, b_logvar] over all steps from dstats and the heads' input h.
inline std::vector<at::Tensor> heads_grads(const at::Tensor& dstats, const at::Tensor& h) {
  const int64_t z_dim = dstats.size(2) / 2;
  std::vector<at::Tensor> grads;
  linear_grads(dstats.narrow(2, 0, z_dim), h, grads);
  linear_grads(dstats.narrow(2, z_dim, z_dim), h, grads);
  return grads;
}

// (frames, batch, width) -> the same sequence delayed by one frame (frame 0 zero): the inputs z_{t-1} of the loop.
inline at::Tensor previous(const at::Tensor& z) {
  at::Tensor out = at::empty_like(z, at::MemoryFormat::Contiguous);
  out[0].zero_();
  if (z.size(0) > 1) {
    out.narrow(0, 1, z.size(0) - 1).copy_(z.narrow(0, 0, z.size(0) - 1));
  }
  return out;
}

}  // namespace lightdvae::bptt
