// Input checks of lightdvae::kv_attention, shared by the CPU and CUDA entry points.  Shape, dtype,
// device and overflow errors raise ValueError (TORCH_CHECK_VALUE), like the Python reference, so a
// caller sees the same exception type whichever backend runs.
#include "kv_attention/kv_attention.h"

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cmath>

namespace lightdvae {
namespace {

constexpr const char* kOp = "kv_attention";

void check_4d(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.dim() == 4, kOp, ": ", name, " must be (batch, heads, time, head_dim), got ", t.sizes());
}

void check_like_q(const at::Tensor& q, const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.scalar_type() == q.scalar_type() && t.device() == q.device(), kOp, ": ", name, " is ",
                    t.scalar_type(), " on ", t.device(), ", q is ", q.scalar_type(), " on ", q.device(),
                    "; every tensor must have q's dtype and device");
}

}  // namespace

KVShape check_kv_attention(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                           const at::Tensor& k_new, const at::Tensor& v_new, int64_t cache_len, bool cuda) {
  check_4d(q, "q");
  check_4d(k_cache, "k_cache");
  check_4d(v_cache, "v_cache");
  check_4d(k_new, "k_new");
  check_4d(v_new, "v_new");
  check_like_q(q, k_cache, "k_cache");
  check_like_q(q, v_cache, "v_cache");
  check_like_q(q, k_new, "k_new");
  check_like_q(q, v_new, "v_new");
  const auto dtype = q.scalar_type();
  if (cuda) {
    TORCH_CHECK(q.is_cuda(), kOp, ": CUDA kernel called with tensors on ", q.device());
    TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf || dtype == at::kBFloat16, kOp,
                ": the CUDA kernel takes float16, bfloat16, float32 or float64, got ", dtype);
  } else {
    TORCH_CHECK(q.device().is_cpu(), kOp, ": CPU kernel called with tensors on ", q.device());
    TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, kOp,
                ": the CPU kernel takes float32 or float64, got ", dtype,
                " (kv_attention runs half precision on the CPU through kv_attention_ref)");
  }
  const KVShape s{q.size(0), q.size(1), q.size(2), k_new.size(2), q.size(3), k_cache.size(2), cache_len};
  TORCH_CHECK_VALUE(s.head_dim >= 1, kOp, ": head_dim must be at least 1, got q of shape ", q.sizes());
  TORCH_CHECK_VALUE(k_cache.sizes() == v_cache.sizes() && k_cache.size(0) == s.batch && k_cache.size(1) == s.heads &&
                        k_cache.size(3) == s.head_dim,
                    kOp, ": caches must be (", s.batch, ", ", s.heads, ", max_len, ", s.head_dim, ") like q, got ",
                    k_cache.sizes(), " and ", v_cache.sizes());
  TORCH_CHECK_VALUE(k_new.sizes() == v_new.sizes() && k_new.size(0) == s.batch && k_new.size(1) == s.heads &&
                        k_new.size(3) == s.head_dim && s.n_new >= 1,
                    kOp, ": k_new/v_new must be (", s.batch, ", ", s.heads, ", n_new >= 1, ", s.head_dim, "), got ",
                    k_new.sizes(), " and ", v_new.sizes());
  TORCH_CHECK_VALUE(cache_len >= 0 && cache_len + s.n_new <= s.max_len, kOp, ": cache_len=", cache_len,
                    " + n_new=", s.n_new, " exceeds the cache's max_len=", s.max_len, " (or cache_len < 0)");
  TORCH_CHECK_VALUE(s.n_q <= s.total(), kOp, ": ", s.n_q, " queries but only ", s.total(), " keys");
  // The caches are written in place, so they cannot be made contiguous by a copy.
  for (const auto* t : {&k_cache, &v_cache}) {
    TORCH_CHECK(t->stride(3) == 1 || t->size(3) == 1, kOp,
                ": the caches' last dimension must be contiguous (stride 1), got strides ", t->strides(),
                "; allocate them with torch.empty(batch, heads, max_len, head_dim)");
  }
  return s;
}

double kv_softmax_scale(const std::optional<double>& softmax_scale, int64_t head_dim) {
  return softmax_scale.has_value() ? *softmax_scale : 1.0 / std::sqrt(static_cast<double>(head_dim));
}

void kv_append_with_copy(const at::Tensor& k_cache, const at::Tensor& v_cache, const at::Tensor& k_new,
                         const at::Tensor& v_new, int64_t cache_len) {
  const int64_t n_new = k_new.size(2);
  k_cache.narrow(2, cache_len, n_new).copy_(k_new);
  v_cache.narrow(2, cache_len, n_new).copy_(v_new);
}

}  // namespace lightdvae
