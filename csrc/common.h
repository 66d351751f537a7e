// Shared macros and helpers of the lightdvae native kernels (CPU and CUDA).
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define LDV_HD __host__ __device__ __forceinline__
#elif defined(__GNUC__)
// Force inlining so that the element-wise math vectorises inside the CPU loops.
#define LDV_HD inline __attribute__((always_inline))
#else
#define LDV_HD inline
#endif

// GCC on x86-64 compiles the CPU inner loops twice (baseline SSE2 and AVX2+FMA) and picks one at
// run time, so one binary is fast on current CPUs and still runs on old ones.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(__CUDACC__)
#define LDV_X86_MULTIVERSION 1
#else
#define LDV_X86_MULTIVERSION 0
#endif

namespace lightdvae {

// Same codes as at::Reduction.
enum Reduction : int64_t { kNone = 0, kMean = 1, kSum = 2 };

template <typename To, typename From>
LDV_HD To bit_cast(From from) {
  static_assert(sizeof(To) == sizeof(From), "bit_cast needs equal sizes");
  To to;
  memcpy(&to, &from, sizeof(To));
  return to;
}

}  // namespace lightdvae

#if LDV_X86_MULTIVERSION
#define LDV_CPU_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define LDV_CPU_CLONES
#endif
