// The decoding loop of decode_loop.cpp at small batch on raw pointers (issue 16: enhancement with a transformer
// prior decodes one utterance at a time, twice per EM iteration).
//
// At batch 1 a frame is ~0.7 M multiply-adds (two decoder layers of d_model 128 plus the 513-bin embedding and
// head), well under 100 us of arithmetic, against ~60 ATen calls of 3-15 us each in the exact loop.  Below
// kMaxBatch rows, and when the caller gives up bit-parity (exact = false: lightdvae.ops.sampling.exact_loops),
// the loop runs here: the same function -- products, LayerNorm, causal attention over the cached keys and values,
// the fed-back features -- written as loops over contiguous rows that the compiler vectorises (an AVX2+FMA clone
// on x86-64), one float type throughout.  Results are the exact loop's within float rounding
// (tests/test_ops_transformer_decode.py holds both to a float64 run).
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <tuple>
#include <vector>

#include "common.h"
#include "small_gemm.h"
#include "transformer/body.h"

namespace lightdvae::decode_small {

// Measured (LigHT-DVAE, 157 frames, posterior z, one thread, the machine shared with two trainings): 26.8 / 40.0 /
// 41.8 / 64.0 ms at batch 1 / 2 / 3 / 4 against 32.7 / 50.3 / 50.3 / 65.5 ms for the exact loop (the frame reads the
// body's 2.6 MB of float32 weights once, for all rows: at batch 1 the loop is bound by that traffic, not by its
// arithmetic); from batch 4 on ATen's products are as fast.
constexpr int64_t kMaxBatch = 4;

// y[r] (n) = b (n) + x[r] (k) . w for `rows` rows (row strides xs, ys), w a contiguous (k, n) matrix (small_gemm.h:
// each weight read once for all rows; each output sums its terms in order, whatever the vector width).
template <typename T>
void affine(T* y, const T* b, const T* x, const T* w, int64_t rows, int64_t k, int64_t n, int64_t xs, int64_t ys) {
  for (int64_t r = 0; r < rows; ++r) std::copy(b, b + n, y + r * ys);
  small_gemm::rows_times(y, ys, x, xs, w, n, rows, k, n);
}

// In place: y = LayerNorm(y) * g + b over n elements (biased variance, as torch).
template <typename T>
void layer_norm(T* y, const T* g, const T* b, int64_t n, double eps) {
  double mean = 0, var = 0;
  for (int64_t i = 0; i < n; ++i) mean += y[i];
  mean /= static_cast<double>(n);
  for (int64_t i = 0; i < n; ++i) var += (y[i] - mean) * (y[i] - mean);
  const double rstd = 1.0 / std::sqrt(var / static_cast<double>(n) + eps);
  for (int64_t i = 0; i < n; ++i) y[i] = static_cast<T>((y[i] - mean) * rstd) * g[i] + b[i];
}

// out (hd) = softmax(q . K[0..len) * scale) . V[0..len) for one head; K, V rows of hd contiguous values.
template <typename T>
void attend(T* __restrict out, const T* __restrict q, const T* __restrict k, const T* __restrict v, int64_t len,
            int64_t hd, T* __restrict scores) {
  const T scale = T(1) / std::sqrt(static_cast<T>(hd));
  T top = -std::numeric_limits<T>::infinity();
  for (int64_t j = 0; j < len; ++j) {
    const T* kj = k + j * hd;
    T s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t d = 0; d < hd; ++d) s += q[d] * kj[d];
    scores[j] = s * scale;
    top = std::max(top, scores[j]);
  }
  T sum = 0;
  for (int64_t j = 0; j < len; ++j) {
    scores[j] = std::exp(scores[j] - top);
    sum += scores[j];
  }
  std::fill(out, out + hd, T(0));
  for (int64_t j = 0; j < len; ++j) {
    const T pj = scores[j] / sum;
    const T* vj = v + j * hd;
#pragma omp simd
    for (int64_t d = 0; d < hd; ++d) out[d] += pj * vj[d];
  }
}

// One decoder body's packed weights (the layout of decode_loop.cpp) as raw pointers.
template <typename T>
struct Weights {
  const transformer::Body* body;  // sizes and flags (parsed and checked once, body.h)
  const T *latent_w, *latent_b, *speech_w, *speech_b, *memory_w, *memory_b, *final_w = nullptr, *final_b = nullptr;
  std::vector<const T*> layers;  // 18 per layer
  const T *cos = nullptr, *sin = nullptr;  // rotary tables (positions, hd / 2), or none
};

// Key/value caches of one body's attention, (layers, batch, heads, frames, hd) each.
template <typename T>
struct KV {
  std::vector<T> k, v;
  int64_t batch, heads, frames, hd;
  KV(int64_t layers, int64_t batch_, int64_t heads_, int64_t frames_, int64_t hd_)
      : k(static_cast<size_t>(layers * batch_ * heads_ * frames_ * hd_)), v(k.size()),
        batch(batch_), heads(heads_), frames(frames_), hd(hd_) {}
  int64_t at(int64_t l, int64_t b, int64_t h, int64_t t) const { return (((l * batch + b) * heads + h) * frames + t) * hd; }
};

// transformer_layers.rotate of one head's row x (hd) in place at the angles c, s (hd / 2 each).
template <typename T>
void rotate(T* x, const T* c, const T* s, int64_t half) {
  for (int64_t i = 0; i < half; ++i) {
    const T x1 = x[i], x2 = x[i + half];
    x[i] = x1 * c[i] - x2 * s[i];
    x[i + half] = x1 * s[i] + x2 * c[i];
  }
}

// The exact loop's body_step at position p on raw rows: latent (batch, in_dim) and speech (batch, x_dim) or
// nullptr (the memory of p already in `memory`) -> out (batch, d).  `self` and `memory` are this use's caches.
template <typename T>
void body_step(const Weights<T>& w, KV<T>& self, KV<T>& memory, const T* latent, const T* speech, int64_t batch,
               int64_t p, T* x, std::vector<T>& work) {
  const int64_t d = w.body->d, hd = w.body->hd, heads = w.body->heads, rows = batch;
  const int64_t wide = std::max<int64_t>({3 * d, 2 * d * w.body->layers, w.body->ff});
  work.resize(static_cast<size_t>(rows * (4 * d + wide) + memory.frames));
  T* h = work.data();     // sublayer inputs (rows, d)
  T* a = h + rows * d;    // sublayer outputs (rows, d)
  T* q = a + rows * d;    // cross-attention queries (rows, d)
  T* att = q + rows * d;  // attention outputs (rows, d)
  T* big = att + rows * d;  // qkv (rows, 3d), memory keys/values (rows, 2 d L), feed-forward hidden (rows, ff)
  T* scores = big + rows * wide;
  const int64_t half = hd / 2;
  const T* cos_p = w.cos != nullptr ? w.cos + p * half : nullptr;  // the angles of position p
  const T* sin_p = w.cos != nullptr ? w.sin + p * half : nullptr;
  affine(x, w.latent_b + p * d, latent, w.latent_w, rows, w.body->in_dim, d, w.body->in_dim, d);
  if (speech != nullptr) {
    const int64_t kv = 2 * d * w.body->layers;
    affine(h, w.speech_b + p * d, speech, w.speech_w, rows, w.body->x_dim, d, w.body->x_dim, d);
    affine(big, w.memory_b, h, w.memory_w, rows, d, kv, d, kv);
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t l = 0; l < w.body->layers; ++l) {
        for (int64_t hh = 0; hh < heads; ++hh) {
          T* kr = big + r * kv + l * 2 * d + hh * hd;
          if (cos_p != nullptr) rotate(kr, cos_p, sin_p, half);  // each memory key rotated once, at its position
          std::copy(kr, kr + hd, memory.k.data() + memory.at(l, r, hh, p));
          std::copy(kr + d, kr + d + hd, memory.v.data() + memory.at(l, r, hh, p));
        }
      }
    }
  }
  for (int64_t l = 0; l < w.body->layers; ++l) {
    const T* const* lw = w.layers.data() + l * 18;
    // one residual sublayer over all rows: pre-norm x += f(LN(x)), post-norm x = LN(x + f(x)); f writes a
    auto residual = [&](int i, auto&& sublayer) {
      std::copy(x, x + rows * d, h);
      if (w.body->norm_first) {
        for (int64_t r = 0; r < rows; ++r) layer_norm(h + r * d, lw[12 + 2 * i], lw[13 + 2 * i], d, w.body->eps);
      }
      sublayer();
      for (int64_t c = 0; c < rows * d; ++c) x[c] = a[c] + x[c];
      if (!w.body->norm_first) {
        for (int64_t r = 0; r < rows; ++r) layer_norm(x + r * d, lw[12 + 2 * i], lw[13 + 2 * i], d, w.body->eps);
      }
    };
    residual(0, [&] {  // causal self-attention
      affine(big, lw[1], h, lw[0], rows, d, 3 * d, d, 3 * d);
      for (int64_t r = 0; r < rows; ++r) {
        T* qkv = big + r * 3 * d;
        for (int64_t hh = 0; hh < heads; ++hh) {
          if (cos_p != nullptr) {
            rotate(qkv + hh * hd, cos_p, sin_p, half);
            rotate(qkv + d + hh * hd, cos_p, sin_p, half);
          }
          std::copy(qkv + d + hh * hd, qkv + d + (hh + 1) * hd, self.k.data() + self.at(l, r, hh, p));
          std::copy(qkv + 2 * d + hh * hd, qkv + 2 * d + (hh + 1) * hd, self.v.data() + self.at(l, r, hh, p));
          attend(att + r * d + hh * hd, qkv + hh * hd, self.k.data() + self.at(l, r, hh, 0),
                 self.v.data() + self.at(l, r, hh, 0), p + 1, hd, scores);
        }
      }
      affine(a, lw[3], att, lw[2], rows, d, d, d, d);
    });
    residual(1, [&] {  // causal cross-attention to the memory
      affine(q, lw[5], h, lw[4], rows, d, d, d, d);
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t hh = 0; hh < heads; ++hh) {
          if (cos_p != nullptr) rotate(q + r * d + hh * hd, cos_p, sin_p, half);
          attend(att + r * d + hh * hd, q + r * d + hh * hd, memory.k.data() + memory.at(l, r, hh, 0),
                 memory.v.data() + memory.at(l, r, hh, 0), p + 1, hd, scores);
        }
      }
      affine(a, lw[7], att, lw[6], rows, d, d, d, d);
    });
    residual(2, [&] {  // feed-forward
      affine(big, lw[9], h, lw[8], rows, d, w.body->ff, d, w.body->ff);
      for (int64_t c = 0; c < rows * w.body->ff; ++c) {
        big[c] = w.body->relu ? (big[c] < T(0) ? T(0) : big[c]) : std::tanh(big[c]);
      }
      affine(a, lw[11], big, lw[10], rows, w.body->ff, d, w.body->ff, d);
    });
  }
  if (w.body->norm_first) {
    for (int64_t r = 0; r < rows; ++r) layer_norm(x + r * d, w.final_w, w.final_b, d, w.body->eps);
  }
}

// logaddexp(a, c) as ATen computes it for finite or infinite inputs.
template <typename T>
T logaddexp(T a, T c) {
  const T m = std::max(a, c);
  if (std::isinf(m) && m < 0) return m;
  return m + std::log1p(std::exp(-std::abs(a - c)));
}

// The raw weights of a body parsed and checked by transformer::Body (contiguous copies kept alive in `keep`).
template <typename T>
Weights<T> weights_of(const transformer::Body& body, std::vector<at::Tensor>& keep) {
  auto ptr = [&](const at::Tensor& t) {
    keep.push_back(t.contiguous());
    return keep.back().const_data_ptr<T>();
  };
  const at::TensorList flat = body.w;
  Weights<T> w;
  w.body = &body;
  w.latent_w = ptr(flat[0]);
  w.latent_b = ptr(flat[1]);
  w.speech_w = ptr(flat[2]);
  w.speech_b = ptr(flat[3]);
  w.memory_w = ptr(flat[4]);
  w.memory_b = ptr(flat[5]);
  for (int64_t l = 0; l < body.layers; ++l) {
    const at::Tensor* lw = body.layer(l);
    for (int64_t i = 0; i < transformer::kPerLayer; ++i) w.layers.push_back(ptr(lw[i]));
  }
  if (body.norm_first) {
    w.final_w = ptr(body.final_norm_weight());
    w.final_b = ptr(body.final_norm_bias());
  }
  return w;
}

// The loop of transformer_decode (decode_loop.cpp) on raw pointers; the same arguments (the bodies as parsed
// there; z_body nullptr: one body for both passes; rope_cos / rope_sin undefined without rotary positions), the same
// outputs.
template <typename T>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> decode(
    const at::Tensor& w_in, const std::optional<at::Tensor>& z_in, const std::optional<at::Tensor>& past_in,
    const transformer::Body& s_body, const transformer::Body* z_body, const at::Tensor& s_out_w,
    const at::Tensor& s_out_b, const at::Tensor& prior_w, const at::Tensor& prior_b, int64_t frames, bool run_prior,
    double log_feature_eps, double temperature, const std::optional<at::Generator>& generator,
    const at::Tensor& rope_cos, const at::Tensor& rope_sin) {
  std::vector<at::Tensor> keep;
  const bool shared = z_body == nullptr;
  const int64_t heads = s_body.heads;
  Weights<T> sb = weights_of<T>(s_body, keep);
  Weights<T> zb = shared ? sb : weights_of<T>(*z_body, keep);
  if (rope_cos.defined()) {  // both bodies rotate with the same tables (same head size, checked by the caller)
    keep.push_back(rope_cos.contiguous());
    sb.cos = zb.cos = keep.back().const_data_ptr<T>();
    keep.push_back(rope_sin.contiguous());
    sb.sin = zb.sin = keep.back().const_data_ptr<T>();
  }
  const int64_t batch = w_in.size(0), w_dim = w_in.size(1), d = s_body.d, x_dim = s_out_w.size(0);
  const int64_t z_dim = prior_w.size(0) / 2, lat = z_dim + w_dim;
  const auto opts = w_in.options();
  const at::Tensor w = w_in.contiguous(), out_wt = s_out_w.t().contiguous(), out_b = s_out_b.contiguous();
  const at::Tensor prior_wt = prior_w.t().contiguous(), pr_b = prior_b.contiguous();
  const at::Tensor z = z_in.has_value() ? z_in->contiguous() : at::Tensor();
  const at::Tensor past = past_in.has_value() ? past_in->contiguous() : at::Tensor();
  at::Tensor logvar = at::empty({batch, frames, x_dim}, opts), zs = at::empty({batch, frames, z_dim}, opts);
  at::Tensor fed = at::empty({batch, frames, x_dim}, opts);
  at::Tensor prior = run_prior ? at::empty({batch, frames, 2 * z_dim}, opts) : at::empty({0}, opts);
  const T* wp = w.const_data_ptr<T>();
  T* lv = logvar.mutable_data_ptr<T>();
  T* zp = zs.mutable_data_ptr<T>();
  T* fp = fed.mutable_data_ptr<T>();
  T* pp = run_prior ? prior.mutable_data_ptr<T>() : nullptr;

  KV<T> s_self(s_body.layers, batch, heads, frames, s_body.hd), s_mem(s_body.layers, batch, heads, frames, s_body.hd);
  const int64_t zl = run_prior ? zb.body->layers : 0;
  KV<T> z_self(zl, batch, heads, frames, zb.body->hd), z_own(shared ? 0 : zl, batch, heads, frames, zb.body->hd);
  KV<T>& z_mem = shared ? s_mem : z_own;
  const bool share = run_prior && shared;
  std::vector<T> mem(static_cast<size_t>(batch * x_dim), T(0)), z_prev(static_cast<size_t>(batch * z_dim), T(0));
  std::vector<T> latent(static_cast<size_t>(batch * lat)), h(static_cast<size_t>(batch * d)), work, row(2 * z_dim);
  const T log_eps = static_cast<T>(log_feature_eps);
  auto with_w = [&](const T* zrows, int64_t zstride) {  // latent = [z ; w] per row
    for (int64_t r = 0; r < batch; ++r) {
      std::copy(zrows + r * zstride, zrows + r * zstride + z_dim, latent.data() + r * lat);
      std::copy(wp + r * w_dim, wp + (r + 1) * w_dim, latent.data() + r * lat + z_dim);
    }
  };
  for (int64_t i = 0; i < frames; ++i) {
    if (run_prior) {
      with_w(z_prev.data(), z_dim);
      body_step(zb, z_self, z_mem, latent.data(), mem.data(), batch, i, h.data(), work);
      affine(pp + i * 2 * z_dim, pr_b.const_data_ptr<T>(), h.data(), prior_wt.const_data_ptr<T>(), batch, d,
             2 * z_dim, d, frames * 2 * z_dim);
    }
    if (z.defined()) {
      for (int64_t r = 0; r < batch; ++r) {
        const T* src = z.const_data_ptr<T>() + (r * frames + i) * z_dim;
        std::copy(src, src + z_dim, zp + (r * frames + i) * z_dim);
      }
    } else {  // z_t = mean + temperature * exp(logvar / 2) * eps, eps drawn as the exact loop draws it
      const at::Tensor eps = at::randn({batch, z_dim}, generator, opts);
      const T* ep = eps.const_data_ptr<T>();
      for (int64_t r = 0; r < batch; ++r) {
        const T* pr = pp + (r * frames + i) * 2 * z_dim;
        for (int64_t c = 0; c < z_dim; ++c) {
          zp[(r * frames + i) * z_dim + c] =
              pr[c] + static_cast<T>(temperature) * (std::exp(pr[z_dim + c] * T(0.5)) * ep[r * z_dim + c]);
        }
      }
    }
    with_w(zp + i * z_dim, frames * z_dim);
    body_step(sb, s_self, s_mem, latent.data(), share ? nullptr : mem.data(), batch, i, h.data(), work);
    affine(lv + i * x_dim, out_b.const_data_ptr<T>(), h.data(), out_wt.const_data_ptr<T>(), batch, d, x_dim, d,
           frames * x_dim);
    for (int64_t r = 0; r < batch; ++r) {
      const T* out = lv + (r * frames + i) * x_dim;
      T* m = mem.data() + r * x_dim;
      if (past.defined()) {
        const T* src = past.const_data_ptr<T>() + (r * frames + i) * x_dim;
        std::copy(src, src + x_dim, m);
      } else {
        for (int64_t c = 0; c < x_dim; ++c) m[c] = logaddexp(out[c], log_eps);
      }
      std::copy(m, m + x_dim, fp + (r * frames + i) * x_dim);
      std::copy(zp + (r * frames + i) * z_dim, zp + (r * frames + i + 1) * z_dim, z_prev.data() + r * z_dim);
    }
  }
  return {logvar, zs, prior, fed};
}

}  // namespace lightdvae::decode_small
