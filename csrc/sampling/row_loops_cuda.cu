// The posterior loops' sequential parts on CUDA (issue 17, item 4): each loop, forward or backward through time, is
// one kernel launch with one thread block per batch row walking every frame (the whole recurrence in one persistent
// kernel: a row's state is a few vectors, and its weights, a few tens of kilobytes, stay in L1/L2 across steps).
// The blocks' code is row_loops.h, shared with the CPU's serial run of it that the tests check without a GPU.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include "sampling/row_loops.h"

namespace lightdvae::rows {
namespace {

template <typename T>
__global__ void dkf_forward_kernel(const DkfForward<T> a) {
  dkf_forward_row(BlockTeam{}, a, static_cast<int64_t>(blockIdx.x));
}

template <typename T>
__global__ void dkf_backward_kernel(const DkfBackward<T> a) {
  dkf_backward_row(BlockTeam{}, a, static_cast<int64_t>(blockIdx.x));
}

template <typename T>
__global__ void srnn_forward_kernel(const SrnnForward<T> a) {
  srnn_forward_row(BlockTeam{}, a, static_cast<int64_t>(blockIdx.x));
}

template <typename T>
__global__ void srnn_backward_kernel(const SrnnBackward<T> a) {
  srnn_backward_row(BlockTeam{}, a, static_cast<int64_t>(blockIdx.x));
}

template <typename T>
__global__ void rvae_forward_kernel(const RvaeForward<T> a) {
  rvae_forward_row(BlockTeam{}, a, static_cast<int64_t>(blockIdx.x));
}

template <typename T>
__global__ void rvae_backward_kernel(const RvaeBackward<T> a) {
  rvae_backward_row(BlockTeam{}, a, static_cast<int64_t>(blockIdx.x));
}

// Rows beyond the grid's x limit (2^31 - 1) are not a concern: the batch is a tensor dimension checked by the caller.
template <typename Args, typename Kernel>
void launch_kernel(Kernel kernel, const Args& a, int threads) {
  if (a.batch == 0 || a.frames == 0) return;
  kernel<<<static_cast<unsigned>(a.batch), threads, 0, at::cuda::getCurrentCUDAStream()>>>(a);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

template <typename T>
void launch(const DkfForward<T>& a, int threads) {
  launch_kernel(dkf_forward_kernel<T>, a, threads);
}
template <typename T>
void launch(const DkfBackward<T>& a, int threads) {
  launch_kernel(dkf_backward_kernel<T>, a, threads);
}
template <typename T>
void launch(const SrnnForward<T>& a, int threads) {
  launch_kernel(srnn_forward_kernel<T>, a, threads);
}
template <typename T>
void launch(const SrnnBackward<T>& a, int threads) {
  launch_kernel(srnn_backward_kernel<T>, a, threads);
}

template <typename T>
void launch(const RvaeForward<T>& a, int threads) {
  launch_kernel(rvae_forward_kernel<T>, a, threads);
}
template <typename T>
void launch(const RvaeBackward<T>& a, int threads) {
  launch_kernel(rvae_backward_kernel<T>, a, threads);
}

#define LDV_INSTANTIATE(T)                                    \
  template void launch<T>(const DkfForward<T>&, int);         \
  template void launch<T>(const DkfBackward<T>&, int);        \
  template void launch<T>(const SrnnForward<T>&, int);        \
  template void launch<T>(const SrnnBackward<T>&, int);       \
  template void launch<T>(const RvaeForward<T>&, int);        \
  template void launch<T>(const RvaeBackward<T>&, int);
LDV_INSTANTIATE(float)
LDV_INSTANTIATE(double)
#undef LDV_INSTANTIATE

}  // namespace lightdvae::rows
