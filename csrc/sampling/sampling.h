// Entry points and input checks of the sequential latent sampling loops (SPEC 7.3; schemas in
// csrc/lightdvae.cpp).  All sequences are time-major: (frames, batch, features).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/List.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Optional.h>

#include <tuple>

namespace lightdvae {

using Tensors3 = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

// ---- checks (sampling_checks.cpp); every message names the op and the argument.

// A (frames, batch, features) floating-point sequence with at least one frame.
void check_sequence(const char* op, const at::Tensor& t, const char* name);
// A Linear stack [w0, b0, ...] fed `in_dim` features, on `like`'s device and dtype; returns the
// output width (in_dim for an empty stack).
int64_t check_linears(const char* op, c10::ArrayRef<at::Tensor> layers, const char* name, int64_t in_dim,
                      const at::Tensor& like);
// Gaussian heads [w_mean, b_mean, w_logvar, b_logvar] on `hidden` features; returns z_dim.
int64_t check_heads(const char* op, c10::ArrayRef<at::Tensor> heads, const char* name, int64_t hidden,
                    const at::Tensor& like);
// nn.LSTM flat weights [w_ih, w_hh, b_ih, b_hh] per layer fed `in_dim` features; returns hidden size.
int64_t check_lstm(const char* op, c10::ArrayRef<at::Tensor> weights, const char* name, int64_t in_dim,
                   const at::Tensor& like);
// Noise (frames, batch, z_dim) on `like`'s device and dtype.
void check_noise(const char* op, const at::Tensor& eps, const char* name, int64_t frames, int64_t batch,
                 int64_t z_dim, const at::Tensor& like);
void check_activation(const char* op, int64_t activation);
// Every argument of the DKF posterior loop (eps may be undefined); returns z_dim.
int64_t check_dkf_posterior(const char* op, const at::Tensor& gx, const at::Tensor& eps, c10::ArrayRef<at::Tensor> z_to_g,
                            c10::ArrayRef<at::Tensor> posterior_mlp, c10::ArrayRef<at::Tensor> heads, double g_terms,
                            int64_t activation);
// Every argument of the RVAE posterior loop (eps may be undefined); returns z_dim.
int64_t check_rvae_posterior(const char* op, const at::Tensor& gx, const at::Tensor& eps, c10::ArrayRef<at::Tensor> z_embed,
                             c10::ArrayRef<at::Tensor> rnn_z, c10::ArrayRef<at::Tensor> posterior_mlp,
                             c10::ArrayRef<at::Tensor> heads, int64_t activation);
// Every argument of the SRNN posterior loop (eps may be undefined); returns z_dim.
int64_t check_srnn_posterior(const char* op, const at::Tensor& g, const at::Tensor& eps,
                             c10::ArrayRef<at::Tensor> posterior_mlp, c10::ArrayRef<at::Tensor> heads,
                             int64_t activation);

// ---- the loops (sampling_loops.cpp)

Tensors3 dkf_posterior(const at::Tensor& gx, const std::optional<at::Tensor>& eps, at::TensorList z_to_g,
                       at::TensorList posterior_mlp, at::TensorList heads, double g_terms, int64_t activation);
at::Tensor dkf_prior(const at::Tensor& eps, at::TensorList transition, double temperature);
Tensors3 rvae_posterior(const at::Tensor& gx, const std::optional<at::Tensor>& eps, at::TensorList z_embed,
                        at::TensorList rnn_z, at::TensorList posterior_mlp, at::TensorList heads, int64_t activation,
                        bool exact_lstm);
Tensors3 srnn_posterior(const at::Tensor& g, const std::optional<at::Tensor>& eps, at::TensorList posterior_mlp,
                        at::TensorList heads, int64_t activation);
Tensors3 srnn_own_past(const at::Tensor& z, const std::optional<at::Tensor>& h_true, const c10::List<bool>& use_own,
                       at::TensorList h_embed, at::TensorList rnn_h, at::TensorList decoder, at::TensorList decoder_out,
                       int64_t activation, bool exact_lstm, bool exact);
std::tuple<at::Tensor, at::Tensor> srnn_prior(const at::Tensor& eps, at::TensorList h_embed, at::TensorList rnn_h,
                                              at::TensorList prior_mlp, at::TensorList prior_heads,
                                              at::TensorList decoder, at::TensorList decoder_out, int64_t activation,
                                              double temperature, bool exact_lstm);

}  // namespace lightdvae
