// The posterior loops one batch row at a time, for a team of threads (issue 17, item 4: the loops on CUDA).
//
// On CUDA the explicit backward through time (posterior_bptt.cpp) runs each sequential loop as one kernel launch:
// one thread block per batch row walks all frames, its threads sharing each layer's output units, with a barrier
// between layers; everything batched over the steps (input projections, activation derivatives, weight gradients)
// stays the orchestration's ATen calls, as on the CPU.  The ATen loop it replaces launches some twenty kernels per
// step, forward and backward, each a few microseconds of launch for a few thousand multiply-adds.
//
// The row functions here are that kernel's whole body.  They are written for a `Team` (rank, size, sync): the CUDA
// kernel passes the thread block, the CPU a team of one (SerialTeam), so the same code, indices and order of
// operations run, and are tested, on a machine without a GPU (`lightdvae::_row_loops_on_cpu`, tests/
// test_ops_sampling_rows.py).  Each output sums its terms in order from its bias (or from the value it accumulates
// into), as the raw-pointer CPU loops do (small_gemm.h), so the row path and the raw path differ by contraction of
// multiply-adds at most.
//
// Conventions: a sequence region is (frames, batch, width) contiguous, its row (t, b) at p + (t * batch + b) * width.
// Forward layers hold W^T (in, out) contiguous (output j reads a column: adjacent threads, adjacent addresses);
// backward layers hold W (out, in) contiguous (input gradient k reads a column of W).  Every phase of a team ends
// with team.sync(): what a phase writes, the next phase may read in any thread.
#pragma once

#include <cmath>
#include <cstdint>

// Host and device code (not forced inline, unlike common.h's LDV_HD for the element-wise kernels).
#if defined(__CUDACC__)
#define LDV_ROW __host__ __device__
#else
#define LDV_ROW
#endif

namespace lightdvae::rows {

// The deepest Linear stack the row loops take; deeper stacks run the ATen loop (posterior_bptt.cpp).
constexpr int kMaxLayers = 8;

// Activation codes (sampling::kTanh / kRelu) and "none" for the heads.
constexpr int kNone = -1;

// A team of one: the CPU runs the rows' code serially (tests; the GPU's logic without a GPU).
struct SerialTeam {
  LDV_ROW int rank() const { return 0; }
  LDV_ROW int size() const { return 1; }
  LDV_ROW void sync() const {}
};

#if defined(__CUDACC__)
// The thread block: one row per block.
struct BlockTeam {
  __device__ int rank() const { return static_cast<int>(threadIdx.x); }
  __device__ int size() const { return static_cast<int>(blockDim.x); }
  __device__ void sync() const { __syncthreads(); }
};
#endif

template <typename T>
LDV_ROW inline T exp_(T x) {
#if defined(__CUDA_ARCH__)
  return exp(x);
#else
  return std::exp(x);
#endif
}

template <typename T>
LDV_ROW inline T tanh_(T x) {
#if defined(__CUDA_ARCH__)
  return tanh(x);
#else
  return std::tanh(x);
#endif
}

// sampling::kTanh = 0, kRelu = 1 (cells.h); relu keeps NaN as ATen does (NaN > 0 is false, and so is NaN < 0).
template <typename T>
LDV_ROW inline T activate(T x, int activation) {
  if (activation == 0) return tanh_(x);
  if (activation == 1) return x > T(0) ? x : (x < T(0) ? T(0) : x);
  return x;
}

// One Linear layer: forward w = W^T (in, out) and its bias; backward w = W (out, in), b unused.
template <typename T>
struct Lin {
  const T* w = nullptr;
  const T* b = nullptr;
  int in = 0, out = 0;
};

template <typename T>
struct Stack {
  Lin<T> l[kMaxLayers];
  int n = 0;
};

// Pointers to (frames, batch, width) regions, one per layer of a stack (the workspace of posterior_bptt.cpp).
template <typename T>
struct Regions {
  T* p[kMaxLayers] = {};
};

LDV_ROW inline int64_t at(int64_t t, int64_t b, int64_t batch, int64_t width) { return (t * batch + b) * width; }

// y = act(x W^T + b): y[j] = act(b[j] + sum_k x[k] w[k][j]), the terms in order of k.
template <typename T, typename Team>
LDV_ROW void linear(const Team& team, T* y, const T* x, const Lin<T>& l, int activation) {
  for (int j = team.rank(); j < l.out; j += team.size()) {
    T acc = l.b[j];
    for (int k = 0; k < l.in; ++k) acc += x[k] * l.w[static_cast<int64_t>(k) * l.out + j];
    y[j] = activate(acc, activation);
  }
  team.sync();
}

// y (n) = (accumulate ? y : 0) + x (m) . w, w (m, n) with row stride ldw: the input gradient of a layer W (m, n).
template <typename T, typename Team>
LDV_ROW void times(const Team& team, T* y, const T* x, const T* w, int m, int n, int64_t ldw, bool accumulate) {
  for (int k = team.rank(); k < n; k += team.size()) {
    T acc = accumulate ? y[k] : T(0);
    for (int j = 0; j < m; ++j) acc += x[j] * w[j * ldw + k];
    y[k] = acc;
  }
  team.sync();
}

// z = mean + exp(logvar / 2) * eps (the mean without noise) from stats = [mean | logvar].
template <typename T, typename Team>
LDV_ROW void draw(const Team& team, T* z, const T* stats, const T* eps, int z_dim) {
  for (int k = team.rank(); k < z_dim; k += team.size()) {
    z[k] = eps ? stats[k] + eps[k] * exp_(stats[z_dim + k] * T(0.5)) : stats[k];
  }
  team.sync();
}

// Layers first.. of a stack from x, layer i's output into its region at (t, b); returns the last output (x for
// none).
template <typename T, typename Team>
LDV_ROW const T* stack_forward(const Team& team, const Stack<T>& s, const Regions<T>& out, int64_t t, int64_t b,
                              int64_t batch, const T* x, int activation, int first = 0) {
  for (int i = first; i < s.n; ++i) {
    T* y = out.p[i] + at(t, b, batch, s.l[i].out);
    linear(team, y, x, s.l[i], activation);
    x = y;
  }
  return x;
}

// The output gradients of the heads, [dmean | dlogvar], at one step: dmean = dz + grad_mean; dlogvar = grad_logvar +
// dz * half_noise (preset in d when half_noise is null: no noise).
template <typename T, typename Team>
LDV_ROW void heads_backward(const Team& team, T* d, const T* dz, const T* grad_mean, const T* grad_logvar,
                           const T* half_noise, int z_dim) {
  for (int k = team.rank(); k < z_dim; k += team.size()) {
    d[k] = dz[k] + grad_mean[k];
    if (half_noise) d[z_dim + k] = grad_logvar[k] + dz[k] * half_noise[k];
  }
  team.sync();
}

// One backward step of a stack (W (out, in) layers) from the gradient dy of its last output: dpre[i] = dy * dact[i]
// from the last layer down, dy = dpre[i] W_i in between (into scratch); returns dpre[0] (dy itself for none).
template <typename T, typename Team>
LDV_ROW const T* stack_backward(const Team& team, const Stack<T>& w, const Regions<T>& dact, const Regions<T>& dpre,
                               int64_t t, int64_t b, int64_t batch, const T* dy, T* scratch) {
  for (int i = w.n - 1; i >= 0; --i) {
    const int64_t row = at(t, b, batch, w.l[i].out);
    T* d = dpre.p[i] + row;
    const T* a = dact.p[i] + row;
    for (int j = team.rank(); j < w.l[i].out; j += team.size()) d[j] = dy[j] * a[j];
    team.sync();
    if (i == 0) return d;
    times(team, scratch, d, w.l[i].w, w.l[i].out, w.l[i].in, w.l[i].in, false);
    dy = scratch;
  }
  return dy;
}

// ------------------------------------------------------------------------------------------ the loops
//
// Each loop has an argument struct and a row function `row_loop(team, args, b)` (an overload per struct), which the
// CUDA kernel and the serial CPU run call for row b (the runners at the end).

// What every forward loop holds: its sizes, the noise, the Gaussian heads and the outputs.
template <typename T>
struct LoopForward {
  int64_t frames = 0, batch = 0;
  int z_dim = 0, activation = 0;
  const T* eps = nullptr;    // (frames, batch, z_dim) or null
  const T* zeros = nullptr;  // zeros: the state before frame 0
  Lin<T> heads;              // hidden -> [mean | logvar]
  T* z = nullptr;            // (frames, batch, z_dim)
  T* stats = nullptr;        // (frames, batch, 2 z_dim): [mean | logvar]
};

// What every backward loop holds: its sizes, the gradients of the draw and the heads, and a scratch row per batch
// row.
template <typename T>
struct LoopBackward {
  int64_t frames = 0, batch = 0;
  int z_dim = 0;
  T* dstats = nullptr;  // (frames, batch, 2 z_dim); dlogvar preset without noise
  T* dz = nullptr;      // (frames, batch, z_dim): grad_z, plus the recurrent terms as the loop goes
  const T* grad_mean = nullptr;
  const T* grad_logvar = nullptr;
  const T* half_noise = nullptr;  // exp(logvar / 2) * eps / 2, or null
  const T* heads_cat = nullptr;   // (2 z_dim, the heads' input width)
  T* scratch = nullptr;           // (batch, scratch_width)
  int64_t scratch_width = 0;
};

// ------------------------------------------------------------------------------------------ DKF

template <typename T>
struct DkfForward : LoopForward<T> {
  int g_dim = 0;
  T g_terms = 1;
  const T* gx = nullptr;  // (frames, batch, g_dim)
  Stack<T> z_to_g, posterior;
  Regions<T> z_to_g_out, posterior_out;
  T* g = nullptr;  // (frames, batch, g_dim)
};

// The forward loop of row b (posterior_bptt.cpp's dkf_forward_small for one row).
template <typename T, typename Team>
LDV_ROW void row_loop(const Team& team, const DkfForward<T>& a, int64_t b) {
  const int64_t B = a.batch;
  for (int64_t t = 0; t < a.frames; ++t) {
    const T* prev = t > 0 ? a.z + at(t - 1, b, B, a.z_dim) : a.zeros;
    const T* zg = stack_forward(team, a.z_to_g, a.z_to_g_out, t, b, B, prev, a.activation);
    T* g = a.g + at(t, b, B, a.g_dim);
    const T* gx = a.gx + at(t, b, B, a.g_dim);
    for (int j = team.rank(); j < a.g_dim; j += team.size()) g[j] = (zg[j] + gx[j]) / a.g_terms;
    team.sync();
    const T* h = stack_forward(team, a.posterior, a.posterior_out, t, b, B, g, a.activation);
    T* stats = a.stats + at(t, b, B, 2 * a.z_dim);
    linear(team, stats, h, a.heads, kNone);
    draw(team, a.z + at(t, b, B, a.z_dim), stats, a.eps ? a.eps + at(t, b, B, a.z_dim) : nullptr, a.z_dim);
  }
}

template <typename T>
struct DkfBackward : LoopBackward<T> {  // scratch: hidden + the widest input of any layer
  int g_dim = 0, hidden = 0;
  T alpha = 1;                  // 1 / g_terms
  T* dg = nullptr;              // (frames, batch, g_dim)
  Stack<T> z_to_g, posterior;  // W (out, in)
  Regions<T> dact_z_to_g, dpre_z_to_g, dact_posterior, dpre_posterior;
};

// The backward loop of row b (posterior_bptt.cpp's dkf_backward_small for one row).
template <typename T, typename Team>
LDV_ROW void row_loop(const Team& team, const DkfBackward<T>& a, int64_t b) {
  const int64_t B = a.batch;
  T* dh = a.scratch + b * a.scratch_width;
  T* scratch = dh + a.hidden;
  for (int64_t t = a.frames - 1; t >= 0; --t) {
    const int64_t zt = at(t, b, B, a.z_dim);
    T* d = a.dstats + 2 * zt;
    heads_backward(team, d, a.dz + zt, a.grad_mean + zt, a.grad_logvar + zt, a.half_noise ? a.half_noise + zt : nullptr,
                   a.z_dim);
    times(team, dh, d, a.heads_cat, 2 * a.z_dim, a.hidden, a.hidden, false);
    T* dg = a.dg + at(t, b, B, a.g_dim);
    if (a.posterior.n == 0) {
      for (int j = team.rank(); j < a.g_dim; j += team.size()) dg[j] = dh[j];
      team.sync();
    } else {
      const T* d0 = stack_backward(team, a.posterior, a.dact_posterior, a.dpre_posterior, t, b, B, dh, scratch);
      times(team, dg, d0, a.posterior.l[0].w, a.posterior.l[0].out, a.g_dim, a.g_dim, false);
    }
    const T* d0 = stack_backward(team, a.z_to_g, a.dact_z_to_g, a.dpre_z_to_g, t, b, B, dg, scratch);
    if (t > 0) {
      T* dz_prev = a.dz + at(t - 1, b, B, a.z_dim);
      if (a.z_to_g.n == 0) {
        for (int k = team.rank(); k < a.z_dim; k += team.size()) dz_prev[k] += a.alpha * d0[k];
        team.sync();
      } else {
        times(team, dz_prev, d0, a.z_to_g.l[0].w, a.z_to_g.l[0].out, a.z_dim, a.z_dim, true);
      }
    }
  }
}

// ----------------------------------------------------------------------------------------- SRNN

template <typename T>
struct SrnnForward : LoopForward<T> {
  int out = 0;
  const T* projected = nullptr;  // (frames, batch, out): the g part and bias of the layer reading [g_t ; z_{t-1}]
  const T* w_z = nullptr;        // (z_dim, out): its z part, transposed
  Stack<T> posterior;  // forward layers; layer 0 (the joint layer) is applied from projected and w_z
  Regions<T> posterior_out;
};

// The forward loop of row b (posterior_bptt.cpp's srnn_forward_small for one row).
template <typename T, typename Team>
LDV_ROW void row_loop(const Team& team, const SrnnForward<T>& a, int64_t b) {
  const int64_t B = a.batch;
  const bool mlp = a.posterior.n > 0;
  for (int64_t t = 0; t < a.frames; ++t) {
    const T* prev = t > 0 ? a.z + at(t - 1, b, B, a.z_dim) : a.zeros;
    T* stats = a.stats + at(t, b, B, 2 * a.z_dim);
    T* y0 = mlp ? a.posterior_out.p[0] + at(t, b, B, a.out) : stats;
    const T* p = a.projected + at(t, b, B, a.out);
    for (int j = team.rank(); j < a.out; j += team.size()) {
      T acc = p[j];
      for (int k = 0; k < a.z_dim; ++k) acc += prev[k] * a.w_z[static_cast<int64_t>(k) * a.out + j];
      y0[j] = mlp ? activate(acc, a.activation) : acc;
    }
    team.sync();
    if (mlp) {
      const T* h = stack_forward(team, a.posterior, a.posterior_out, t, b, B, y0, a.activation, 1);
      linear(team, stats, h, a.heads, kNone);
    }
    draw(team, a.z + at(t, b, B, a.z_dim), stats, a.eps ? a.eps + at(t, b, B, a.z_dim) : nullptr, a.z_dim);
  }
}

template <typename T>
struct SrnnBackward : LoopBackward<T> {  // scratch: hidden + the widest input of any layer
  int g_dim = 0, hidden = 0;
  const T* w_joint = nullptr;  // (out, g_dim + z_dim): the layer reading [g_t ; z_{t-1}]
  Stack<T> posterior;          // W (out, in)
  Regions<T> dact, dpre;
};

// The backward loop of row b (posterior_bptt.cpp's srnn_backward_small for one row).
template <typename T, typename Team>
LDV_ROW void row_loop(const Team& team, const SrnnBackward<T>& a, int64_t b) {
  const int64_t B = a.batch;
  const int joint_in = a.g_dim + a.z_dim;
  const T* w_z = a.w_joint + a.g_dim;  // its z columns, row stride joint_in
  T* dh = a.scratch + b * a.scratch_width;
  T* scratch = dh + a.hidden;
  for (int64_t t = a.frames - 1; t >= 0; --t) {
    const int64_t zt = at(t, b, B, a.z_dim);
    T* dz_prev = t > 0 ? a.dz + at(t - 1, b, B, a.z_dim) : nullptr;
    T* d = a.dstats + 2 * zt;
    heads_backward(team, d, a.dz + zt, a.grad_mean + zt, a.grad_logvar + zt, a.half_noise ? a.half_noise + zt : nullptr,
                   a.z_dim);
    if (a.posterior.n == 0) {
      if (dz_prev) times(team, dz_prev, d, w_z, 2 * a.z_dim, a.z_dim, joint_in, true);
      continue;
    }
    times(team, dh, d, a.heads_cat, 2 * a.z_dim, a.hidden, a.hidden, false);
    const T* d0 = stack_backward(team, a.posterior, a.dact, a.dpre, t, b, B, dh, scratch);
    if (dz_prev) times(team, dz_prev, d0, w_z, a.posterior.l[0].out, a.z_dim, joint_in, true);
  }
}

// ----------------------------------------------------------------------------------------- RVAE

// The most z LSTM layers the row loops take; more run the ATen loop.
constexpr int kMaxLstmLayers = 4;

template <typename T>
LDV_ROW inline T sigmoid(T x) {
  return T(1) / (T(1) + exp_(-x));
}

// One LSTM layer at one step (ATen's LSTMCell: W_ih x + (b_ih + b_hh), + W_hh h_prev, the gates, c, h): the
// activated gates [i, f, g, o] into `gates`, then c, tanh(c) (into tanh_c unless null) and h.  c may be c_prev and h
// may be h_prev (in place): every gate is computed before either is written.
template <typename T, typename Team>
LDV_ROW void lstm_step(const Team& team, const Lin<T>& ih, const T* w_hh, int H, const T* x, const T* h_prev,
                       const T* c_prev, T* gates, T* c, T* tanh_c, T* h) {
  for (int j = team.rank(); j < 4 * H; j += team.size()) {
    T acc = ih.b[j];
    for (int k = 0; k < ih.in; ++k) acc += x[k] * ih.w[static_cast<int64_t>(k) * 4 * H + j];
    for (int k = 0; k < H; ++k) acc += h_prev[k] * w_hh[static_cast<int64_t>(k) * 4 * H + j];
    gates[j] = j >= 2 * H && j < 3 * H ? tanh_(acc) : sigmoid(acc);
  }
  team.sync();
  for (int j = team.rank(); j < H; j += team.size()) {
    c[j] = gates[H + j] * c_prev[j] + gates[j] * gates[2 * H + j];
    const T tc = tanh_(c[j]);
    if (tanh_c) tanh_c[j] = tc;
    h[j] = gates[3 * H + j] * tc;
  }
  team.sync();
}

template <typename T>
struct RvaeForward : LoopForward<T> {  // zeros: max(z_dim, hidden) of them
  int hidden = 0, layers = 0, out = 0;
  const T* projected = nullptr;  // (frames, batch, out): the gx part and bias of the layer reading [gx_t ; gz_t]
  const T* w_gz = nullptr;       // (hidden, out): its gz part, transposed
  Stack<T> z_embed, posterior;   // forward layers; posterior layer 0 is applied from projected and w_gz
  Lin<T> ih[kMaxLstmLayers];     // W_ih^T (in, 4H) and b_ih + b_hh
  const T* w_hh[kMaxLstmLayers] = {};  // W_hh^T (H, 4H)
  Regions<T> z_embed_out, posterior_out;
  T* gates[kMaxLstmLayers] = {};  // (frames, batch, 4H) after the activations [i, f, g, o]
  T* c[kMaxLstmLayers] = {};
  T* tanh_c[kMaxLstmLayers] = {};
  T* h[kMaxLstmLayers] = {};
};

// The forward loop of row b (rvae_bptt.cpp's rvae_forward_small for one row; the LSTM step is lstm_step).
template <typename T, typename Team>
LDV_ROW void row_loop(const Team& team, const RvaeForward<T>& a, int64_t b) {
  const int64_t B = a.batch;
  const int H = a.hidden;
  const bool mlp = a.posterior.n > 0;
  for (int64_t t = 0; t < a.frames; ++t) {
    const T* x = stack_forward(team, a.z_embed, a.z_embed_out, t, b, B,
                               t > 0 ? a.z + at(t - 1, b, B, a.z_dim) : a.zeros, a.activation);
    for (int l = 0; l < a.layers; ++l) {
      T* h = a.h[l] + at(t, b, B, H);
      lstm_step(team, a.ih[l], a.w_hh[l], H, x, t > 0 ? a.h[l] + at(t - 1, b, B, H) : a.zeros,
                t > 0 ? a.c[l] + at(t - 1, b, B, H) : a.zeros, a.gates[l] + at(t, b, B, 4 * H),
                a.c[l] + at(t, b, B, H), a.tanh_c[l] + at(t, b, B, H), h);
      x = h;
    }
    T* stats = a.stats + at(t, b, B, 2 * a.z_dim);
    T* y0 = mlp ? a.posterior_out.p[0] + at(t, b, B, a.out) : stats;
    const T* p = a.projected + at(t, b, B, a.out);
    for (int j = team.rank(); j < a.out; j += team.size()) {
      T acc = p[j];
      for (int k = 0; k < H; ++k) acc += x[k] * a.w_gz[static_cast<int64_t>(k) * a.out + j];
      y0[j] = mlp ? activate(acc, a.activation) : acc;
    }
    team.sync();
    if (mlp) {
      const T* hid = stack_forward(team, a.posterior, a.posterior_out, t, b, B, y0, a.activation, 1);
      linear(team, stats, hid, a.heads, kNone);
    }
    draw(team, a.z + at(t, b, B, a.z_dim), stats, a.eps ? a.eps + at(t, b, B, a.z_dim) : nullptr, a.z_dim);
  }
}

// scratch per row: dh and dc of every layer, dhid, d_in, a layer's input gradient.
template <typename T>
struct RvaeBackward : LoopBackward<T> {
  int hidden = 0, layers = 0, gx_dim = 0, head_in = 0, in0 = 0;
  const T* w0 = nullptr;         // (out, gx_dim + hidden): the layer reading [gx_t ; gz_t]
  int w0_out = 0;
  Stack<T> z_embed, posterior;   // W (out, in)
  const T* w_ih[kMaxLstmLayers] = {};   // (4H, in)
  const T* w_hh[kMaxLstmLayers] = {};   // (4H, H)
  const T* m[kMaxLstmLayers] = {};      // (frames, batch, 4H): dc (i, f, g) and dh (o) -> the gates' gradients
  const T* k[kMaxLstmLayers] = {};      // (frames, batch, H): o tanh'(c), dh -> dc
  const T* gates[kMaxLstmLayers] = {};  // the forward's activated gates (f: the dc recurrence)
  T* dgates[kMaxLstmLayers] = {};       // (frames, batch, 4H) out
  Regions<T> dact_embed, dpre_embed, dact_posterior, dpre_posterior;
};

// The backward loop of row b (rvae_bptt.cpp's rvae_backward_small for one row).
template <typename T, typename Team>
LDV_ROW void row_loop(const Team& team, const RvaeBackward<T>& a, int64_t b) {
  const int64_t B = a.batch;
  const int H = a.hidden, joint_in = a.gx_dim + a.hidden;
  T* state = a.scratch + b * a.scratch_width;  // dh[l] at l * H, dc[l] at (layers + l) * H
  T* dhid = state + 2 * a.layers * H;
  T* d_in = dhid + a.head_in;
  T* scratch = d_in + a.in0;
  for (int j = team.rank(); j < 2 * a.layers * H; j += team.size()) state[j] = T(0);
  team.sync();
  const T* w0_gz = a.w0 + a.gx_dim;  // the gz columns, row stride joint_in
  for (int64_t t = a.frames - 1; t >= 0; --t) {
    const int64_t zt = at(t, b, B, a.z_dim);
    T* d = a.dstats + 2 * zt;
    T* dh_top = state + (a.layers - 1) * H;
    heads_backward(team, d, a.dz + zt, a.grad_mean + zt, a.grad_logvar + zt, a.half_noise ? a.half_noise + zt : nullptr,
                   a.z_dim);
    if (a.posterior.n > 0) {
      times(team, dhid, d, a.heads_cat, 2 * a.z_dim, a.head_in, a.head_in, false);
      const T* d0 = stack_backward(team, a.posterior, a.dact_posterior, a.dpre_posterior, t, b, B, dhid, scratch);
      times(team, dh_top, d0, w0_gz, a.w0_out, H, joint_in, true);
    } else {
      times(team, dh_top, d, w0_gz, 2 * a.z_dim, H, joint_in, true);
    }
    for (int l = a.layers - 1; l >= 0; --l) {
      T* dh = state + l * H;
      T* dc = state + (a.layers + l) * H;
      const T* k = a.k[l] + at(t, b, B, H);
      const T* m = a.m[l] + at(t, b, B, 4 * H);
      T* dg = a.dgates[l] + at(t, b, B, 4 * H);
      for (int j = team.rank(); j < H; j += team.size()) {
        dc[j] += dh[j] * k[j];
        for (int q = 0; q < 3; ++q) dg[q * H + j] = m[q * H + j] * dc[j];
        dg[3 * H + j] = dh[j] * m[3 * H + j];
      }
      team.sync();
      if (t > 0) {
        const T* f = a.gates[l] + at(t, b, B, 4 * H) + H;
        for (int j = team.rank(); j < H; j += team.size()) dc[j] *= f[j];
        times(team, dh, dg, a.w_hh[l], 4 * H, H, H, false);
      }
      if (l > 0) {
        times(team, state + (l - 1) * H, dg, a.w_ih[l], 4 * H, H, H, true);
        continue;
      }
      times(team, d_in, dg, a.w_ih[0], 4 * H, a.in0, a.in0, false);
      const T* d0 = stack_backward(team, a.z_embed, a.dact_embed, a.dpre_embed, t, b, B, d_in, scratch);
      if (t > 0) {
        T* dz_prev = a.dz + at(t - 1, b, B, a.z_dim);
        if (a.z_embed.n == 0) {
          for (int j = team.rank(); j < a.z_dim; j += team.size()) dz_prev[j] += d0[j];
          team.sync();
        } else {
          times(team, dz_prev, d0, a.z_embed.l[0].w, a.z_embed.l[0].out, a.z_dim, a.z_dim, true);
        }
      }
    }
  }
}

// --------------------------------------------------------------------------------- SRNN own past

// SRNN's deterministic path on its own past predictions (sampling_loops.cpp's srnn_own_past): at step t, h_embed of
// the previous prediction s (zeros at t = 0), the LSTM layers, h_used = h_own where use_own[t] else h_true[t], the
// decoder on [h_used ; z_t], its output layer (no activation), and s = exp(logvar) fed back.  With `fed` set the loop
// only writes the predictions it fed (the sequence pass recomputes the rest with gradients); else logvar, used and
// own.  scratch per row: h and c of every layer, the gates, s, two buffers for the stacks, [h ; z].
template <typename T>
struct OwnPast {
  int64_t frames = 0, batch = 0;
  int z_dim = 0, x_dim = 0, hidden = 0, layers = 0, activation = 0;
  int widest = 0;             // the stacks' widest layer output, and x_dim
  const T* z = nullptr;       // (frames, batch, z_dim)
  const T* h_true = nullptr;  // (frames, batch, hidden), or null when every step uses its own past
  const T* use_own = nullptr;  // (frames,): 1 where the step uses h_own
  Stack<T> h_embed, decoder;   // forward layers, each followed by the activation
  Lin<T> out;                  // the decoder's output layer (dec -> x_dim)
  Lin<T> ih[kMaxLstmLayers];   // W_ih^T (in, 4H) and b_ih + b_hh
  const T* w_hh[kMaxLstmLayers] = {};  // W_hh^T (H, 4H)
  T* fed = nullptr;     // (frames, batch, x_dim): s_{t-1} of every step, or null
  T* logvar = nullptr;  // (frames, batch, x_dim) unless fed
  T* used = nullptr;    // (frames, batch, hidden) unless fed
  T* own = nullptr;     // (frames, batch, hidden) unless fed
  T* scratch = nullptr;
  int64_t scratch_width = 0;  // 2 layers H + 4H + x_dim + 2 widest + H + z_dim
};

// A stack's layers from x, each activated, ping-ponging between two buffers; returns the last output (x for none).
template <typename T, typename Team>
LDV_ROW const T* stack_rows(const Team& team, const Stack<T>& s, const T* x, T* a, T* b, int activation) {
  for (int i = 0; i < s.n; ++i) {
    T* y = (i % 2 == 0) ? a : b;
    linear(team, y, x, s.l[i], activation);
    x = y;
  }
  return x;
}

template <typename T, typename Team>
LDV_ROW void row_loop(const Team& team, const OwnPast<T>& a, int64_t b) {
  const int64_t B = a.batch;
  const int H = a.hidden;
  T* hs = a.scratch + b * a.scratch_width;  // h of layer l at l * H, c at (layers + l) * H
  T* gates = hs + 2 * a.layers * H;
  T* s = gates + 4 * H;
  T* buf0 = s + a.x_dim;
  T* buf1 = buf0 + a.widest;
  T* joint = buf1 + a.widest;
  for (int j = team.rank(); j < 2 * a.layers * H; j += team.size()) hs[j] = T(0);
  for (int j = team.rank(); j < a.x_dim; j += team.size()) s[j] = T(0);
  team.sync();
  for (int64_t t = 0; t < a.frames; ++t) {
    if (a.fed) {
      T* f = a.fed + at(t, b, B, a.x_dim);
      for (int j = team.rank(); j < a.x_dim; j += team.size()) f[j] = s[j];
    }
    const T* x = stack_rows(team, a.h_embed, s, buf0, buf1, a.activation);
    for (int l = 0; l < a.layers; ++l) {  // h and c in place
      T* h = hs + l * H;
      T* c = hs + (a.layers + l) * H;
      lstm_step(team, a.ih[l], a.w_hh[l], H, x, h, c, gates, c, static_cast<T*>(nullptr), h);
      x = h;
    }
    const T* h_own = x;
    const T* h_used = a.use_own[t] != T(0) ? h_own : a.h_true + at(t, b, B, H);
    const T* zt = a.z + at(t, b, B, a.z_dim);
    for (int j = team.rank(); j < H + a.z_dim; j += team.size()) joint[j] = j < H ? h_used[j] : zt[j - H];
    team.sync();
    const T* d = stack_rows(team, a.decoder, joint, buf0, buf1, a.activation);
    T* lv = a.fed ? (d == buf0 ? buf1 : buf0) : a.logvar + at(t, b, B, a.x_dim);
    linear(team, lv, d, a.out, kNone);
    for (int j = team.rank(); j < a.x_dim; j += team.size()) s[j] = exp_(lv[j]);
    if (!a.fed) {
      T* used = a.used + at(t, b, B, H);
      T* own = a.own + at(t, b, B, H);
      for (int j = team.rank(); j < H; j += team.size()) {
        used[j] = h_used[j];
        own[j] = h_own[j];
      }
    }
    team.sync();
  }
}

// ------------------------------------------------------------------------------------------ runners

// Threads per row on CUDA: the widest layer's outputs rounded up to whole warps, 32 to 256.
inline int team_size(int widest) {
  const int warps = (widest + 31) / 32;
  return 32 * (warps < 1 ? 1 : (warps > 8 ? 8 : warps));
}

// Where a posterior loop's step-by-step part runs: the CUDA row kernels, the CPU's serial run of the same code, or
// the caller's own loops (kNo: another dtype, a stack deeper than kMaxLayers, a traced tensor, or a CPU run without
// the switch; row_tensors.h decides).
enum class Path { kNo, kCuda, kSerial };

// The rows one after the other on the CPU: the CUDA kernels' code with a team of one.
template <typename Args>
void serial(const Args& a) {
  for (int64_t b = 0; b < a.batch; ++b) row_loop(SerialTeam{}, a, b);
}

#if defined(LIGHTDVAE_WITH_CUDA)
// One launch on the current stream, a block of `threads` per batch row (row_loops_cuda.cu, instantiated for every
// loop's arguments in float and double).
template <typename Args>
void launch(const Args& a, int threads);
#endif

// A row loop where `path` says (kSerial or kCuda): here row after row, or one CUDA launch with `threads` per row.
template <typename Args>
void run(Path path, const Args& a, int threads) {
  if (path == Path::kSerial) {
    serial(a);
    return;
  }
#if defined(LIGHTDVAE_WITH_CUDA)
  launch(a, threads);
#else
  (void)threads;
#endif
}

}  // namespace lightdvae::rows
