// Input checks of the sampling loops: shapes, dtypes and devices of the sequences and of every
// weight, with messages that name the op, the argument and the layer.
#include <c10/util/Exception.h>

#include "sampling/cells.h"
#include "sampling/sampling.h"

namespace lightdvae {
namespace {

void check_like(const char* op, const at::Tensor& t, const char* name, size_t index, const at::Tensor& like) {
  TORCH_CHECK(t.defined(), op, ": ", name, "[", index, "] is undefined");
  TORCH_CHECK(t.device() == like.device(), op, ": ", name, "[", index, "] is on ", t.device(),
              " but the input sequence is on ", like.device(), "; move the model and its inputs to one device");
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), op, ": ", name, "[", index, "] is ", t.scalar_type(),
              " but the input sequence is ", like.scalar_type(), "; cast the model and its inputs to one dtype");
}

void check_matrix(const char* op, const at::Tensor& w, const char* name, size_t index, int64_t rows, int64_t cols) {
  TORCH_CHECK(w.dim() == 2 && w.size(0) == rows && w.size(1) == cols, op, ": ", name, "[", index,
              "] must be a (", rows, ", ", cols, ") weight, got shape ", w.sizes());
}

void check_vector(const char* op, const at::Tensor& b, const char* name, size_t index, int64_t size) {
  TORCH_CHECK(b.dim() == 1 && b.size(0) == size, op, ": ", name, "[", index, "] must be a (", size,
              ",) bias, got shape ", b.sizes());
}

}  // namespace

void check_sequence(const char* op, const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 3, op, ": ", name, " must be (frames, batch, features), got shape ", t.sizes());
  TORCH_CHECK(t.size(0) > 0, op, ": ", name, " has no frames");
  TORCH_CHECK(t.is_floating_point(), op, ": ", name, " must be floating point, got ", t.scalar_type());
}

int64_t check_linears(const char* op, c10::ArrayRef<at::Tensor> layers, const char* name, int64_t in_dim,
                      const at::Tensor& like) {
  TORCH_CHECK(layers.size() % 2 == 0, op, ": ", name, " must list Linear layers as [weight, bias, ...], got ",
              layers.size(), " tensors");
  int64_t width = in_dim;
  for (size_t i = 0; i < layers.size(); i += 2) {
    check_like(op, layers[i], name, i, like);
    check_like(op, layers[i + 1], name, i + 1, like);
    TORCH_CHECK(layers[i].dim() == 2, op, ": ", name, "[", i, "] must be a 2-D weight, got shape ",
                layers[i].sizes());
    const int64_t out = layers[i].size(0);
    check_matrix(op, layers[i], name, i, out, width);
    check_vector(op, layers[i + 1], name, i + 1, out);
    width = out;
  }
  return width;
}

int64_t check_heads(const char* op, c10::ArrayRef<at::Tensor> heads, const char* name, int64_t hidden,
                    const at::Tensor& like) {
  TORCH_CHECK(heads.size() == 4, op, ": ", name, " must be [w_mean, b_mean, w_logvar, b_logvar], got ",
              heads.size(), " tensors");
  for (size_t i = 0; i < 4; ++i) {
    check_like(op, heads[i], name, i, like);
  }
  TORCH_CHECK(heads[0].dim() == 2, op, ": ", name, "[0] must be a 2-D weight, got shape ", heads[0].sizes());
  const int64_t z_dim = heads[0].size(0);
  for (size_t i = 0; i < 4; i += 2) {
    check_matrix(op, heads[i], name, i, z_dim, hidden);
    check_vector(op, heads[i + 1], name, i + 1, z_dim);
  }
  return z_dim;
}

int64_t check_lstm(const char* op, c10::ArrayRef<at::Tensor> weights, const char* name, int64_t in_dim,
                   const at::Tensor& like) {
  TORCH_CHECK(!weights.empty() && weights.size() % 4 == 0, op, ": ", name,
              " must be nn.LSTM's flat weights [w_ih, w_hh, b_ih, b_hh] per layer (with biases), got ",
              weights.size(), " tensors");
  for (size_t i = 0; i < weights.size(); ++i) {
    check_like(op, weights[i], name, i, like);
  }
  TORCH_CHECK(weights[1].dim() == 2, op, ": ", name, "[1] must be a 2-D weight, got shape ", weights[1].sizes());
  const int64_t hidden = weights[1].size(1);
  int64_t width = in_dim;
  for (size_t i = 0; i < weights.size(); i += 4) {
    check_matrix(op, weights[i], name, i, 4 * hidden, width);
    check_matrix(op, weights[i + 1], name, i + 1, 4 * hidden, hidden);
    check_vector(op, weights[i + 2], name, i + 2, 4 * hidden);
    check_vector(op, weights[i + 3], name, i + 3, 4 * hidden);
    width = hidden;
  }
  return hidden;
}

void check_noise(const char* op, const at::Tensor& eps, const char* name, int64_t frames, int64_t batch,
                 int64_t z_dim, const at::Tensor& like) {
  TORCH_CHECK(eps.dim() == 3 && eps.size(0) == frames && eps.size(1) == batch && eps.size(2) == z_dim, op, ": ",
              name, " must be (frames, batch, z_dim) = (", frames, ", ", batch, ", ", z_dim, "), got shape ",
              eps.sizes());
  TORCH_CHECK(eps.device() == like.device(), op, ": ", name, " is on ", eps.device(), " but the input is on ",
              like.device());
  TORCH_CHECK(eps.scalar_type() == like.scalar_type(), op, ": ", name, " is ", eps.scalar_type(),
              " but the input is ", like.scalar_type());
}

void check_activation(const char* op, int64_t activation) {
  TORCH_CHECK(activation == sampling::kTanh || activation == sampling::kRelu, op,
              ": activation must be 0 (tanh) or 1 (relu), got ", activation);
}

int64_t check_dkf_posterior(const char* op, const at::Tensor& gx, const at::Tensor& eps, c10::ArrayRef<at::Tensor> z_to_g,
                            c10::ArrayRef<at::Tensor> posterior_mlp, c10::ArrayRef<at::Tensor> heads, double g_terms,
                            int64_t activation) {
  check_sequence(op, gx, "gx");
  check_activation(op, activation);
  TORCH_CHECK(g_terms > 0, op, ": g_terms must be positive, got ", g_terms);
  const int64_t g_dim = gx.size(2);
  const int64_t hidden = check_linears(op, posterior_mlp, "posterior_mlp", g_dim, gx);
  const int64_t z_dim = check_heads(op, heads, "heads", hidden, gx);
  TORCH_CHECK(check_linears(op, z_to_g, "z_to_g", z_dim, gx) == g_dim, op, ": z_to_g must map z_dim = ", z_dim,
              " features to the width of gx, ", g_dim);
  if (eps.defined()) {
    check_noise(op, eps, "eps", gx.size(0), gx.size(1), z_dim, gx);
  }
  return z_dim;
}

int64_t check_rvae_posterior(const char* op, const at::Tensor& gx, const at::Tensor& eps, c10::ArrayRef<at::Tensor> z_embed,
                             c10::ArrayRef<at::Tensor> rnn_z, c10::ArrayRef<at::Tensor> posterior_mlp,
                             c10::ArrayRef<at::Tensor> heads, int64_t activation) {
  check_sequence(op, gx, "gx");
  check_activation(op, activation);
  TORCH_CHECK(heads.size() == 4 && heads[0].dim() == 2, op,
              ": heads must be [w_mean, b_mean, w_logvar, b_logvar] with 2-D weights");
  const int64_t z_dim = heads[0].size(0);
  const int64_t embed_dim = check_linears(op, z_embed, "z_embed", z_dim, gx);
  const int64_t gz_dim = check_lstm(op, rnn_z, "rnn_z", embed_dim, gx);
  const int64_t hidden = check_linears(op, posterior_mlp, "posterior_mlp", gx.size(2) + gz_dim, gx);
  check_heads(op, heads, "heads", hidden, gx);
  if (eps.defined()) {
    check_noise(op, eps, "eps", gx.size(0), gx.size(1), z_dim, gx);
  }
  return z_dim;
}

int64_t check_srnn_posterior(const char* op, const at::Tensor& g, const at::Tensor& eps,
                             c10::ArrayRef<at::Tensor> posterior_mlp, c10::ArrayRef<at::Tensor> heads,
                             int64_t activation) {
  check_sequence(op, g, "g");
  check_activation(op, activation);
  TORCH_CHECK(heads.size() == 4 && heads[0].dim() == 2, op,
              ": heads must be [w_mean, b_mean, w_logvar, b_logvar] with 2-D weights");
  const int64_t z_dim = heads[0].size(0);
  const int64_t hidden = check_linears(op, posterior_mlp, "posterior_mlp", g.size(2) + z_dim, g);
  check_heads(op, heads, "heads", hidden, g);
  if (eps.defined()) {
    check_noise(op, eps, "eps", g.size(0), g.size(1), z_dim, g);
  }
  return z_dim;
}

}  // namespace lightdvae
