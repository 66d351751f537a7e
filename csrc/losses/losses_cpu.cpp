// CPU kernels of the fused Itakura-Saito and Gaussian KL losses: the drivers (checks, allocation,
// the parallel loop over blocks) around the block functions of the instruction set in use (loss_isa.h).
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>

#include "losses/loss_isa.h"
#include "losses/loss_kernels_cpu.h"
#include "losses/losses.h"
#include "losses/losses_math.h"

namespace lightdvae {
namespace {

// The result of a reduced loss: a 0-dim tensor of the inputs' dtype.
at::Tensor reduced_result(const at::Tensor& like, double total, int64_t n, int64_t reduction) {
  const double value = reduction == kMean ? total / static_cast<double>(n) : total;
  return at::empty({}, like.options()).fill_(value);
}

// Calls f(std::bool_constant<has_mu_p>{}, std::bool_constant<has_logvar_p>{}).
template <typename F>
void with_kl_flags(bool has_mu_p, bool has_logvar_p, F&& f) {
  if (has_mu_p && has_logvar_p) {
    f(std::true_type{}, std::true_type{});
  } else if (has_mu_p) {
    f(std::true_type{}, std::false_type{});
  } else if (has_logvar_p) {
    f(std::false_type{}, std::true_type{});
  } else {
    f(std::false_type{}, std::false_type{});
  }
}

at::Tensor contiguous_or_undefined(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->contiguous() : at::Tensor();
}

// The upstream gradient of a reduced loss, divided by n for a mean.
double upstream_scalar(const at::Tensor& grad, int64_t n, int64_t reduction) {
  const double g = grad.to(at::kDouble).item<double>();
  return reduction == kMean ? g / static_cast<double>(n) : g;
}

template <typename scalar_t>
const scalar_t* ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<scalar_t>() : nullptr;
}

}  // namespace

at::Tensor is_divergence_cpu(const at::Tensor& power, const at::Tensor& logvar, double eps, int64_t reduction) {
  constexpr const char* op = "lightdvae::is_divergence";
  check_is_inputs(op, power, logvar, reduction, c10::DeviceType::CPU);
  const at::Tensor s = power.contiguous();
  const at::Tensor lv = logvar.contiguous();
  const int64_t n = s.numel();
  at::Tensor result;
  AT_DISPATCH_FLOATING_TYPES(s.scalar_type(), "is_divergence_cpu", [&] {
    const ISTerm<scalar_t> term{static_cast<scalar_t>(eps)};
    const auto& k = cpu::is_kernels<scalar_t>(cpu::current_isa());
    const scalar_t* sp = s.const_data_ptr<scalar_t>();
    const scalar_t* lvp = lv.const_data_ptr<scalar_t>();
    if (reduction == kNone) {
      result = at::empty_like(s);
      scalar_t* out = result.mutable_data_ptr<scalar_t>();
      cpu::chunked_map(n, [&](int64_t b, int64_t e) { k.value(term, sp, lvp, out, b, e); });
    } else {
      const double total = cpu::chunked_sum(n, [&](int64_t b, int64_t e) { return k.sum(term, sp, lvp, b, e); });
      result = reduced_result(s, total, n, reduction);
    }
  });
  return result;
}

at::Tensor is_divergence_backward_cpu(const at::Tensor& grad, const at::Tensor& power, const at::Tensor& logvar,
                                      double eps, int64_t reduction) {
  constexpr const char* op = "lightdvae::is_divergence_backward";
  check_is_inputs(op, power, logvar, reduction, c10::DeviceType::CPU);
  check_grad(op, grad, power, reduction);
  const at::Tensor s = power.contiguous();
  const at::Tensor lv = logvar.contiguous();
  const int64_t n = s.numel();
  at::Tensor grad_logvar = at::empty_like(s);
  const at::Tensor g = reduction == kNone ? grad.to(s.scalar_type()).contiguous() : at::Tensor();
  const double scale = reduction == kNone ? 1.0 : upstream_scalar(grad, n, reduction);
  AT_DISPATCH_FLOATING_TYPES(s.scalar_type(), "is_divergence_backward_cpu", [&] {
    const ISTerm<scalar_t> term{static_cast<scalar_t>(eps)};
    const auto& k = cpu::is_kernels<scalar_t>(cpu::current_isa());
    const scalar_t* sp = s.const_data_ptr<scalar_t>();
    const scalar_t* lvp = lv.const_data_ptr<scalar_t>();
    const scalar_t* gp = g.defined() ? g.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* out = grad_logvar.mutable_data_ptr<scalar_t>();
    const auto sc = static_cast<scalar_t>(scale);
    cpu::chunked_map(n, [&](int64_t b, int64_t e) { k.grad(term, sp, lvp, gp, sc, out, b, e); });
  });
  return grad_logvar;
}

std::tuple<at::Tensor, at::Tensor> is_divergence_with_grad_cpu(const at::Tensor& power, const at::Tensor& logvar,
                                                               double eps, int64_t reduction) {
  constexpr const char* op = "lightdvae::is_divergence_with_grad";
  check_is_inputs(op, power, logvar, reduction, c10::DeviceType::CPU);
  const at::Tensor s = power.contiguous();
  const at::Tensor lv = logvar.contiguous();
  const int64_t n = s.numel();
  at::Tensor result;
  at::Tensor grad_logvar = at::empty_like(s);
  const double scale = reduction == kMean ? 1.0 / static_cast<double>(std::max<int64_t>(n, 1)) : 1.0;
  AT_DISPATCH_FLOATING_TYPES(s.scalar_type(), "is_divergence_with_grad_cpu", [&] {
    const ISTerm<scalar_t> term{static_cast<scalar_t>(eps)};
    const auto& k = cpu::is_kernels<scalar_t>(cpu::current_isa());
    const scalar_t* sp = s.const_data_ptr<scalar_t>();
    const scalar_t* lvp = lv.const_data_ptr<scalar_t>();
    scalar_t* gp = grad_logvar.mutable_data_ptr<scalar_t>();
    const auto sc = static_cast<scalar_t>(scale);
    if (reduction == kNone) {
      result = at::empty_like(s);
      scalar_t* out = result.mutable_data_ptr<scalar_t>();
      cpu::chunked_map(n, [&](int64_t b, int64_t e) { k.fused(term, sp, lvp, sc, out, gp, b, e); });
    } else {
      const double total =
          cpu::chunked_sum(n, [&](int64_t b, int64_t e) { return k.fused(term, sp, lvp, sc, nullptr, gp, b, e); });
      result = reduced_result(s, total, n, reduction);
    }
  });
  return {result, grad_logvar};
}

at::Tensor gaussian_kl_cpu(const at::Tensor& mu_q, const at::Tensor& logvar_q, const std::optional<at::Tensor>& mu_p,
                           const std::optional<at::Tensor>& logvar_p, int64_t reduction) {
  constexpr const char* op = "lightdvae::gaussian_kl";
  check_kl_inputs(op, mu_q, logvar_q, mu_p, logvar_p, reduction, c10::DeviceType::CPU);
  const at::Tensor mq = mu_q.contiguous(), lq = logvar_q.contiguous();
  const at::Tensor mp = contiguous_or_undefined(mu_p), lp = contiguous_or_undefined(logvar_p);
  const int64_t n = mq.numel();
  at::Tensor result;
  AT_DISPATCH_FLOATING_TYPES(mq.scalar_type(), "gaussian_kl_cpu", [&] {
    const scalar_t* mqp = mq.const_data_ptr<scalar_t>();
    const scalar_t* lqp = lq.const_data_ptr<scalar_t>();
    const scalar_t* mpp = ptr_or_null<scalar_t>(mp);
    const scalar_t* lpp = ptr_or_null<scalar_t>(lp);
    with_kl_flags(mp.defined(), lp.defined(), [&](auto has_mp, auto has_lp) {
      const auto& k = cpu::kl_kernels<scalar_t, decltype(has_mp)::value, decltype(has_lp)::value>(cpu::current_isa());
      if (reduction == kNone) {
        result = at::empty_like(mq);
        scalar_t* out = result.mutable_data_ptr<scalar_t>();
        cpu::chunked_map(n, [&](int64_t b, int64_t e) { k.value(mqp, lqp, mpp, lpp, out, b, e); });
      } else {
        const double total = cpu::chunked_sum(n, [&](int64_t b, int64_t e) { return k.sum(mqp, lqp, mpp, lpp, b, e); });
        result = reduced_result(mq, total, n, reduction);
      }
    });
  });
  return result;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gaussian_kl_backward_cpu(
    const at::Tensor& grad, const at::Tensor& mu_q, const at::Tensor& logvar_q, const std::optional<at::Tensor>& mu_p,
    const std::optional<at::Tensor>& logvar_p, int64_t reduction) {
  constexpr const char* op = "lightdvae::gaussian_kl_backward";
  check_kl_inputs(op, mu_q, logvar_q, mu_p, logvar_p, reduction, c10::DeviceType::CPU);
  check_grad(op, grad, mu_q, reduction);
  const at::Tensor mq = mu_q.contiguous(), lq = logvar_q.contiguous();
  const at::Tensor mp = contiguous_or_undefined(mu_p), lp = contiguous_or_undefined(logvar_p);
  const int64_t n = mq.numel();
  at::Tensor g_mq = at::empty_like(mq), g_lq = at::empty_like(mq);
  at::Tensor g_mp = mp.defined() ? at::empty_like(mq) : mq.new_empty({0});
  at::Tensor g_lp = lp.defined() ? at::empty_like(mq) : mq.new_empty({0});
  const at::Tensor g = reduction == kNone ? grad.to(mq.scalar_type()).contiguous() : at::Tensor();
  const double scale = reduction == kNone ? 1.0 : upstream_scalar(grad, n, reduction);
  AT_DISPATCH_FLOATING_TYPES(mq.scalar_type(), "gaussian_kl_backward_cpu", [&] {
    const scalar_t* mqp = mq.const_data_ptr<scalar_t>();
    const scalar_t* lqp = lq.const_data_ptr<scalar_t>();
    const scalar_t* mpp = ptr_or_null<scalar_t>(mp);
    const scalar_t* lpp = ptr_or_null<scalar_t>(lp);
    const scalar_t* gp = g.defined() ? g.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* o_mq = g_mq.mutable_data_ptr<scalar_t>();
    scalar_t* o_lq = g_lq.mutable_data_ptr<scalar_t>();
    scalar_t* o_mp = mp.defined() ? g_mp.mutable_data_ptr<scalar_t>() : nullptr;
    scalar_t* o_lp = lp.defined() ? g_lp.mutable_data_ptr<scalar_t>() : nullptr;
    const auto sc = static_cast<scalar_t>(scale);
    with_kl_flags(mp.defined(), lp.defined(), [&](auto has_mp, auto has_lp) {
      const auto& k = cpu::kl_kernels<scalar_t, decltype(has_mp)::value, decltype(has_lp)::value>(cpu::current_isa());
      const auto fn = gp != nullptr ? k.grad_per_element : k.grad_scalar;
      cpu::chunked_map(n, [&](int64_t b, int64_t e) { fn(mqp, lqp, mpp, lpp, gp, sc, o_mq, o_lq, o_mp, o_lp, b, e); });
    });
  });
  return {g_mq, g_lq, g_mp, g_lp};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> gaussian_kl_with_grad_cpu(
    const at::Tensor& mu_q, const at::Tensor& logvar_q, const std::optional<at::Tensor>& mu_p,
    const std::optional<at::Tensor>& logvar_p, int64_t reduction) {
  constexpr const char* op = "lightdvae::gaussian_kl_with_grad";
  check_kl_inputs(op, mu_q, logvar_q, mu_p, logvar_p, reduction, c10::DeviceType::CPU);
  const at::Tensor mq = mu_q.contiguous(), lq = logvar_q.contiguous();
  const at::Tensor mp = contiguous_or_undefined(mu_p), lp = contiguous_or_undefined(logvar_p);
  const int64_t n = mq.numel();
  at::Tensor result;
  at::Tensor g_mq = at::empty_like(mq), g_lq = at::empty_like(mq);
  at::Tensor g_mp = mp.defined() ? at::empty_like(mq) : mq.new_empty({0});
  at::Tensor g_lp = lp.defined() ? at::empty_like(mq) : mq.new_empty({0});
  const double scale = reduction == kMean ? 1.0 / static_cast<double>(std::max<int64_t>(n, 1)) : 1.0;
  AT_DISPATCH_FLOATING_TYPES(mq.scalar_type(), "gaussian_kl_with_grad_cpu", [&] {
    const scalar_t* mqp = mq.const_data_ptr<scalar_t>();
    const scalar_t* lqp = lq.const_data_ptr<scalar_t>();
    const scalar_t* mpp = ptr_or_null<scalar_t>(mp);
    const scalar_t* lpp = ptr_or_null<scalar_t>(lp);
    scalar_t* o_mq = g_mq.mutable_data_ptr<scalar_t>();
    scalar_t* o_lq = g_lq.mutable_data_ptr<scalar_t>();
    scalar_t* o_mp = mp.defined() ? g_mp.mutable_data_ptr<scalar_t>() : nullptr;
    scalar_t* o_lp = lp.defined() ? g_lp.mutable_data_ptr<scalar_t>() : nullptr;
    const auto sc = static_cast<scalar_t>(scale);
    with_kl_flags(mp.defined(), lp.defined(), [&](auto has_mp, auto has_lp) {
      const auto& k = cpu::kl_kernels<scalar_t, decltype(has_mp)::value, decltype(has_lp)::value>(cpu::current_isa());
      if (reduction == kNone) {
        result = at::empty_like(mq);
        scalar_t* out = result.mutable_data_ptr<scalar_t>();
        cpu::chunked_map(n, [&](int64_t b, int64_t e) {
          k.fused(mqp, lqp, mpp, lpp, sc, out, o_mq, o_lq, o_mp, o_lp, b, e);
        });
      } else {
        const double total = cpu::chunked_sum(n, [&](int64_t b, int64_t e) {
          return k.fused(mqp, lqp, mpp, lpp, sc, nullptr, o_mq, o_lq, o_mp, o_lp, b, e);
        });
        result = reduced_result(mq, total, n, reduction);
      }
    });
  });
  return {result, g_mq, g_lq, g_mp, g_lp};
}

TORCH_LIBRARY_IMPL(lightdvae, CPU, m) {
  m.impl("is_divergence", &is_divergence_cpu);
  m.impl("is_divergence_backward", &is_divergence_backward_cpu);
  m.impl("gaussian_kl", &gaussian_kl_cpu);
  m.impl("gaussian_kl_backward", &gaussian_kl_backward_cpu);
  m.impl("is_divergence_with_grad", &is_divergence_with_grad_cpu);
  m.impl("gaussian_kl_with_grad", &gaussian_kl_with_grad_cpu);
}

}  // namespace lightdvae
