// The frame-by-frame decoding loop of the hierarchical transformer DVAEs (HiT-DVAE, LigHT-DVAE) in one call
// (lightdvae::transformer_decode; issue 16: GEN resynthesis, generation and the enhancement's E-step run it).
//
// A frame of the Python loop (lightdvae/models/transformer.py, _decode_loop, over DecoderBody.step_rows in
// transformer_layers.py) is ~60 ATen calls on rows of d_model = 128: at batch 1 to 16 each is a few microseconds
// of arithmetic against 5-15 us of Python and dispatch.  This is the same loop in C++: the same ATen calls, in the
// same order, on the same packed weights (DecoderBody._pack) and the same key/value caches (the cached attention
// is the lightdvae::kv_attention op, called through the dispatcher), so it returns the Python loop's values bit
// for bit (tests/test_models_transformer.py compares them exactly).  Registered CompositeImplicitAutograd: it
// runs wherever ATen does (on CUDA each call launches its kernel; nothing is read back inside the loop).
// Inference only: the caller runs it under torch.inference_mode().
//
// exact = false lets a small CPU batch run on raw pointers instead (decode_small.h: within float rounding of
// these calls, several times faster at batch 1; the enhancement's E-step asks for it).
//
// What it covers is what the Python wrapper sends it: eval mode (no dropout), post- or pre-norm layers with
// residuals, the Linear past-speech embedding with sinusoidal positions (folded into the packed biases) or rotary
// ones (rope_cos / rope_sin: the queries and keys of every attention rotated at their positions, each memory key
// once as it is computed, as DecoderBody.step_rows does), ReLU or tanh feed-forward blocks, one LayerNorm eps per
// body.  Inv-s, the RNN-encoded past and training-mode decoding stay on the Python loop.
//
// The packed bodies' layout: body.h.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "transformer/body.h"
#include "transformer/decode_small.h"

namespace lightdvae {
namespace {

using transformer::Body;

using AttendFn = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                            const at::Tensor&, int64_t, std::optional<double>, bool);

// lightdvae::kv_attention through the dispatcher (its CPU or CUDA kernel, whichever the tensors ask for).
const c10::TypedOperatorHandle<AttendFn>& attend_op() {
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("lightdvae::kv_attention", "").typed<AttendFn>();
  return op;
}

// The cross-attention memory of a body: its key/value caches per layer and the rows of the position computed
// last (shared by LigHT-DVAE's two passes, as MemoryKV in Python).
struct Memory {
  std::vector<at::Tensor> k, v;
  std::vector<std::pair<at::Tensor, at::Tensor>> rows;
};

// One use of a body: its self-attention caches and the memory it reads.
struct Cache {
  std::vector<at::Tensor> k, v;
  Memory* memory;
};

std::vector<at::Tensor> zeros_per_layer(const Body& body, int64_t batch, int64_t frames, const at::TensorOptions& o) {
  std::vector<at::Tensor> out;
  for (int64_t l = 0; l < body.layers; ++l) {
    out.push_back(at::zeros({batch, body.heads, frames, body.hd}, o));
  }
  return out;
}

// Rotary positions: the (positions, hd / 2) cos and sin tables of transformer_layers.rotary_tables, or undefined.
struct Rope {
  at::Tensor cos, sin;
  bool on() const { return cos.defined(); }
};

// transformer_layers.rotate: x (..., hd) rotated by the angles of cos / sin (broadcast over x's leading dims),
// half-split pairs; the same calls as the Python function.
at::Tensor rotate(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  const auto halves = x.chunk(2, -1);
  return at::cat({halves[0] * cos - halves[1] * sin, halves[0] * sin + halves[1] * cos}, -1);
}

// DecoderBody.step_rows at one position p: latent (B, in) and, unless the memory of p was computed through a
// cache sharing it, speech (B, F) -> (B, d).  The same calls as the Python step, in the same order.
at::Tensor body_step(const Body& body, Cache& cache, const at::Tensor& latent, const at::Tensor* speech, int64_t p,
                     const Rope& rope) {
  const auto& w = body.w;
  const int64_t b = latent.size(0), d = body.d, heads = body.heads, hd = body.hd;
  Memory& mem = *cache.memory;
  at::Tensor cos_p, sin_p;  // the angles of position p, (1, hd / 2)
  if (rope.on()) {
    cos_p = rope.cos.narrow(0, p, 1);
    sin_p = rope.sin.narrow(0, p, 1);
  }
  at::Tensor x = at::addmm(w[1].narrow(0, p, 1), latent, w[0]);
  if (speech != nullptr) {
    at::Tensor sp = at::addmm(w[3].narrow(0, p, 1), *speech, w[2]);
    at::Tensor kv = at::addmm(w[5], sp, w[4]).view({b, 1, body.layers, 2, heads, hd});
    if (rope.on()) {  // the memory's keys of every layer, rotated once at their position
      const at::Tensor keys = kv.select(3, 0);
      keys.copy_(rotate(keys, cos_p.view({1, 1, 1, hd / 2}), sin_p.view({1, 1, 1, hd / 2})));
    }
    kv = kv.permute({2, 3, 0, 4, 1, 5});
    mem.rows.clear();
    for (int64_t l = 0; l < body.layers; ++l) {
      at::Tensor layer_kv = kv.select(0, l);
      mem.rows.emplace_back(layer_kv.select(0, 0), layer_kv.select(0, 1));
    }
  }
  const auto& attend = attend_op();
  const std::vector<int64_t> shape{d};
  for (int64_t l = 0; l < body.layers; ++l) {
    const at::Tensor* lw = body.layer(l);
    auto norm = [&](const at::Tensor& h, int i) { return at::layer_norm(h, shape, lw[12 + 2 * i], lw[13 + 2 * i], body.eps); };
    // _residual of transformer_layers.py (in place, residual on): pre-norm x + f(norm(x)), post-norm norm(x + f(x))
    auto residual = [&](const at::Tensor& h, int i, auto&& sublayer) {
      at::Tensor out = sublayer(body.norm_first ? norm(h, i) : h);
      out.add_(h);
      return body.norm_first ? out : norm(out, i);
    };
    x = residual(x, 0, [&](const at::Tensor& h) {  // causal self-attention over the query stream
      at::Tensor qkv = at::addmm(lw[1], h, lw[0]).view({b, 1, 3, heads, hd}).permute({2, 0, 3, 1, 4});
      at::Tensor q = qkv.select(0, 0), k = qkv.select(0, 1);
      if (rope.on()) {
        q = rotate(q, cos_p, sin_p);
        k = rotate(k, cos_p, sin_p);
      }
      at::Tensor out = attend.call(q, cache.k[l], cache.v[l], k, qkv.select(0, 2), p, std::nullopt, true);
      return at::addmm(lw[3], out.view({b, d}), lw[2]);
    });
    x = residual(x, 1, [&](const at::Tensor& h) {  // causal cross-attention to the memory
      at::Tensor q = at::addmm(lw[5], h, lw[4]).view({b, 1, heads, hd}).transpose(1, 2);
      if (rope.on()) {
        q = rotate(q, cos_p, sin_p);
      }
      const auto& [k_new, v_new] = mem.rows[l];
      at::Tensor out = attend.call(q, mem.k[l], mem.v[l], k_new, v_new, p, std::nullopt, true);
      return at::addmm(lw[7], out.view({b, d}), lw[6]);
    });
    x = residual(x, 2, [&](const at::Tensor& h) {  // feed-forward
      at::Tensor a = at::addmm(lw[9], h, lw[8]);
      if (body.relu) {
        a.relu_();
      } else {
        a.tanh_();
      }
      return at::addmm(lw[11], a, lw[10]);
    });
  }
  if (body.norm_first) {
    x = at::layer_norm(x, shape, body.final_norm_weight(), body.final_norm_bias(), body.eps);
  }
  return x;
}

}  // namespace

// _decode_loop of transformer.py: see there for the arguments' meaning.  w (B, w_dim); z (B, T, z_dim) or None
// (drawn from the prior decoder: mean + temperature * std * randn(B, z_dim, generator) per frame); past (B, T, F)
// features fed as the past (teacher forcing) or None (the decoder's own output fed back: logaddexp(logvar,
// log_feature_eps)); z_body empty: one body for both passes (LigHT-DVAE), whose memory the prior pass computes
// and the speech pass reuses.  Returns (logvar (B, T, F), z (B, T, z_dim), prior (B, T, 2 z_dim) or an empty
// tensor when the prior pass does not run, past_feats (B, T, F)).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> transformer_decode(
    const at::Tensor& w, const std::optional<at::Tensor>& z, const std::optional<at::Tensor>& past,
    at::TensorList s_body, at::TensorList z_body, const at::Tensor& s_out_w, const at::Tensor& s_out_b,
    const at::Tensor& prior_w, const at::Tensor& prior_b, int64_t frames, int64_t heads, double ln_eps,
    bool norm_first, int64_t activation, bool run_prior, double log_feature_eps, double temperature,
    std::optional<at::Generator> generator, bool exact, const std::optional<at::Tensor>& rope_cos,
    const std::optional<at::Tensor>& rope_sin) {
  TORCH_CHECK_VALUE(frames >= 1, "transformer_decode: frames must be >= 1, got ", frames);
  TORCH_CHECK_VALUE(w.dim() == 2, "transformer_decode: w must be (batch, w_dim), got ", w.sizes());
  TORCH_CHECK_VALUE(activation == 0 || activation == 1, "transformer_decode: activation must be 0 (tanh) or 1 (relu)");
  const bool relu = activation == 1;
  const bool shared = z_body.empty();
  const bool draw_z = !z.has_value();
  TORCH_CHECK_VALUE(run_prior || !draw_z, "transformer_decode: z=None draws z from the prior: run_prior must be true");
  const Body sb(s_body, heads, ln_eps, norm_first, relu, "s_body");
  const Body zb(shared ? s_body : z_body, heads, ln_eps, norm_first, relu, "z_body");
  const int64_t batch = w.size(0);
  const int64_t x_dim = s_out_w.size(0);
  const int64_t z_dim = prior_w.size(0) / 2;
  for (const Body* body : {&sb, &zb}) {
    TORCH_CHECK_VALUE(body->w[1].size(0) >= frames && body->w[3].size(0) >= frames, "transformer_decode: ",
                      "the packed position tables hold ", body->w[1].size(0), " positions, fewer than ", frames);
  }
  if (z.has_value()) {
    TORCH_CHECK_VALUE(z->dim() == 3 && z->size(0) == batch && z->size(1) == frames && z->size(2) == z_dim,
                      "transformer_decode: z must be (", batch, ", ", frames, ", ", z_dim, "), got ", z->sizes());
  }
  if (past.has_value()) {
    TORCH_CHECK_VALUE(past->dim() == 3 && past->size(0) == batch && past->size(1) == frames && past->size(2) == x_dim,
                      "transformer_decode: past must be (", batch, ", ", frames, ", ", x_dim, "), got ", past->sizes());
  }
  TORCH_CHECK_VALUE(rope_cos.has_value() == rope_sin.has_value(), "transformer_decode: give both rope_cos and "
                    "rope_sin, or neither");
  Rope rope;
  if (rope_cos.has_value()) {
    for (const auto* t : {&*rope_cos, &*rope_sin}) {
      TORCH_CHECK_VALUE(t->dim() == 2 && t->size(0) >= frames && t->size(1) * 2 == sb.hd && zb.hd == sb.hd,
                        "transformer_decode: the rotary tables must be (>= ", frames, ", ", sb.hd / 2, "), got ",
                        t->sizes());
      TORCH_CHECK_VALUE(t->scalar_type() == w.scalar_type() && t->device() == w.device(), "transformer_decode: ",
                        "the rotary tables must be ", w.scalar_type(), " on ", w.device(), " like w");
    }
    rope = {*rope_cos, *rope_sin};
  }
  const auto opts = w.options();
  // Without bit-parity, a small CPU batch runs on raw pointers (decode_small.h).
  if (!exact && w.is_cpu() && batch <= decode_small::kMaxBatch &&
      (w.scalar_type() == at::kFloat || w.scalar_type() == at::kDouble)) {
    for (const auto* t : {&s_out_w, &s_out_b, &prior_w, &prior_b}) {
      TORCH_CHECK_VALUE(t->scalar_type() == w.scalar_type() && t->is_cpu(), "transformer_decode: the heads must be ",
                        w.scalar_type(), " on the CPU like w");
    }
    return AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "transformer_decode_small", [&] {
      return decode_small::decode<scalar_t>(w, z, past, sb, shared ? nullptr : &zb, s_out_w, s_out_b, prior_w,
                                            prior_b, frames, run_prior, log_feature_eps, temperature, generator,
                                            rope.cos, rope.sin);
    });
  }

  Memory s_mem, z_mem;
  s_mem.k = zeros_per_layer(sb, batch, frames, opts);
  s_mem.v = zeros_per_layer(sb, batch, frames, opts);
  Cache s_cache{zeros_per_layer(sb, batch, frames, opts), zeros_per_layer(sb, batch, frames, opts), &s_mem};
  Cache z_cache{{}, {}, shared ? &s_mem : &z_mem};
  if (run_prior) {
    z_cache.k = zeros_per_layer(zb, batch, frames, opts);
    z_cache.v = zeros_per_layer(zb, batch, frames, opts);
    if (!shared) {
      z_mem.k = zeros_per_layer(zb, batch, frames, opts);
      z_mem.v = zeros_per_layer(zb, batch, frames, opts);
    }
  }
  const bool share = run_prior && shared;  // the prior pass computes the memory, the speech pass reuses it
  const at::Tensor prior_wt = prior_w.t();
  const at::Tensor log_eps = at::scalar_tensor(log_feature_eps, opts);

  std::vector<at::Tensor> logvars, zs, priors, fed;
  logvars.reserve(frames);
  zs.reserve(frames);
  fed.reserve(frames);
  at::Tensor mem = at::zeros({batch, x_dim}, opts);       // features of s_0
  at::Tensor z_prev = at::zeros({batch, z_dim}, opts);    // z_0
  for (int64_t i = 0; i < frames; ++i) {
    at::Tensor prior_t;
    if (run_prior) {
      at::Tensor h = body_step(zb, z_cache, at::cat({z_prev, w}, -1), &mem, i, rope);
      prior_t = at::addmm(prior_b, h, prior_wt);
      priors.push_back(prior_t);
    }
    at::Tensor z_t;
    if (!draw_z) {
      z_t = z->select(1, i);
    } else {
      at::Tensor eps = at::randn({batch, z_dim}, generator, opts);
      z_t = at::addcmul(prior_t.slice(1, 0, z_dim), at::exp(prior_t.slice(1, z_dim) * 0.5), eps, temperature);
    }
    at::Tensor h = body_step(sb, s_cache, at::cat({z_t, w}, -1), share ? nullptr : &mem, i, rope);
    at::Tensor logvar_t = at::linear(h, s_out_w, s_out_b);
    mem = past.has_value() ? past->select(1, i) : at::logaddexp(logvar_t, log_eps);
    logvars.push_back(logvar_t);
    zs.push_back(z_t);
    fed.push_back(mem);
    z_prev = z_t;
  }
  at::Tensor prior_all = priors.empty() ? at::empty({0}, opts) : at::stack(priors, 1);
  return {at::stack(logvars, 1), at::stack(zs, 1), prior_all, at::stack(fed, 1)};
}

TORCH_LIBRARY_IMPL(lightdvae, CompositeImplicitAutograd, m) { m.impl("transformer_decode", &transformer_decode); }

}  // namespace lightdvae
