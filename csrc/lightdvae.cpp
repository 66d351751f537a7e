// The lightdvae operator library: every schema of torch.ops.lightdvae is declared here; the CPU
// and CUDA kernels register their implementations next to their code (TORCH_LIBRARY_IMPL), and the
// Python package registers fake (meta) kernels and autograd formulas (lightdvae/ops/).
#include <Python.h>
#include <torch/library.h>

extern "C" {
// `import lightdvae._C` loads this library, which registers the ops; the module itself is empty.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(lightdvae, m) {
  // Fused losses (SPEC 7.1). reduction: 0 none, 1 mean, 2 sum (at::Reduction codes).
  m.def("is_divergence(Tensor power, Tensor logvar, float eps, int reduction) -> Tensor");
  m.def("is_divergence_backward(Tensor grad, Tensor power, Tensor logvar, float eps, int reduction) -> Tensor");
  m.def("gaussian_kl(Tensor mu_q, Tensor logvar_q, Tensor? mu_p, Tensor? logvar_p, int reduction) -> Tensor");
  m.def(
      "gaussian_kl_backward(Tensor grad, Tensor mu_q, Tensor logvar_q, Tensor? mu_p, Tensor? logvar_p, "
      "int reduction) -> (Tensor, Tensor, Tensor, Tensor)");
  // Forward and backward in one pass (used when the inputs require grad): the loss and its gradients for a
  // gradient of 1 on the output (for reduction none: the per-element derivatives); the backward scales them.
  m.def("is_divergence_with_grad(Tensor power, Tensor logvar, float eps, int reduction) -> (Tensor, Tensor)");
  m.def(
      "gaussian_kl_with_grad(Tensor mu_q, Tensor logvar_q, Tensor? mu_p, Tensor? logvar_p, int reduction) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // The instruction set of the CPU loss kernels (csrc/losses/loss_isa.h): returns the one in use after setting
  // `isa` ("avx512", "avx2", "default", "auto") when given; loss_cpu_isas lists those this CPU runs, best first.
  m.def("loss_cpu_isa(str? isa=None) -> str");
  m.def("loss_cpu_isas() -> str[]");
  // Dropout with a mask hashed from (seed, element index) (csrc/dropout/dropout_cpu.cpp; CPU): x * keep / (1 - p).
  // Linear in x with a mask fixed by the seed, so its backward is the op itself on the gradient.
  m.def("dropout(Tensor x, float p, int seed) -> Tensor");
  // relu then dropout in one pass (the same mask as dropout's for the seed), and its backward from the output y:
  // grad / (1 - p) where y > 0 (dropout_cpu.cpp; CPU).
  m.def("relu_dropout(Tensor x, float p, int seed) -> Tensor");
  m.def("relu_dropout_backward(Tensor grad, Tensor y, float p) -> Tensor");
  // tanh vectorised for float32 (csrc/activations/tanh_cpu.cpp; CPU; float64 takes ATen's): the MLP activation.
  m.def("tanh(Tensor x) -> Tensor");
  // The enhancement's M-step (csrc/enhance/enhance_cpu.cpp; CPU; lightdvae/enhance/noise.py): IS-NMF updates of W
  // (batch, F, K) then H (batch, K, frames), W's columns normalised, the gain g (batch, frames), all in place, for the
  // speech variance `speech` and the mixture's `power` (batch, frames, F), on the frames where mask (bool, batch x
  // frames) is true; returns the IS divergence of the updated model per utterance (batch,).  No autograd.
  m.def(
      "nmf_m_step(Tensor(a!) W, Tensor(b!) H, Tensor(c!) g, Tensor power, Tensor speech, Tensor mask) -> Tensor");
  // The E-step's reconstruction term (csrc/enhance/enhance_cpu.cpp; CPU; lightdvae/enhance/noise.py): per
  // utterance the IS divergence of the mixture's power against gain * exp(logvar) + noise summed over the frames
  // where mask is true (batch,), and with with_grad its gradient in logvar (else an empty tensor).
  m.def(
      "mixture_is(Tensor power, Tensor logvar, Tensor gain, Tensor noise, Tensor mask, float eps, bool with_grad) "
      "-> (Tensor, Tensor)");
  // One LSTM layer over a sequence with its explicit backward (csrc/recurrent/lstm_cpu.cpp; CPU; lightdvae/ops/lstm.py):
  // x (frames, batch, input) from zero state, reverse = from the last frame to the first; returns the outputs h
  // (frames, batch, hidden), the activated gates [i, f, g, o] (frames, batch, 4 hidden) and [c ; tanh(c)] (2, frames,
  // batch, hidden), which the backward takes; the backward returns dx (empty unless input_grad), dw_ih, dw_hh, db.
  m.def(
      "lstm_layer(Tensor x, Tensor w_ih, Tensor w_hh, Tensor b_ih, Tensor b_hh, bool reverse) -> (Tensor, Tensor, "
      "Tensor)");
  m.def(
      "lstm_layer_backward(Tensor? grad_out, Tensor x, Tensor w_ih, Tensor w_hh, Tensor out, Tensor gates, "
      "Tensor cell, bool reverse, bool input_grad) -> (Tensor, Tensor, Tensor, Tensor)");
  // KV-cached attention (SPEC 7.2): writes k_new / v_new into rows cache_len .. cache_len + n_new - 1 of
  // the caches (mutated in place: a!, b!) and returns the attention of q over rows 0 .. cache_len + n_new - 1.
  // softmax_scale None: 1 / sqrt(head_dim).  Inference only (no autograd formula).
  m.def(
      "kv_attention(Tensor q, Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor k_new, Tensor v_new, int cache_len, "
      "float? softmax_scale, bool causal) -> Tensor");

  // The frame-by-frame decoding loop of HiT-DVAE / LigHT-DVAE (csrc/transformer/decode_loop.cpp; inference only,
  // CompositeImplicitAutograd): the bodies' weights packed as DecoderBody._pack makes them; z None draws z from
  // the prior decoder, past None feeds back the decoder's own output; z_body empty: one body for both passes.
  // Returns (logvar, z, prior [mean ; logvar] or an empty tensor, past_feats).  activation: 0 tanh, 1 relu.
  // exact=False: a CPU batch of at most 4 runs on raw pointers (within float rounding, not bit for bit).
  m.def(
      "transformer_decode(Tensor w, Tensor? z, Tensor? past, Tensor[] s_body, Tensor[] z_body, Tensor s_out_w, "
      "Tensor s_out_b, Tensor prior_w, Tensor prior_b, int frames, int heads, float ln_eps, bool norm_first, "
      "int activation, bool run_prior, float log_feature_eps, float temperature, Generator? generator, "
      "bool exact=True, Tensor? rope_cos=None, Tensor? rope_sin=None) "
      "-> (Tensor logvar, Tensor z, Tensor prior, Tensor past_feats)");

  // Sequential latent sampling loops (SPEC 7.3), CompositeImplicitAutograd (csrc/sampling/).
  // Sequences are time-major (frames, batch, features).  Weights are flat lists in nn.Module layout:
  // Linear stacks [w0, b0, w1, b1, ...], Gaussian heads [w_mean, b_mean, w_logvar, b_logvar], LSTMs
  // nn.LSTM._flat_weights.  activation: 0 tanh, 1 relu.  eps = None is the deterministic mode (means).
  // exact_lstm: step LSTMs with at::lstm (nn.LSTM's own kernel) instead of the ATen cell.
  m.def(
      "dkf_posterior(Tensor gx, Tensor? eps, Tensor[] z_to_g, Tensor[] posterior_mlp, Tensor[] heads, "
      "float g_terms, int activation) -> (Tensor z, Tensor mean, Tensor logvar)");
  m.def("dkf_prior(Tensor eps, Tensor[] transition, float temperature) -> Tensor");
  // The posterior loops with an explicit backward through time (csrc/sampling/posterior_bptt.cpp): the forward
  // returns the outputs of the composite loop and a flat workspace of every per-step activation; the backward takes
  // the output gradients and returns the gradient of every input (grad_eps empty when eps is None).
  m.def(
      "dkf_posterior_bptt(Tensor gx, Tensor? eps, Tensor[] z_to_g, Tensor[] posterior_mlp, Tensor[] heads, "
      "float g_terms, int activation) -> (Tensor z, Tensor mean, Tensor logvar, Tensor workspace)");
  m.def(
      "dkf_posterior_bptt_backward(Tensor grad_z, Tensor grad_mean, Tensor grad_logvar, Tensor? eps, Tensor z, "
      "Tensor logvar, Tensor workspace, Tensor[] z_to_g, Tensor[] posterior_mlp, Tensor[] heads, float g_terms, "
      "int activation) -> (Tensor grad_gx, Tensor grad_eps, Tensor[] grad_z_to_g, Tensor[] grad_posterior_mlp, "
      "Tensor[] grad_heads)");
  m.def(
      "rvae_posterior_bptt(Tensor gx, Tensor? eps, Tensor[] z_embed, Tensor[] rnn_z, Tensor[] posterior_mlp, "
      "Tensor[] heads, int activation) -> (Tensor z, Tensor mean, Tensor logvar, Tensor workspace)");
  m.def(
      "rvae_posterior_bptt_backward(Tensor grad_z, Tensor grad_mean, Tensor grad_logvar, Tensor? eps, Tensor gx, "
      "Tensor z, Tensor logvar, Tensor workspace, Tensor[] z_embed, Tensor[] rnn_z, Tensor[] posterior_mlp, "
      "Tensor[] heads, int activation) -> (Tensor grad_gx, Tensor grad_eps, Tensor[] grad_z_embed, "
      "Tensor[] grad_rnn_z, Tensor[] grad_posterior_mlp, Tensor[] grad_heads)");
  m.def(
      "srnn_posterior_bptt(Tensor g, Tensor? eps, Tensor[] posterior_mlp, Tensor[] heads, int activation) "
      "-> (Tensor z, Tensor mean, Tensor logvar, Tensor workspace)");
  m.def(
      "srnn_posterior_bptt_backward(Tensor grad_z, Tensor grad_mean, Tensor grad_logvar, Tensor? eps, Tensor g, "
      "Tensor z, Tensor logvar, Tensor workspace, Tensor[] posterior_mlp, Tensor[] heads, int activation) "
      "-> (Tensor grad_g, Tensor grad_eps, Tensor[] grad_posterior_mlp, Tensor[] grad_heads)");
  // Testing switch (posterior_bptt.cpp): with `enabled` true the CPU runs the CUDA row loops' code serially
  // (sampling/row_loops.h) in the DKF and SRNN ops above; returns the setting (after the change, if any).
  m.def("_row_loops_on_cpu(bool? enabled=None) -> bool");
  m.def(
      "rvae_posterior(Tensor gx, Tensor? eps, Tensor[] z_embed, Tensor[] rnn_z, Tensor[] posterior_mlp, "
      "Tensor[] heads, int activation, bool exact_lstm) -> (Tensor z, Tensor mean, Tensor logvar)");
  m.def(
      "srnn_posterior(Tensor g, Tensor? eps, Tensor[] posterior_mlp, Tensor[] heads, int activation) "
      "-> (Tensor z, Tensor mean, Tensor logvar)");
  m.def(
      "srnn_own_past(Tensor z, Tensor? h_true, bool[] use_own, Tensor[] h_embed, Tensor[] rnn_h, "
      "Tensor[] decoder, Tensor[] decoder_out, int activation, bool exact_lstm, bool exact=True) "
      "-> (Tensor logvar, Tensor h_used, Tensor h_own)");
  m.def(
      "srnn_prior(Tensor eps, Tensor[] h_embed, Tensor[] rnn_h, Tensor[] prior_mlp, Tensor[] prior_heads, "
      "Tensor[] decoder, Tensor[] decoder_out, int activation, float temperature, bool exact_lstm) "
      "-> (Tensor z, Tensor logvar)");
}
