// The instruction set of the CPU loss kernels, chosen at run time.
//
// loss_kernels_cpu.h holds the block functions as always-inline bodies; loss_isa_cpu.cpp compiles
// them once per instruction set (GCC or Clang on x86-64: AVX-512 = x86-64-v4 with 512-bit vectors,
// AVX2 = x86-64-v3, and the baseline; elsewhere the baseline only; the AVX-512 float IS loops are
// hand-vectorised, fast_math_avx512.h) and the drivers in losses_cpu.cpp call them through the
// tables below.  The set in use is the best one both the CPU
// and ATen's capability allow (so ATEN_CPU_CAPABILITY=avx2 / default lowers it, as it does for
// ATen's kernels); set_loss_cpu_isa changes it for tests and benchmarks.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "losses/losses_math.h"

namespace lightdvae {
namespace cpu {

enum class Isa : int { kDefault = 0, kAvx2 = 1, kAvx512 = 2 };

const char* isa_name(Isa isa);
// The sets this CPU (and this build) can run, best first; the baseline is always there.
std::vector<Isa> supported_isas();
// The set the loss kernels use now.
Isa current_isa();
// Use `name` ("avx512", "avx2", "default"; "auto" = the automatic choice) from now on; an error
// names the sets this CPU supports.
void set_isa(const std::string& name);

// Block functions of one instruction set: each processes elements [b, e) (at most one block).
template <typename T>
struct ISKernels {
  T (*sum)(ISTerm<T>, const T*, const T*, int64_t, int64_t);
  void (*value)(ISTerm<T>, const T*, const T*, T*, int64_t, int64_t);
  // grad == nullptr: the upstream gradient is `scale`; else grad[i] * scale.
  void (*grad)(ISTerm<T>, const T*, const T*, const T*, T, T*, int64_t, int64_t);
  // Value (stored in out, summed when out == nullptr) and g_lv = scale * d value / d lv, in one pass.
  T (*fused)(ISTerm<T>, const T*, const T*, T, T*, T*, int64_t, int64_t);
};

// HasMuP / HasLvP: whether the prior mean / log-variance are given (absent = 0).
template <typename T, bool HasMuP, bool HasLvP>
struct KLKernels {
  T (*sum)(const T*, const T*, const T*, const T*, int64_t, int64_t);
  void (*value)(const T*, const T*, const T*, const T*, T*, int64_t, int64_t);
  // upstream gradient per element (grad[i] * scale) or the scalar `scale`.
  void (*grad_per_element)(const T*, const T*, const T*, const T*, const T*, T, T*, T*, T*, T*, int64_t, int64_t);
  void (*grad_scalar)(const T*, const T*, const T*, const T*, const T*, T, T*, T*, T*, T*, int64_t, int64_t);
  T (*fused)(const T*, const T*, const T*, const T*, T, T*, T*, T*, T*, T*, int64_t, int64_t);
};

template <typename T>
const ISKernels<T>& is_kernels(Isa isa);
template <typename T, bool HasMuP, bool HasLvP>
const KLKernels<T, HasMuP, HasLvP>& kl_kernels(Isa isa);

}  // namespace cpu
}  // namespace lightdvae
