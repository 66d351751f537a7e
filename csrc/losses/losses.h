// Entry points and input checks of the fused loss ops (schemas in csrc/lightdvae.cpp).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <tuple>

namespace lightdvae {

// Checks shared by the CPU and CUDA entry points; every message names the op and the argument.
void check_reduction(const char* op, int64_t reduction);
void check_same_as(const char* op, const at::Tensor& ref, const char* ref_name, const at::Tensor& t,
                   const char* name);
void check_floating(const char* op, const at::Tensor& t, const char* name, bool allow_half);
// The gradient of a reduced output is a 0-dim tensor; of an unreduced one, shaped like the input.
void check_grad(const char* op, const at::Tensor& grad, const at::Tensor& input, int64_t reduction);
// Every check of an entry point's inputs at once, for the kernel of `device` (half precision on CUDA only): the
// reduction code, the dtype, the shapes, dtypes and device of the others against the first input's.
void check_is_inputs(const char* op, const at::Tensor& power, const at::Tensor& logvar, int64_t reduction,
                     c10::DeviceType device);
void check_kl_inputs(const char* op, const at::Tensor& mu_q, const at::Tensor& logvar_q,
                     const std::optional<at::Tensor>& mu_p, const std::optional<at::Tensor>& logvar_p,
                     int64_t reduction, c10::DeviceType device);

at::Tensor is_divergence_cpu(const at::Tensor& power, const at::Tensor& logvar, double eps, int64_t reduction);
at::Tensor is_divergence_backward_cpu(const at::Tensor& grad, const at::Tensor& power, const at::Tensor& logvar,
                                      double eps, int64_t reduction);
std::tuple<at::Tensor, at::Tensor> is_divergence_with_grad_cpu(const at::Tensor& power, const at::Tensor& logvar,
                                                               double eps, int64_t reduction);
at::Tensor gaussian_kl_cpu(const at::Tensor& mu_q, const at::Tensor& logvar_q, const std::optional<at::Tensor>& mu_p,
                           const std::optional<at::Tensor>& logvar_p, int64_t reduction);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gaussian_kl_backward_cpu(
    const at::Tensor& grad, const at::Tensor& mu_q, const at::Tensor& logvar_q, const std::optional<at::Tensor>& mu_p,
    const std::optional<at::Tensor>& logvar_p, int64_t reduction);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> gaussian_kl_with_grad_cpu(
    const at::Tensor& mu_q, const at::Tensor& logvar_q, const std::optional<at::Tensor>& mu_p,
    const std::optional<at::Tensor>& logvar_p, int64_t reduction);

}  // namespace lightdvae
