// Helpers shared by the CUDA kernels of lightdvae.
#pragma once

namespace lightdvae {

// Accumulation type: float for half, bfloat16 and float; double for double.
template <typename T>
struct AccType {
  using type = float;
};
template <>
struct AccType<double> {
  using type = double;
};

// N elements loaded or stored as one aligned vector (16 bytes for the kernels' choices of N).
template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

}  // namespace lightdvae
