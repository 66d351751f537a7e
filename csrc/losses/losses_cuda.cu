// CUDA kernels of the fused Itakura-Saito and Gaussian KL losses.
//
// One reduction kernel (grid-stride, 16-byte vector loads, float32 accumulation for half and
// bfloat16, warp-shuffle block sums into one partial per block, then a one-block finish: two
// launches, deterministic, no atomics), its twin that also writes the gradients (the forward of
// the *_with_grad ops, reduced), and one element-wise map kernel used by the unreduced forwards
// and by both backwards.  The per-element math is losses_math.h, shared with the CPU.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/full.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>

#include "cuda_utils.cuh"
#include "losses/losses.h"
#include "losses/losses_math.h"

namespace lightdvae {
namespace {

constexpr int kThreads = 256;
constexpr int kFinishThreads = 512;

template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

// Sum over the block; the result is valid in thread 0.
template <typename acc_t>
__device__ acc_t block_sum(acc_t v) {
  __shared__ acc_t warp_totals[32];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  v = warp_sum(v);
  if (lane == 0) warp_totals[warp] = v;
  __syncthreads();
  const int warps = (blockDim.x + 31) >> 5;
  v = threadIdx.x < warps ? warp_totals[lane] : acc_t(0);
  if (warp == 0) v = warp_sum(v);
  return v;
}

// Inputs of an element-wise term: K pointers, absent (nullptr) ones read as 0.
template <typename scalar_t, int K>
struct Inputs {
  const scalar_t* p[K];
};

template <typename acc_t, typename scalar_t, int K, int VEC>
__device__ __forceinline__ void load(const Inputs<scalar_t, K>& in, int64_t pack, acc_t (&x)[K][VEC]) {
#pragma unroll
  for (int k = 0; k < K; ++k) {
    if (in.p[k] != nullptr) {
      const Pack<scalar_t, VEC> v = reinterpret_cast<const Pack<scalar_t, VEC>*>(in.p[k])[pack];
#pragma unroll
      for (int j = 0; j < VEC; ++j) x[k][j] = static_cast<acc_t>(v.v[j]);
    } else {
#pragma unroll
      for (int j = 0; j < VEC; ++j) x[k][j] = acc_t(0);
    }
  }
}

// ---- the terms as K-input functors -------------------------------------------------------------

template <typename acc_t>
struct ISValue {
  static constexpr int K = 2, M = 1;
  ISTerm<acc_t> term;
  __device__ acc_t value(const acc_t* x) const { return term.value(x[0], x[1]); }
  __device__ void map(const acc_t* x, acc_t, acc_t* r) const { r[0] = value(x); }
};

template <typename acc_t>
struct ISGrad {
  static constexpr int K = 2, M = 1;
  ISTerm<acc_t> term;
  __device__ void map(const acc_t* x, acc_t g, acc_t* r) const { term.grad(g, x[0], x[1], r[0]); }
};

template <typename acc_t>
struct KLValue {
  static constexpr int K = 4, M = 1;
  KLTerm<acc_t> term;
  __device__ acc_t value(const acc_t* x) const { return term.value(x[0], x[1], x[2], x[3]); }
  __device__ void map(const acc_t* x, acc_t, acc_t* r) const { r[0] = value(x); }
};

template <typename acc_t>
struct KLGrad {
  static constexpr int K = 4, M = 4;
  KLTerm<acc_t> term;
  __device__ void map(const acc_t* x, acc_t g, acc_t* r) const {
    term.grad(g, x[0], x[1], x[2], x[3], r[0], r[1], r[2], r[3]);
  }
};

// The fused forward+backward: value_grad returns the value and writes the M gradients (scaled by g);
// map writes the value then the gradients (the unreduced output).
template <typename acc_t>
struct ISValueGrad {
  static constexpr int K = 2, M = 1;
  ISTerm<acc_t> term;
  __device__ acc_t value_grad(const acc_t* x, acc_t g, acc_t* r) const { return term.value_grad(g, x[0], x[1], r[0]); }
};

template <typename acc_t>
struct ISValueThenGrad {
  static constexpr int K = 2, M = 2;
  ISTerm<acc_t> term;
  __device__ void map(const acc_t* x, acc_t g, acc_t* r) const { r[0] = term.value_grad(g, x[0], x[1], r[1]); }
};

template <typename acc_t>
struct KLValueGrad {
  static constexpr int K = 4, M = 4;
  KLTerm<acc_t> term;
  __device__ acc_t value_grad(const acc_t* x, acc_t g, acc_t* r) const {
    return term.value_grad(g, x[0], x[1], x[2], x[3], r[0], r[1], r[2], r[3]);
  }
};

template <typename acc_t>
struct KLValueThenGrad {
  static constexpr int K = 4, M = 5;
  KLTerm<acc_t> term;
  __device__ void map(const acc_t* x, acc_t g, acc_t* r) const {
    r[0] = term.value_grad(g, x[0], x[1], x[2], x[3], r[1], r[2], r[3], r[4]);
  }
};

// ---- kernels -------------------------------------------------------------------------------

template <typename scalar_t, typename acc_t, typename Op, int VEC>
__global__ void __launch_bounds__(kThreads)
    sum_kernel(Op op, Inputs<scalar_t, Op::K> in, int64_t n, acc_t* __restrict__ partial) {
  acc_t acc = 0;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t packs = n / VEC;
  for (int64_t p = first; p < packs; p += stride) {
    acc_t x[Op::K][VEC];
    load(in, p, x);
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      acc_t e[Op::K];
#pragma unroll
      for (int k = 0; k < Op::K; ++k) e[k] = x[k][j];
      acc += op.value(e);
    }
  }
  for (int64_t i = packs * VEC + first; i < n; i += stride) {  // tail shorter than a pack
    acc_t x[Op::K][1];
    load<acc_t, scalar_t, Op::K, 1>(in, i, x);
    acc_t e[Op::K];
#pragma unroll
    for (int k = 0; k < Op::K; ++k) e[k] = x[k][0];
    acc += op.value(e);
  }
  acc = block_sum(acc);
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

// sum_kernel that also stores op.value_grad's gradients (scaled by `scale`) into `out` (null pointers skipped).
template <typename scalar_t, typename acc_t, typename Op, int VEC>
__global__ void __launch_bounds__(kThreads)
    sum_grad_kernel(Op op, Inputs<scalar_t, Op::K> in, acc_t scale, Inputs<scalar_t, Op::M> out, int64_t n,
                    acc_t* __restrict__ partial) {
  acc_t acc = 0;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t packs = n / VEC;
  auto run = [&](auto vec, int64_t index) {
    constexpr int V = decltype(vec)::value;
    acc_t x[Op::K][V];
    load(in, index, x);
    Pack<scalar_t, V> r[Op::M];
#pragma unroll
    for (int j = 0; j < V; ++j) {
      acc_t e[Op::K], res[Op::M];
#pragma unroll
      for (int k = 0; k < Op::K; ++k) e[k] = x[k][j];
      acc += op.value_grad(e, scale, res);
#pragma unroll
      for (int m = 0; m < Op::M; ++m) r[m].v[j] = static_cast<scalar_t>(res[m]);
    }
#pragma unroll
    for (int m = 0; m < Op::M; ++m) {
      if (out.p[m] != nullptr) reinterpret_cast<Pack<scalar_t, V>*>(const_cast<scalar_t*>(out.p[m]))[index] = r[m];
    }
  };
  for (int64_t p = first; p < packs; p += stride) run(std::integral_constant<int, VEC>{}, p);
  for (int64_t i = packs * VEC + first; i < n; i += stride) run(std::integral_constant<int, 1>{}, i);
  acc = block_sum(acc);
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kFinishThreads)
    finish_kernel(const acc_t* __restrict__ partial, int blocks, acc_t scale, scalar_t* __restrict__ out) {
  acc_t acc = 0;
  for (int i = threadIdx.x; i < blocks; i += blockDim.x) acc += partial[i];
  acc = block_sum(acc);
  if (threadIdx.x == 0) *out = static_cast<scalar_t>(acc * scale);
}

// out[m][i] = op.map(x_i, g_i) where g_i = grad[i] * scale (per element) or *grad * scale (scalar);
// outputs whose pointer is null are skipped.
template <typename scalar_t, typename acc_t, typename Op, int VEC, bool PerElementGrad>
__global__ void __launch_bounds__(kThreads)
    map_kernel(Op op, Inputs<scalar_t, Op::K> in, const scalar_t* __restrict__ grad, acc_t scale,
               Inputs<scalar_t, Op::M> out_const, int64_t n) {
  const acc_t g0 = (!PerElementGrad && grad != nullptr) ? static_cast<acc_t>(*grad) * scale : scale;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t packs = n / VEC;
  auto run = [&](auto vec, int64_t index) {
    constexpr int V = decltype(vec)::value;
    acc_t x[Op::K][V];
    load(in, index, x);
    Pack<scalar_t, V> g;
    if (PerElementGrad) g = reinterpret_cast<const Pack<scalar_t, V>*>(grad)[index];
    Pack<scalar_t, V> r[Op::M];
#pragma unroll
    for (int j = 0; j < V; ++j) {
      acc_t e[Op::K], res[Op::M];
#pragma unroll
      for (int k = 0; k < Op::K; ++k) e[k] = x[k][j];
      op.map(e, PerElementGrad ? static_cast<acc_t>(g.v[j]) * scale : g0, res);
#pragma unroll
      for (int m = 0; m < Op::M; ++m) r[m].v[j] = static_cast<scalar_t>(res[m]);
    }
#pragma unroll
    for (int m = 0; m < Op::M; ++m) {
      if (out_const.p[m] != nullptr) {
        reinterpret_cast<Pack<scalar_t, V>*>(const_cast<scalar_t*>(out_const.p[m]))[index] = r[m];
      }
    }
  };
  for (int64_t p = first; p < packs; p += stride) run(std::integral_constant<int, VEC>{}, p);
  for (int64_t i = packs * VEC + first; i < n; i += stride) run(std::integral_constant<int, 1>{}, i);
}

// ---- launch helpers ------------------------------------------------------------------------

int grid_for(int64_t work_items) {
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t wanted = (work_items + kThreads - 1) / kThreads;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(wanted, static_cast<int64_t>(sms) * 8)));
}

template <typename scalar_t, int K>
bool aligned16(const Inputs<scalar_t, K>& in) {
  for (int k = 0; k < K; ++k) {
    if (in.p[k] != nullptr && reinterpret_cast<uintptr_t>(in.p[k]) % 16 != 0) return false;
  }
  return true;
}

template <typename scalar_t, typename Op>
at::Tensor launch_sum(const Op& op, const Inputs<scalar_t, Op::K>& in, const at::Tensor& like, int64_t n,
                      int64_t reduction) {
  using acc_t = typename AccType<scalar_t>::type;
  constexpr int VEC = 16 / sizeof(scalar_t);
  at::Tensor out = at::empty({}, like.options());
  if (n == 0) {
    return out.fill_(reduction == kMean ? std::numeric_limits<double>::quiet_NaN() : 0.0);
  }
  const bool vec = aligned16(in);
  const int blocks = grid_for(vec ? (n + VEC - 1) / VEC : n);
  const at::Tensor partial = at::empty({blocks}, like.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
  const auto stream = at::cuda::getCurrentCUDAStream();
  if (vec) {
    sum_kernel<scalar_t, acc_t, Op, VEC><<<blocks, kThreads, 0, stream>>>(op, in, n, partial.mutable_data_ptr<acc_t>());
  } else {
    sum_kernel<scalar_t, acc_t, Op, 1><<<blocks, kThreads, 0, stream>>>(op, in, n, partial.mutable_data_ptr<acc_t>());
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const acc_t scale = reduction == kMean ? acc_t(1) / static_cast<acc_t>(n) : acc_t(1);
  finish_kernel<scalar_t, acc_t><<<1, kFinishThreads, 0, stream>>>(partial.const_data_ptr<acc_t>(), blocks, scale,
                                                                  out.mutable_data_ptr<scalar_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

// The reduced output of a fused forward+backward: like launch_sum, and op.value_grad's gradients (for an upstream
// gradient of 1: scaled by 1/n for a mean) written into `out`.
template <typename scalar_t, typename Op>
at::Tensor launch_sum_grad(const Op& op, const Inputs<scalar_t, Op::K>& in, const Inputs<scalar_t, Op::M>& out,
                           const at::Tensor& like, int64_t n, int64_t reduction) {
  using acc_t = typename AccType<scalar_t>::type;
  constexpr int VEC = 16 / sizeof(scalar_t);
  at::Tensor result = at::empty({}, like.options());
  if (n == 0) {
    return result.fill_(reduction == kMean ? std::numeric_limits<double>::quiet_NaN() : 0.0);
  }
  Inputs<scalar_t, Op::K + Op::M> all{};
  for (int k = 0; k < Op::K; ++k) all.p[k] = in.p[k];
  for (int m = 0; m < Op::M; ++m) all.p[Op::K + m] = out.p[m];
  const bool vec = aligned16(all);
  const int blocks = grid_for(vec ? (n + VEC - 1) / VEC : n);
  const at::Tensor partial = at::empty({blocks}, like.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
  const auto stream = at::cuda::getCurrentCUDAStream();
  const acc_t scale = reduction == kMean ? acc_t(1) / static_cast<acc_t>(n) : acc_t(1);
  acc_t* partial_ptr = partial.mutable_data_ptr<acc_t>();
  if (vec) {
    sum_grad_kernel<scalar_t, acc_t, Op, VEC><<<blocks, kThreads, 0, stream>>>(op, in, scale, out, n, partial_ptr);
  } else {
    sum_grad_kernel<scalar_t, acc_t, Op, 1><<<blocks, kThreads, 0, stream>>>(op, in, scale, out, n, partial_ptr);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  finish_kernel<scalar_t, acc_t><<<1, kFinishThreads, 0, stream>>>(partial.const_data_ptr<acc_t>(), blocks, scale,
                                                                  result.mutable_data_ptr<scalar_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return result;
}

// grad: per-element (same size as the inputs) when per_element, else a 0-dim device tensor.
template <typename scalar_t, typename Op>
void launch_map(const Op& op, const Inputs<scalar_t, Op::K>& in, const scalar_t* grad, bool per_element, double scale,
                const Inputs<scalar_t, Op::M>& out, int64_t n) {
  using acc_t = typename AccType<scalar_t>::type;
  constexpr int VEC = 16 / sizeof(scalar_t);
  if (n == 0) return;
  Inputs<scalar_t, Op::K + Op::M + 1> all{};
  for (int k = 0; k < Op::K; ++k) all.p[k] = in.p[k];
  for (int m = 0; m < Op::M; ++m) all.p[Op::K + m] = out.p[m];
  all.p[Op::K + Op::M] = per_element ? grad : nullptr;
  const bool vec = aligned16(all);
  const int blocks = grid_for(vec ? (n + VEC - 1) / VEC : n);
  const auto stream = at::cuda::getCurrentCUDAStream();
  const auto s = static_cast<acc_t>(scale);
#define LDV_LAUNCH_MAP(V, PER)                                                                          \
  map_kernel<scalar_t, acc_t, Op, V, PER><<<blocks, kThreads, 0, stream>>>(op, in, grad, s, out, n)
  if (vec && per_element) {
    LDV_LAUNCH_MAP(VEC, true);
  } else if (vec) {
    LDV_LAUNCH_MAP(VEC, false);
  } else if (per_element) {
    LDV_LAUNCH_MAP(1, true);
  } else {
    LDV_LAUNCH_MAP(1, false);
  }
#undef LDV_LAUNCH_MAP
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// The upstream gradient as a contiguous tensor of the inputs' dtype on their device.
at::Tensor upstream(const at::Tensor& grad, const at::Tensor& like) {
  return grad.to(like.device(), like.scalar_type()).contiguous();
}

at::Tensor contiguous_or_undefined(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->contiguous() : at::Tensor();
}

template <typename scalar_t>
const scalar_t* ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<scalar_t>() : nullptr;
}

}  // namespace

// ---- entry points --------------------------------------------------------------------------

at::Tensor is_divergence_cuda(const at::Tensor& power, const at::Tensor& logvar, double eps, int64_t reduction) {
  constexpr const char* op = "lightdvae::is_divergence";
  check_is_inputs(op, power, logvar, reduction, c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard guard(power.device());
  const at::Tensor s = power.contiguous(), lv = logvar.contiguous();
  const int64_t n = s.numel();
  at::Tensor result;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "is_divergence_cuda", [&] {
    using acc_t = typename AccType<scalar_t>::type;
    const ISValue<acc_t> fn{ISTerm<acc_t>{static_cast<acc_t>(eps)}};
    const Inputs<scalar_t, 2> in{{s.const_data_ptr<scalar_t>(), lv.const_data_ptr<scalar_t>()}};
    if (reduction == kNone) {
      result = at::empty_like(s);
      launch_map<scalar_t>(fn, in, nullptr, false, 0.0, Inputs<scalar_t, 1>{{result.mutable_data_ptr<scalar_t>()}}, n);
    } else {
      result = launch_sum<scalar_t>(fn, in, s, n, reduction);
    }
  });
  return result;
}

at::Tensor is_divergence_backward_cuda(const at::Tensor& grad, const at::Tensor& power, const at::Tensor& logvar,
                                       double eps, int64_t reduction) {
  constexpr const char* op = "lightdvae::is_divergence_backward";
  check_is_inputs(op, power, logvar, reduction, c10::DeviceType::CUDA);
  check_grad(op, grad, power, reduction);
  const c10::cuda::CUDAGuard guard(power.device());
  const at::Tensor s = power.contiguous(), lv = logvar.contiguous();
  const at::Tensor g = upstream(grad, s);
  const int64_t n = s.numel();
  at::Tensor grad_logvar = at::empty_like(s);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "is_divergence_backward_cuda", [&] {
    using acc_t = typename AccType<scalar_t>::type;
    const ISGrad<acc_t> fn{ISTerm<acc_t>{static_cast<acc_t>(eps)}};
    const Inputs<scalar_t, 2> in{{s.const_data_ptr<scalar_t>(), lv.const_data_ptr<scalar_t>()}};
    const double scale = reduction == kMean ? 1.0 / static_cast<double>(n) : 1.0;
    launch_map<scalar_t>(fn, in, g.const_data_ptr<scalar_t>(), reduction == kNone, scale,
                         Inputs<scalar_t, 1>{{grad_logvar.mutable_data_ptr<scalar_t>()}}, n);
  });
  return grad_logvar;
}

std::tuple<at::Tensor, at::Tensor> is_divergence_with_grad_cuda(const at::Tensor& power, const at::Tensor& logvar,
                                                                double eps, int64_t reduction) {
  constexpr const char* op = "lightdvae::is_divergence_with_grad";
  check_is_inputs(op, power, logvar, reduction, c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard guard(power.device());
  const at::Tensor s = power.contiguous(), lv = logvar.contiguous();
  const int64_t n = s.numel();
  at::Tensor result;
  at::Tensor grad_logvar = at::empty_like(s);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "is_divergence_with_grad_cuda", [&] {
    using acc_t = typename AccType<scalar_t>::type;
    const ISTerm<acc_t> term{static_cast<acc_t>(eps)};
    const Inputs<scalar_t, 2> in{{s.const_data_ptr<scalar_t>(), lv.const_data_ptr<scalar_t>()}};
    scalar_t* g = grad_logvar.mutable_data_ptr<scalar_t>();
    if (reduction == kNone) {
      result = at::empty_like(s);
      launch_map<scalar_t>(ISValueThenGrad<acc_t>{term}, in, nullptr, false, 1.0,
                           Inputs<scalar_t, 2>{{result.mutable_data_ptr<scalar_t>(), g}}, n);
    } else {
      result = launch_sum_grad<scalar_t>(ISValueGrad<acc_t>{term}, in, Inputs<scalar_t, 1>{{g}}, s, n, reduction);
    }
  });
  return {result, grad_logvar};
}

at::Tensor gaussian_kl_cuda(const at::Tensor& mu_q, const at::Tensor& logvar_q, const std::optional<at::Tensor>& mu_p,
                            const std::optional<at::Tensor>& logvar_p, int64_t reduction) {
  constexpr const char* op = "lightdvae::gaussian_kl";
  check_kl_inputs(op, mu_q, logvar_q, mu_p, logvar_p, reduction, c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard guard(mu_q.device());
  const at::Tensor mq = mu_q.contiguous(), lq = logvar_q.contiguous();
  const at::Tensor mp = contiguous_or_undefined(mu_p), lp = contiguous_or_undefined(logvar_p);
  const int64_t n = mq.numel();
  at::Tensor result;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, mq.scalar_type(), "gaussian_kl_cuda", [&] {
    using acc_t = typename AccType<scalar_t>::type;
    const KLValue<acc_t> fn{};
    const Inputs<scalar_t, 4> in{{mq.const_data_ptr<scalar_t>(), lq.const_data_ptr<scalar_t>(),
                                  ptr_or_null<scalar_t>(mp), ptr_or_null<scalar_t>(lp)}};
    if (reduction == kNone) {
      result = at::empty_like(mq);
      launch_map<scalar_t>(fn, in, nullptr, false, 0.0, Inputs<scalar_t, 1>{{result.mutable_data_ptr<scalar_t>()}}, n);
    } else {
      result = launch_sum<scalar_t>(fn, in, mq, n, reduction);
    }
  });
  return result;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gaussian_kl_backward_cuda(
    const at::Tensor& grad, const at::Tensor& mu_q, const at::Tensor& logvar_q, const std::optional<at::Tensor>& mu_p,
    const std::optional<at::Tensor>& logvar_p, int64_t reduction) {
  constexpr const char* op = "lightdvae::gaussian_kl_backward";
  check_kl_inputs(op, mu_q, logvar_q, mu_p, logvar_p, reduction, c10::DeviceType::CUDA);
  check_grad(op, grad, mu_q, reduction);
  const c10::cuda::CUDAGuard guard(mu_q.device());
  const at::Tensor mq = mu_q.contiguous(), lq = logvar_q.contiguous();
  const at::Tensor mp = contiguous_or_undefined(mu_p), lp = contiguous_or_undefined(logvar_p);
  const at::Tensor g = upstream(grad, mq);
  const int64_t n = mq.numel();
  at::Tensor g_mq = at::empty_like(mq), g_lq = at::empty_like(mq);
  at::Tensor g_mp = mp.defined() ? at::empty_like(mq) : mq.new_empty({0});
  at::Tensor g_lp = lp.defined() ? at::empty_like(mq) : mq.new_empty({0});
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, mq.scalar_type(), "gaussian_kl_backward_cuda", [&] {
    using acc_t = typename AccType<scalar_t>::type;
    const Inputs<scalar_t, 4> in{{mq.const_data_ptr<scalar_t>(), lq.const_data_ptr<scalar_t>(),
                                  ptr_or_null<scalar_t>(mp), ptr_or_null<scalar_t>(lp)}};
    const Inputs<scalar_t, 4> out{{g_mq.mutable_data_ptr<scalar_t>(), g_lq.mutable_data_ptr<scalar_t>(),
                                   mp.defined() ? g_mp.mutable_data_ptr<scalar_t>() : nullptr,
                                   lp.defined() ? g_lp.mutable_data_ptr<scalar_t>() : nullptr}};
    const double scale = reduction == kMean ? 1.0 / static_cast<double>(n) : 1.0;
    launch_map<scalar_t>(KLGrad<acc_t>{}, in, g.const_data_ptr<scalar_t>(), reduction == kNone, scale, out, n);
  });
  return {g_mq, g_lq, g_mp, g_lp};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> gaussian_kl_with_grad_cuda(
    const at::Tensor& mu_q, const at::Tensor& logvar_q, const std::optional<at::Tensor>& mu_p,
    const std::optional<at::Tensor>& logvar_p, int64_t reduction) {
  constexpr const char* op = "lightdvae::gaussian_kl_with_grad";
  check_kl_inputs(op, mu_q, logvar_q, mu_p, logvar_p, reduction, c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard guard(mu_q.device());
  const at::Tensor mq = mu_q.contiguous(), lq = logvar_q.contiguous();
  const at::Tensor mp = contiguous_or_undefined(mu_p), lp = contiguous_or_undefined(logvar_p);
  const int64_t n = mq.numel();
  at::Tensor result;
  at::Tensor g_mq = at::empty_like(mq), g_lq = at::empty_like(mq);
  at::Tensor g_mp = mp.defined() ? at::empty_like(mq) : mq.new_empty({0});
  at::Tensor g_lp = lp.defined() ? at::empty_like(mq) : mq.new_empty({0});
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, mq.scalar_type(), "gaussian_kl_with_grad_cuda", [&] {
    using acc_t = typename AccType<scalar_t>::type;
    const Inputs<scalar_t, 4> in{{mq.const_data_ptr<scalar_t>(), lq.const_data_ptr<scalar_t>(),
                                  ptr_or_null<scalar_t>(mp), ptr_or_null<scalar_t>(lp)}};
    scalar_t* o_mq = g_mq.mutable_data_ptr<scalar_t>();
    scalar_t* o_lq = g_lq.mutable_data_ptr<scalar_t>();
    scalar_t* o_mp = mp.defined() ? g_mp.mutable_data_ptr<scalar_t>() : nullptr;
    scalar_t* o_lp = lp.defined() ? g_lp.mutable_data_ptr<scalar_t>() : nullptr;
    if (reduction == kNone) {
      result = at::empty_like(mq);
      launch_map<scalar_t>(KLValueThenGrad<acc_t>{}, in, nullptr, false, 1.0,
                           Inputs<scalar_t, 5>{{result.mutable_data_ptr<scalar_t>(), o_mq, o_lq, o_mp, o_lp}}, n);
    } else {
      result = launch_sum_grad<scalar_t>(KLValueGrad<acc_t>{}, in, Inputs<scalar_t, 4>{{o_mq, o_lq, o_mp, o_lp}}, mq,
                                         n, reduction);
    }
  });
  return {result, g_mq, g_lq, g_mp, g_lp};
}

TORCH_LIBRARY_IMPL(lightdvae, CUDA, m) {
  m.impl("is_divergence", &is_divergence_cuda);
  m.impl("is_divergence_backward", &is_divergence_backward_cuda);
  m.impl("gaussian_kl", &gaussian_kl_cuda);
  m.impl("gaussian_kl_backward", &gaussian_kl_backward_cuda);
  m.impl("is_divergence_with_grad", &is_divergence_with_grad_cuda);
  m.impl("gaussian_kl_with_grad", &gaussian_kl_with_grad_cuda);
}

}  // namespace lightdvae
