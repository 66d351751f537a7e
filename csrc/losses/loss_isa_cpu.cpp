// The per-instruction-set copies of the CPU loss block functions and the run-time choice among them
// (loss_isa.h).
#include "losses/loss_isa.h"

#include <ATen/Version.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <atomic>

#include "common.h"
#include "losses/fast_math_avx512.h"
#include "losses/loss_kernels_cpu.h"

namespace lightdvae {
namespace cpu {

#define LDV_ISA_NS baseline
#define LDV_ISA_TARGET
#include "losses/loss_blocks_isa.inc"
#undef LDV_ISA_NS
#undef LDV_ISA_TARGET

#if LDV_X86_MULTIVERSION
#define LDV_ISA_NS avx2
#define LDV_ISA_TARGET __attribute__((target("arch=x86-64-v3")))
#include "losses/loss_blocks_isa.inc"
#undef LDV_ISA_NS
#undef LDV_ISA_TARGET

// 512-bit vectors: GCC's tuning would otherwise keep 256-bit ones on AVX-512 CPUs.
#define LDV_ISA_NS avx512
#define LDV_ISA_TARGET __attribute__((target("arch=x86-64-v4,prefer-vector-width=512")))
#include "losses/loss_blocks_isa.inc"

// The IS loops of float blocks in the fast domain run the hand-vectorised AVX-512 loop (fast_math_avx512.h).
namespace avx512 {
template <>
LDV_ISA_TARGET float is_sum<float>(ISTerm<float> op, const float* s, const float* lv, int64_t b, int64_t e) {
  if (!is_block_fast(op, s, lv, b, e, false)) return is_sum_loop<float, false>(op, s, lv, b, e);
  return avx512_math::is_loop<false, false>(op, s, lv, 0.0f, nullptr, nullptr, b, e);
}
template <>
LDV_ISA_TARGET float is_fused<float>(ISTerm<float> op, const float* s, const float* lv, float scale, float* out,
                                     float* g_lv, int64_t b, int64_t e) {
  if (!is_block_fast(op, s, lv, b, e, false)) return is_fused_loop<float, false>(op, s, lv, scale, out, g_lv, b, e);
  return out != nullptr ? avx512_math::is_loop<true, true>(op, s, lv, scale, out, g_lv, b, e)
                        : avx512_math::is_loop<false, true>(op, s, lv, scale, out, g_lv, b, e);
}
}  // namespace avx512
#undef LDV_ISA_NS
#undef LDV_ISA_TARGET
#endif

namespace {

constexpr int kAuto = -1;
std::atomic<int> forced{kAuto};  // set_isa's choice, or kAuto

// The best set the CPU runs (x86-64-v4 = AVX-512 F/BW/DQ/VL, x86-64-v3 = AVX2 + FMA + BMI).
Isa cpu_best() {
#if LDV_X86_MULTIVERSION
  __builtin_cpu_init();
  if (__builtin_cpu_supports("x86-64-v4")) return Isa::kAvx512;
  if (__builtin_cpu_supports("x86-64-v3")) return Isa::kAvx2;
#endif
  return Isa::kDefault;
}

// ATen's capability ("AVX512", "AVX2", "DEFAULT", ...; lowered by ATEN_CPU_CAPABILITY).
Isa aten_capability() {
  const std::string cap = at::get_cpu_capability();
  if (cap == "AVX512") return Isa::kAvx512;
  if (cap == "AVX2") return Isa::kAvx2;
  return Isa::kDefault;
}

Isa automatic() {
  static const Isa isa = std::min(cpu_best(), aten_capability());
  return isa;
}

}  // namespace

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAvx512:
      return "avx512";
    case Isa::kAvx2:
      return "avx2";
    default:
      return "default";
  }
}

std::vector<Isa> supported_isas() {
  std::vector<Isa> out;
  for (int i = static_cast<int>(cpu_best()); i >= 0; --i) out.push_back(static_cast<Isa>(i));
  return out;
}

Isa current_isa() {
  const int f = forced.load(std::memory_order_relaxed);
  return f == kAuto ? automatic() : static_cast<Isa>(f);
}

void set_isa(const std::string& name) {
  if (name == "auto") {
    forced.store(kAuto);
    return;
  }
  std::string names;
  for (Isa isa : supported_isas()) {
    if (name == isa_name(isa)) {
      forced.store(static_cast<int>(isa));
      return;
    }
    names += std::string(names.empty() ? "" : ", ") + isa_name(isa);
  }
  TORCH_CHECK(false, "lightdvae::loss_cpu_isa: '", name, "' is not an instruction set this CPU and build run; ",
              "give one of: auto, ", names);
}

template <typename T>
const ISKernels<T>& is_kernels(Isa isa) {
#if LDV_X86_MULTIVERSION
  if (isa == Isa::kAvx512) return avx512::is_table<T>();
  if (isa == Isa::kAvx2) return avx2::is_table<T>();
#endif
  (void)isa;
  return baseline::is_table<T>();
}

template <typename T, bool MP, bool LP>
const KLKernels<T, MP, LP>& kl_kernels(Isa isa) {
#if LDV_X86_MULTIVERSION
  if (isa == Isa::kAvx512) return avx512::kl_table<T, MP, LP>();
  if (isa == Isa::kAvx2) return avx2::kl_table<T, MP, LP>();
#endif
  (void)isa;
  return baseline::kl_table<T, MP, LP>();
}

#define LDV_INSTANTIATE(T)                                                  \
  template const ISKernels<T>& is_kernels<T>(Isa);                          \
  template const KLKernels<T, false, false>& kl_kernels<T, false, false>(Isa); \
  template const KLKernels<T, false, true>& kl_kernels<T, false, true>(Isa);   \
  template const KLKernels<T, true, false>& kl_kernels<T, true, false>(Isa);   \
  template const KLKernels<T, true, true>& kl_kernels<T, true, true>(Isa);
LDV_INSTANTIATE(float)
LDV_INSTANTIATE(double)
#undef LDV_INSTANTIATE

namespace {

std::string loss_cpu_isa(const std::optional<std::string>& isa) {
  if (isa.has_value()) set_isa(*isa);
  return isa_name(current_isa());
}

std::vector<std::string> loss_cpu_isas() {
  std::vector<std::string> out;
  for (Isa isa : supported_isas()) out.emplace_back(isa_name(isa));
  return out;
}

}  // namespace

// No tensor arguments: the dispatcher runs the CompositeImplicitAutograd kernel.
TORCH_LIBRARY_IMPL(lightdvae, CompositeImplicitAutograd, m) {
  m.impl("loss_cpu_isa", &loss_cpu_isa);
  m.impl("loss_cpu_isas", &loss_cpu_isas);
}

}  // namespace cpu
}  // namespace lightdvae
