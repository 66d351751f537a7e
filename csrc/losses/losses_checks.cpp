#include "losses/losses.h"

#include <c10/util/Exception.h>

#include "common.h"

namespace lightdvae {

void check_reduction(const char* op, int64_t reduction) {
  TORCH_CHECK(reduction == kNone || reduction == kMean || reduction == kSum, op,
              ": reduction must be 0 (none), 1 (mean) or 2 (sum), got ", reduction);
}

void check_same_as(const char* op, const at::Tensor& ref, const char* ref_name, const at::Tensor& t,
                   const char* name) {
  TORCH_CHECK(t.sizes() == ref.sizes(), op, ": ", name, " must have the shape of ", ref_name, " ", ref.sizes(),
              ", got ", t.sizes());
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " is on ", t.device(), " but ", ref_name, " is on ",
              ref.device(), "; put both on one device");
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": ", name, " is ", t.scalar_type(), " but ", ref_name,
              " is ", ref.scalar_type(), "; cast both to one dtype");
}

void check_floating(const char* op, const at::Tensor& t, const char* name, bool allow_half) {
  const auto dtype = t.scalar_type();
  const bool ok = dtype == at::kFloat || dtype == at::kDouble ||
                  (allow_half && (dtype == at::kHalf || dtype == at::kBFloat16));
  TORCH_CHECK(ok, op, ": ", name, " has dtype ", dtype, "; this kernel takes float32 or float64",
              allow_half ? ", float16 or bfloat16" : " on the CPU (half precision needs CUDA)");
}

void check_grad(const char* op, const at::Tensor& grad, const at::Tensor& input, int64_t reduction) {
  if (reduction == kNone) {
    TORCH_CHECK(grad.sizes() == input.sizes(), op, ": the gradient must have the input's shape ", input.sizes(),
                ", got ", grad.sizes());
  } else {
    TORCH_CHECK(grad.numel() == 1, op, ": the gradient of a reduced output must have one element, got ",
                grad.sizes());
  }
  TORCH_CHECK(grad.device() == input.device(), op, ": gradient on ", grad.device(), ", inputs on ",
              input.device());
}

namespace {

void check_device(const char* op, const at::Tensor& t, c10::DeviceType device) {
  TORCH_CHECK(t.device().type() == device, op, ": ", c10::DeviceTypeName(device), " kernel called with tensors on ",
              t.device());
}

}  // namespace

void check_is_inputs(const char* op, const at::Tensor& power, const at::Tensor& logvar, int64_t reduction,
                     c10::DeviceType device) {
  check_reduction(op, reduction);
  check_floating(op, power, "power", /*allow_half=*/device == c10::DeviceType::CUDA);
  check_device(op, power, device);
  check_same_as(op, power, "power", logvar, "logvar");
}

void check_kl_inputs(const char* op, const at::Tensor& mu_q, const at::Tensor& logvar_q,
                     const std::optional<at::Tensor>& mu_p, const std::optional<at::Tensor>& logvar_p,
                     int64_t reduction, c10::DeviceType device) {
  check_reduction(op, reduction);
  check_floating(op, mu_q, "mu_q", /*allow_half=*/device == c10::DeviceType::CUDA);
  check_device(op, mu_q, device);
  check_same_as(op, mu_q, "mu_q", logvar_q, "logvar_q");
  if (mu_p.has_value()) check_same_as(op, mu_q, "mu_q", *mu_p, "mu_p");
  if (logvar_p.has_value()) check_same_as(op, mu_q, "mu_q", *logvar_p, "logvar_p");
}

}  // namespace lightdvae
