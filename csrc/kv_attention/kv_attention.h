// Entry points, input checks and kernel parameters of the KV-cached causal attention op
// lightdvae::kv_attention (schema in csrc/lightdvae.cpp, Python API in lightdvae/ops/kv_attention.py).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <cstdint>

namespace lightdvae {

// Sizes of one call, validated by check_kv_attention (shared by the CPU and CUDA entry points).
struct KVShape {
  int64_t batch, heads, n_q, n_new, head_dim, max_len, cache_len;
  int64_t total() const { return cache_len + n_new; }  // keys visible after the append
};

// Raises ValueError (shape, dtype, device, cache overflow) with a message naming the argument, and
// RuntimeError for a dtype or device the kernel does not take and when the caches' last dimension
// is not contiguous (they are written in place, so they cannot be copied).  `cuda`: the kernel
// checking is the CUDA one (else the CPU one).
KVShape check_kv_attention(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                           const at::Tensor& k_new, const at::Tensor& v_new, int64_t cache_len, bool cuda);

// softmax_scale or its default 1 / sqrt(head_dim).
double kv_softmax_scale(const std::optional<double>& softmax_scale, int64_t head_dim);

// The write of k_new / v_new into the caches as plain ATen copies (used when there is no query,
// n_q = 0, so no kernel block would do it).
void kv_append_with_copy(const at::Tensor& k_cache, const at::Tensor& v_cache, const at::Tensor& k_new,
                         const at::Tensor& v_new, int64_t cache_len);

at::Tensor kv_attention_cpu(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                            const at::Tensor& k_new, const at::Tensor& v_new, int64_t cache_len,
                            std::optional<double> softmax_scale, bool causal);
// Defined in kv_attention_cuda.cu, built only with the CUDA kernels (LIGHTDVAE_WITH_CUDA).
at::Tensor kv_attention_cuda(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                             const at::Tensor& k_new, const at::Tensor& v_new, int64_t cache_len,
                             std::optional<double> softmax_scale, bool causal);

}  // namespace lightdvae
