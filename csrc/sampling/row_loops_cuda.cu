// The posterior loops' sequential parts on CUDA (issue 17, item 4): each loop, forward or backward through time, is
// one kernel launch with one thread block per batch row walking every frame (the whole recurrence in one persistent
// kernel: a row's state is a few vectors, and its weights, a few tens of kilobytes, stay in L1/L2 across steps).
// The blocks' code is row_loops.h, shared with the CPU's serial run of it that the tests check without a GPU.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include "sampling/row_loops.h"

namespace lightdvae::rows {
namespace {

// Row blockIdx.x of the loop `a`: its row_loop with the thread block as the team.
template <typename Args>
__global__ void row_kernel(const Args a) {
  row_loop(BlockTeam{}, a, static_cast<int64_t>(blockIdx.x));
}

}  // namespace

// Rows beyond the grid's x limit (2^31 - 1) are not a concern: the batch is a tensor dimension checked by the caller.
template <typename Args>
void launch(const Args& a, int threads) {
  if (a.batch == 0 || a.frames == 0) return;
  row_kernel<Args><<<static_cast<unsigned>(a.batch), threads, 0, at::cuda::getCurrentCUDAStream()>>>(a);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

#define LDV_INSTANTIATE(T)                                  \
  template void launch(const DkfForward<T>&, int);          \
  template void launch(const DkfBackward<T>&, int);         \
  template void launch(const SrnnForward<T>&, int);         \
  template void launch(const SrnnBackward<T>&, int);        \
  template void launch(const RvaeForward<T>&, int);         \
  template void launch(const RvaeBackward<T>&, int);       \
  template void launch(const OwnPast<T>&, int);
LDV_INSTANTIATE(float)
LDV_INSTANTIATE(double)
#undef LDV_INSTANTIATE

}  // namespace lightdvae::rows
