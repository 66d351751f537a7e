// One packed decoder body of the hierarchical transformer DVAEs, as DecoderBody._pack lays it out
// (lightdvae/models/transformer_layers.py), parsed and checked once: the exact loop (decode_loop.cpp) calls ATen
// on its tensors, the small-batch loop (decode_small.h) takes raw pointers from it.
//
// Packed body (a Tensor[]): [latent_w (in, d), latent_b (T, d), speech_w (F, d), speech_b (T, d), memory_w
// (d, L*2*d), memory_b (L*2*d)], then per layer the 18 tensors of StepWeights.layers (qkv_w, qkv_b, self_out_w,
// self_out_b, cross_q_w, cross_q_b, cross_out_w, cross_out_b, ff1_w, ff1_b, ff2_w, ff2_b, norm1..3 weight and
// bias), then with norm_first the final LayerNorm's weight and bias.
#pragma once

#include <ATen/ATen.h>

namespace lightdvae::transformer {

constexpr int64_t kHead = 6;       // tensors before the first layer's
constexpr int64_t kPerLayer = 18;  // tensors per layer
constexpr int64_t kFF1 = 8;        // a layer's first feed-forward weight (d, ff), within its 18

struct Body {
  at::TensorList w;
  int64_t layers, heads, d, hd, ff, in_dim, x_dim;
  double eps;
  bool norm_first, relu;

  Body(at::TensorList weights, int64_t heads_, double eps_, bool norm_first_, bool relu_, const char* name)
      : w(weights), heads(heads_), eps(eps_), norm_first(norm_first_), relu(relu_) {
    const int64_t tail = norm_first ? 2 : 0;
    const int64_t n = static_cast<int64_t>(w.size());
    TORCH_CHECK_VALUE(n > kHead + tail && (n - kHead - tail) % kPerLayer == 0, "transformer_decode: ", name,
                      " holds ", n, " tensors; expected 6 + 18 per layer", norm_first ? " + 2" : "");
    layers = (n - kHead - tail) / kPerLayer;
    TORCH_CHECK_VALUE(w[0].dim() == 2 && w[2].dim() == 2, "transformer_decode: ", name,
                      "'s latent and speech projections must be matrices");
    in_dim = w[0].size(0);
    d = w[0].size(1);
    x_dim = w[2].size(0);
    TORCH_CHECK_VALUE(heads > 0 && d % heads == 0, "transformer_decode: d_model ", d, " is not divisible by ",
                      heads, " heads");
    hd = d / heads;
    TORCH_CHECK_VALUE(w[4].size(1) == layers * 2 * d, "transformer_decode: ", name, "'s memory projection is ",
                      w[4].sizes(), "; expected (", d, ", ", layers * 2 * d, ")");
    ff = layer(0)[kFF1].size(1);
  }
  const at::Tensor* layer(int64_t l) const { return w.data() + kHead + l * kPerLayer; }
  const at::Tensor& final_norm_weight() const { return w[w.size() - 2]; }
  const at::Tensor& final_norm_bias() const { return w[w.size() - 1]; }
};

}  // namespace lightdvae::transformer
