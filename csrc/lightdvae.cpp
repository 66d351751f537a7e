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
  // KV-cached attention (SPEC 7.2): writes k_new / v_new into rows cache_len .. cache_len + n_new - 1 of
  // the caches (mutated in place: a!, b!) and returns the attention of q over rows 0 .. cache_len + n_new - 1.
  // softmax_scale None: 1 / sqrt(head_dim).  Inference only (no autograd formula).
  m.def(
      "kv_attention(Tensor q, Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor k_new, Tensor v_new, int cache_len, "
      "float? softmax_scale, bool causal) -> Tensor");
}
