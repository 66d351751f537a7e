// From tensors to the row loops' arguments (row_loops.h): where a posterior loop's sequential part runs, and the
// contiguous weight layouts the row code reads, kept alive for the call.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/ArrayRef.h>

#include <algorithm>
#include <vector>

#include "sampling/bptt.h"
#include "sampling/row_loops.h"
#include "sampling/small_batch.h"

namespace lightdvae::rows {

// Whether the CPU runs the row loops' code serially in place of its own loops (a switch for the tests: the CUDA
// kernels' code checked where no GPU is).  Process-wide, off by default; `lightdvae::_row_loops_on_cpu`.
bool on_cpu();

// Where the step-by-step part of a loop on `like` with these Linear stacks runs (row_loops.h's Path).
inline Path path(const at::Tensor& like, std::initializer_list<c10::ArrayRef<at::Tensor>> stacks) {
  if (!small::plain(like)) return Path::kNo;
  for (const auto& s : stacks) {
    if (s.size() / 2 > static_cast<size_t>(kMaxLayers)) return Path::kNo;
  }
#if defined(LIGHTDVAE_WITH_CUDA)
  if (like.is_cuda()) return Path::kCuda;
#endif
  return like.is_cpu() && on_cpu() ? Path::kSerial : Path::kNo;
}

// The tensors behind a row loop's pointers (contiguous copies where the layout differs), alive until it returns.
// On CUDA the launch is asynchronous: memory freed after it is reused by the caching allocator in stream order, after
// the kernel.
template <typename T>
class Hold {
 public:
  // An input, read only.
  const T* operator()(const at::Tensor& t) { return keep(t.contiguous()); }
  // An output or a workspace, written in place (contiguous by construction).
  T* out(const at::Tensor& t) {
    TORCH_INTERNAL_ASSERT(t.is_contiguous());
    return const_cast<T*>(keep(t));
  }
  // A Linear stack [w0, b0, ...] for the forward direction (W^T, bias) or the backward one (W).
  Stack<T> forward(c10::ArrayRef<at::Tensor> params) {
    Stack<T> s;
    for (size_t i = 0; i + 1 < params.size(); i += 2) {
      s.l[s.n++] = {keep(params[i].t().contiguous()), (*this)(params[i + 1]), static_cast<int>(params[i].size(1)),
                    static_cast<int>(params[i].size(0))};
    }
    return s;
  }
  Stack<T> backward(c10::ArrayRef<at::Tensor> params) {
    Stack<T> s;
    for (size_t i = 0; i + 1 < params.size(); i += 2) {
      s.l[s.n++] = {(*this)(params[i]), nullptr, static_cast<int>(params[i].size(1)),
                    static_cast<int>(params[i].size(0))};
    }
    return s;
  }
  // What every forward loop holds (LoopForward): sizes from z (frames, batch, z_dim), the noise (or none), `zeros`
  // zeros for the state before frame 0, the heads, the outputs z and stats.
  void outputs(LoopForward<T>& a, const at::Tensor& z, const at::Tensor& stats, const at::Tensor& eps,
               c10::ArrayRef<at::Tensor> heads_w, int64_t activation, int64_t zeros) {
    a.frames = z.size(0);
    a.batch = z.size(1);
    a.z_dim = static_cast<int>(z.size(2));
    a.activation = static_cast<int>(activation);
    a.eps = eps.defined() ? (*this)(eps) : nullptr;
    a.zeros = (*this)(at::zeros({zeros}, z.options()));
    a.heads = heads(heads_w);
    a.z = out(z);
    a.stats = out(stats);
  }
  // What every backward loop holds (LoopBackward) but its scratch: sizes from dz, the gradients of the draw and the
  // heads (half_noise undefined without noise), the heads' joint weight (2 z_dim, in).
  void gradients(LoopBackward<T>& a, const at::Tensor& dstats, const at::Tensor& dz, const at::Tensor& grad_mean,
                 const at::Tensor& grad_logvar, const at::Tensor& half_noise, const at::Tensor& heads_cat) {
    a.frames = dz.size(0);
    a.batch = dz.size(1);
    a.z_dim = static_cast<int>(dz.size(2));
    a.dstats = out(dstats);
    a.dz = out(dz);
    a.grad_mean = (*this)(grad_mean);
    a.grad_logvar = (*this)(grad_logvar);
    a.half_noise = half_noise.defined() ? (*this)(half_noise) : nullptr;
    a.heads_cat = (*this)(heads_cat);
  }
  // A scratch row of `width` elements per batch row.
  void scratch(LoopBackward<T>& a, int64_t width, const at::TensorOptions& options) {
    a.scratch_width = width;
    a.scratch = out(at::empty({a.batch * width}, options));
  }
  // The Gaussian heads [w_mean, b_mean, w_logvar, b_logvar] as one forward Linear hidden -> [mean | logvar].
  Lin<T> heads(c10::ArrayRef<at::Tensor> h) {
    const at::Tensor w = at::cat({h[0], h[2]}, 0);
    return {keep(w.t().contiguous()), keep(at::cat({h[1], h[3]}, 0)), static_cast<int>(w.size(1)),
            static_cast<int>(w.size(0))};
  }

 private:
  const T* keep(const at::Tensor& t) {
    tensors_.push_back(t);
    return tensors_.back().data_ptr<T>();
  }
  std::vector<at::Tensor> tensors_;
};

// The layers' regions of a workspace (contiguous views of one flat buffer).
template <typename T>
Regions<T> regions(const bptt::Regions& r) {
  Regions<T> out;
  for (size_t i = 0; i < r.size(); ++i) out.p[i] = r[i].data_ptr<T>();
  return out;
}

// The widest input or output of the stacks (at least `floor`): the rows' scratch width and the CUDA team's size.
inline int widest(std::initializer_list<c10::ArrayRef<at::Tensor>> stacks, int64_t floor) {
  int64_t w = floor;
  for (const auto& s : stacks) {
    for (size_t i = 0; i + 1 < s.size(); i += 2) w = std::max({w, s[i].size(0), s[i].size(1)});
  }
  return static_cast<int>(w);
}

}  // namespace lightdvae::rows
