// CUDA implementation of stmodels::selective_scan_fwd / selective_scan_bwd (schemas and canonical
// argument forms: csrc/ops.cpp; math: Mamba, Gu & Dao 2023, Alg. 2; spec: docs/ops.rst). Kernels:
// selective_scan_cuda_common.cuh (staging, block scan), selective_scan_cuda_fwd.cuh,
// selective_scan_cuda_bwd.cuh.
//
// Design
// * Forward: one block (32..128 threads) per channel (b, d). Time is cut into chunks of
//   T = threads*K positions (K = 2 when L <= 256, else 8); thread tid owns K consecutive scan
//   positions. Inputs are read coalesced through a warp-private staging buffer. For each chunk,
//   the states are scanned a few at a time (4 with K = 2, 2 with K = 8, keeping the forward at
//   <= 128 registers): each thread composes its K elements (a, b) = (exp(dt A), dt B u), a warp
//   Hillis-Steele scan by shuffles, warp aggregates through shared memory, one __syncthreads per
//   group of states; the state entering the chunk (carry, per state)
//   is kept in shared memory, double-buffered by chunk parity. All arithmetic in float32.
//   Reverse scans walk positions s = 0..L-1 and read/write time t = L-1-s: nothing is flipped.
// * Bidirectional forward: both directions run in the same block, direction 0 first, whose y
//   (float32) goes to a buffer: dynamic shared memory when L <= 8192, else a global workspace;
//   direction 1 adds it, applies the gate and writes out once. Shared u/delta are read once per
//   direction (the second read mostly from L2); z is read and out written once.
// * Backward: one block per (b, group g, chunk of `ch` channels of g). Per direction:
//   (1) checkpoint pass: the forward of each channel, storing only the state entering each chunk
//       (workspace batch*dim*nchunks*N floats: O(batch dim N L / T));
//   (2) chunks last to first; per chunk, each channel of the block in turn: recompute the chunk's
//       states from its checkpoint (forward block scan), then the adjoint as a reverse block scan
//       of q_s = a_s q_{s+1} + a_s C_s dy_s (see selective_scan_cuda_bwd.cuh), carried between
//       chunks in a double-buffered global workspace. The bwd chunk is small (T = 256 / 128 / 64
//       for N <= 16 / 32 / 64: the N-bucket template) so that the variable dB/dC sums of a chunk
//       over the block's channels fit in shared memory ([N][T] each, owned per thread: no atomics);
//       they are written to the block's float32 slab once per chunk, and reduce_slab_kernel sums
//       the slabs over channel chunks in a fixed order.
//   dA, constant dB/dC, dD, ddelta_bias: per (b, direction, d, warp) partials (warp shuffle
//   reduction, plain read-modify-write by the owning lane), reduced by reduce_param_kernel over
//   batch, warps and (shared parameters) directions in a fixed order. Nothing uses atomics, so
//   results are bitwise deterministic run to run.
//   Bidirectional with shared u / delta / z: direction 0 stores du, ddelta and y in float32
//   workspaces, direction 1 adds and writes the final dtype.
// * Outputs have the dtypes the CPU kernel returns: du, ddelta, dz like u; dA, dD, ddelta_bias,
//   dinitial_state float32; dB / dC like B / C (summed in float32, converted once).
// * Limits: N <= 64 (TORCH_CHECK); blocks of at most 128 threads; grid.x = batch*dim (forward).
//
// What the first GPU run must verify (nothing here could run: this was only compiled)
// * tests/test_backends_scan.py for the cuda backend vs reference: every output and gradient, all
//   dtypes, uni/reverse/bi, variable (with G > 1) and constant B/C (also mixed float32/bf16 B, C),
//   with/without D, z, delta_bias, softplus, initial_state; L = 1, L not a multiple of the chunk
//   (e.g. 255, 257, 1000, 1025, 3000: several chunks in both kernels), N = 1, 5, 16, 17, 33, 64.
// * Determinism: two backward calls bitwise equal. compute-sanitizer --tool racecheck and
//   --tool memcheck on a small bidirectional variable-B/C case with several chunks and channels
//   per block (the barrier reasoning about the carry, the staging and the s_warp parity).
// * Timings against docs/performance.rst (batch 8, dim 2048, L 2048, N 16, bf16).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <vector>
#include <tuple>

#include "selective_scan_cuda_bwd.cuh"
#include "selective_scan_cuda_common.cuh"
#include "selective_scan_cuda_fwd.cuh"
#include "selective_scan_checks.h"

namespace stmodels {
namespace scan_cuda {
namespace {

using at::Tensor;

using scan_checks::Geom;
using scan_checks::Inputs;

// The shared checks, and the one limit of this backend: N <= kMaxN.
Inputs validate(const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& B,
                const Tensor& C, const c10::optional<Tensor>& D, const c10::optional<Tensor>& z,
                const c10::optional<Tensor>& bias, const c10::optional<Tensor>& init,
                bool reverse, bool bidir) {
  Inputs in = scan_checks::validate(u, delta, A, B, C, D, z, bias, init, reverse, bidir, at::kCUDA);
  TORCH_CHECK(in.g.N <= kMaxN, "selective_scan (cuda): the state size N=", in.g.N, " exceeds the "
              "maximum of the CUDA kernel (", kMaxN, "); use backend=\"triton\" or \"reference\"");
  return in;
}

// ---------------------------------------------------------------- parameters

int64_t ndir_of(const Tensor& t, int64_t base_rank) { return t.dim() > base_rank ? 2 : 1; }

Params make_params(const Inputs& in, bool softplus, bool reverse) {
  Params p;
  const Geom& g = in.g;
  p.batch = g.batch; p.dim = g.dim; p.L = g.L; p.N = g.N; p.G = g.G; p.dg = g.dim / g.G;
  p.ndir = g.ndir; p.softplus = softplus; p.reverse = reverse;
  const int64_t seq = g.batch * g.dim * g.L;
  p.u = in.u.data_ptr(); p.u_ds = in.u.dim() == 4 ? seq : 0;
  p.delta = in.delta.data_ptr(); p.delta_ds = in.delta.dim() == 4 ? seq : 0;
  p.z = in.z.defined() ? in.z.data_ptr() : nullptr;
  p.A = in.A.data_ptr<float>(); p.A_ds = in.A.dim() == 3 ? g.dim * g.N : 0;
  if (in.D.defined()) { p.D = in.D.data_ptr<float>(); p.D_ds = in.D.dim() == 2 ? g.dim : 0; }
  if (in.bias.defined()) {
    p.bias = in.bias.data_ptr<float>(); p.bias_ds = in.bias.dim() == 2 ? g.dim : 0;
  }
  p.init = in.init.defined() ? in.init.data_ptr<float>() : nullptr;
  p.B = in.B.data_ptr(); p.B_var = g.varB; p.B_f32 = in.B.scalar_type() == at::kFloat;
  p.B_ds = g.varB ? (ndir_of(in.B, 4) == 2 ? g.batch * g.G * g.N * g.L : 0)
                  : (ndir_of(in.B, 2) == 2 ? g.dim * g.N : 0);
  p.C = in.C.data_ptr(); p.C_var = g.varC; p.C_f32 = in.C.scalar_type() == at::kFloat;
  p.C_ds = g.varC ? (ndir_of(in.C, 4) == 2 ? g.batch * g.G * g.N * g.L : 0)
                  : (ndir_of(in.C, 2) == 2 ? g.dim * g.N : 0);
  return p;
}

int threads_for(int64_t L, int K, int max_threads) {
  const int64_t want = (L + K - 1) / K;
  const int64_t t = (want + 31) / 32 * 32;
  return (int)std::min<int64_t>(std::max<int64_t>(t, 32), max_threads);
}

int sm_count(int device) {
  int n = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device));
  return std::max(n, 1);
}

// ---------------------------------------------------------------- forward

constexpr int64_t kYSmemMaxL = 8192;  // bidirectional y buffer in shared memory up to 32 KiB

template <typename input_t>
void launch_fwd(const Params& p, cudaStream_t stream) {
  const bool small = p.L <= 256;
  const int K = small ? 2 : 8;
  const int threads = threads_for(p.L, K, 128);
  const size_t smem = p.ybuf_smem ? sizeof(float) * p.L : 0;
  const unsigned grid = (unsigned)(p.batch * p.dim);
  if (small) scan_fwd_kernel<2, input_t><<<grid, threads, smem, stream>>>(p);
  else scan_fwd_kernel<8, input_t><<<grid, threads, smem, stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<Tensor, Tensor> scan_fwd_cuda(const Tensor& u, const Tensor& delta, const Tensor& A,
                                         const Tensor& B, const Tensor& C,
                                         const c10::optional<Tensor>& D,
                                         const c10::optional<Tensor>& z,
                                         const c10::optional<Tensor>& delta_bias,
                                         const c10::optional<Tensor>& initial_state,
                                         bool delta_softplus, bool reverse, bool bidirectional) {
  const Inputs in = validate(u, delta, A, B, C, D, z, delta_bias, initial_state, reverse,
                             bidirectional);
  const Geom& g = in.g;
  c10::cuda::CUDAGuard guard(in.u.device());
  const auto f32 = in.A.options();
  scan_checks::FwdOutputs outputs = scan_checks::fwd_outputs(in, bidirectional);
  if (outputs.done) return {outputs.out, outputs.last};
  Tensor &out = outputs.out, &last = outputs.last;
  TORCH_CHECK(g.batch * g.dim <= std::numeric_limits<int>::max(), "selective_scan (cuda): "
              "batch*dim = ", g.batch * g.dim, " exceeds the grid limit");
  Params p = make_params(in, delta_softplus, reverse);
  p.out = out.data_ptr();
  p.last_state = last.data_ptr<float>();
  Tensor ybuf;
  if (g.ndir == 2) {
    if (g.L <= kYSmemMaxL) {
      p.ybuf_smem = true;
    } else {
      ybuf = at::empty({g.batch, g.dim, g.L}, f32);
      p.ybuf = ybuf.data_ptr<float>();
    }
  }
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  switch (in.u.scalar_type()) {
    case at::kFloat: launch_fwd<float>(p, stream); break;
    case at::kHalf: launch_fwd<__half>(p, stream); break;
    default: launch_fwd<__nv_bfloat16>(p, stream); break;
  }
  return {out, last};
}

// ---------------------------------------------------------------- backward

struct BwdConfig { int K, kNMax, max_threads; };

BwdConfig bwd_config(int64_t N) {
  if (N <= 16) return {2, 16, 128};
  if (N <= 32) return {1, 32, 128};
  return {1, 64, 64};
}

template <typename input_t>
void launch_bwd(const Params& p, const BwdConfig& cfg, int threads, size_t smem,
                cudaStream_t stream) {
  const unsigned grid = (unsigned)(p.batch * p.G * p.nblk);
  if (cfg.kNMax == 16) scan_bwd_kernel<2, 16, input_t><<<grid, threads, smem, stream>>>(p);
  else if (cfg.kNMax == 32) scan_bwd_kernel<1, 32, input_t><<<grid, threads, smem, stream>>>(p);
  else scan_bwd_kernel<1, 64, input_t><<<grid, threads, smem, stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

unsigned reduce_grid(int64_t total) {
  return (unsigned)std::max<int64_t>(1, std::min<int64_t>((total + 255) / 256, 65535));
}

// part: [batch][ndir][dim][kMaxWarps][P] -> out (ndp, dim[, P]) in out's dtype.
void reduce_param(const Tensor& part, Tensor& out, const Geom& g, int64_t P, cudaStream_t stream) {
  const int64_t ndp = out.numel() / (g.dim * P);
  const bool direct = out.scalar_type() == at::kFloat && out.is_contiguous();
  Tensor acc = direct ? out : at::empty(out.sizes(), part.options());
  const int64_t total = ndp * g.dim * P;
  reduce_param_kernel<<<reduce_grid(total), 256, 0, stream>>>(
      part.data_ptr<float>(), acc.data_ptr<float>(), g.batch, g.ndir, g.dim, P, ndp);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (!direct) out.copy_(acc);
}

void reduce_slab(const Tensor& slab, int64_t nd, int64_t nblk, Tensor& out, const Geom& g,
                 cudaStream_t stream) {
  const bool direct = out.scalar_type() == at::kFloat && out.is_contiguous();
  Tensor acc = direct ? out : at::empty(out.sizes(), slab.options());
  const int64_t rows = nd * g.batch * g.G, NL = g.N * g.L;
  reduce_slab_kernel<<<reduce_grid(rows * NL), 256, 0, stream>>>(
      slab.data_ptr<float>(), acc.data_ptr<float>(), rows, nblk, NL);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (!direct) out.copy_(acc);
}

using BwdOut = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;

BwdOut scan_bwd_cuda(const Tensor& dout, const c10::optional<Tensor>& dlast_state, const Tensor& u, const Tensor& delta, const Tensor& A,
                     const Tensor& B, const Tensor& C, const c10::optional<Tensor>& D,
                     const c10::optional<Tensor>& z, const c10::optional<Tensor>& delta_bias,
                     const c10::optional<Tensor>& initial_state, bool delta_softplus,
                     bool reverse, bool bidirectional) {
  const Inputs in = validate(u, delta, A, B, C, D, z, delta_bias, initial_state, reverse,
                             bidirectional);
  const Geom& g = in.g;
  const auto grads_in = scan_checks::check_grads(dout, dlast_state, in, bidirectional, at::kCUDA);
  const Tensor& dout_c = grads_in.first;
  const Tensor& dlast = grads_in.second;
  c10::cuda::CUDAGuard guard(in.u.device());
  const auto f32 = in.A.options();
  scan_checks::BwdOutputs grads = scan_checks::bwd_outputs(in, dlast);
  if (grads.done) return grads.tuple();
  Tensor &du = grads.du, &ddelta = grads.ddelta, &dA = grads.dA, &dB = grads.dB, &dC = grads.dC;
  Tensor &dD = grads.dD, &dz = grads.dz, &dbias = grads.dbias, &dinit = grads.dinit;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  Params p = make_params(in, delta_softplus, reverse);
  const BwdConfig cfg = bwd_config(g.N);
  const int threads = threads_for(g.L, cfg.K, cfg.max_threads);
  const int64_t T = (int64_t)threads * cfg.K, nchunks = (g.L + T - 1) / T;
  const int64_t BD = g.batch * g.dim, nd = g.ndir;

  // Work split. Variable dB/dC: chunks of channels, so that their sums stay in shared memory
  // within a block; aim at ~4 blocks per SM, and at most ~256 MiB of float32 slabs. Otherwise
  // one channel per block.
  const int64_t bg = g.batch * g.G, dg = p.dg;
  p.slabB_nd = g.varB ? ndir_of(in.B, 4) : 1;
  p.slabC_nd = g.varC ? ndir_of(in.C, 4) : 1;
  const int64_t slab_per_blk =
      ((g.varB ? p.slabB_nd : 0) + (g.varC ? p.slabC_nd : 0)) * g.N * g.L;
  int64_t nblk = dg;
  if (slab_per_blk > 0) {
    const int64_t target = 4 * (int64_t)sm_count(in.u.get_device());
    nblk = std::min<int64_t>(dg, std::max<int64_t>(1, (target + bg - 1) / bg));
    const int64_t cap = (int64_t(64) << 20) / std::max<int64_t>(1, bg * slab_per_blk);
    nblk = std::max<int64_t>(1, std::min(nblk, cap));
  }
  p.ch = (dg + nblk - 1) / nblk;
  p.nblk = (dg + p.ch - 1) / p.ch;
  TORCH_CHECK(bg * p.nblk <= std::numeric_limits<int>::max(), "selective_scan (cuda): grid too "
              "large");

  const Tensor none = at::empty({0}, f32);
  Tensor ckpt = at::empty({BD * nchunks * g.N}, f32);
  Tensor qbuf = at::empty({2 * BD * g.N}, f32);
  Tensor slabB = g.varB ? at::empty({p.slabB_nd * bg * p.nblk * g.N * g.L}, f32) : none;
  Tensor slabC = g.varC ? at::empty({p.slabC_nd * bg * p.nblk * g.N * g.L}, f32) : none;
  Tensor pA = at::zeros({g.batch * nd * g.dim * kMaxWarps * g.N}, f32);
  Tensor pB = g.varB ? none : at::zeros({g.batch * nd * g.dim * kMaxWarps * g.N}, f32);
  Tensor pC = g.varC ? none : at::zeros({g.batch * nd * g.dim * kMaxWarps * g.N}, f32);
  Tensor pD = in.D.defined() ? at::zeros({g.batch * nd * g.dim * kMaxWarps}, f32) : none;
  Tensor pBias = in.bias.defined() ? at::zeros({g.batch * nd * g.dim * kMaxWarps}, f32) : none;
  const bool bi = g.ndir == 2;
  Tensor du_acc = bi && p.u_ds == 0 ? at::empty({BD * g.L}, f32) : none;
  Tensor dd_acc = bi && p.delta_ds == 0 ? at::empty({BD * g.L}, f32) : none;
  Tensor ybuf = bi && in.z.defined() ? at::empty({BD * g.L}, f32) : none;

  p.dout = dout_c.data_ptr();
  p.dlast = dlast.defined() ? dlast.data_ptr<float>() : nullptr;
  p.du = du.data_ptr(); p.ddelta = ddelta.data_ptr();
  p.dz = in.z.defined() ? dz.data_ptr() : nullptr;
  p.dinit = in.init.defined() ? dinit.data_ptr<float>() : nullptr;
  p.ckpt = ckpt.data_ptr<float>(); p.qbuf = qbuf.data_ptr<float>();
  p.slabB = g.varB ? slabB.data_ptr<float>() : nullptr;
  p.slabC = g.varC ? slabC.data_ptr<float>() : nullptr;
  p.pA = pA.data_ptr<float>();
  p.pB = g.varB ? nullptr : pB.data_ptr<float>();
  p.pC = g.varC ? nullptr : pC.data_ptr<float>();
  p.pD = in.D.defined() ? pD.data_ptr<float>() : nullptr;
  p.pBias = in.bias.defined() ? pBias.data_ptr<float>() : nullptr;
  p.du_acc = du_acc.numel() ? du_acc.data_ptr<float>() : nullptr;
  p.dd_acc = dd_acc.numel() ? dd_acc.data_ptr<float>() : nullptr;
  p.ybuf = ybuf.numel() ? ybuf.data_ptr<float>() : nullptr;

  const size_t smem = sizeof(float) * ((g.varB ? 1 : 0) + (g.varC ? 1 : 0)) * cfg.kNMax *
                      cfg.K * threads;  // <= 32 KiB by the choice of bwd_config
  switch (in.u.scalar_type()) {
    case at::kFloat: launch_bwd<float>(p, cfg, threads, smem, stream); break;
    case at::kHalf: launch_bwd<__half>(p, cfg, threads, smem, stream); break;
    default: launch_bwd<__nv_bfloat16>(p, cfg, threads, smem, stream); break;
  }

  reduce_param(pA, dA, g, g.N, stream);
  if (in.D.defined()) reduce_param(pD, dD, g, 1, stream);
  if (in.bias.defined()) reduce_param(pBias, dbias, g, 1, stream);
  if (g.varB) reduce_slab(slabB, p.slabB_nd, p.nblk, dB, g, stream);
  else reduce_param(pB, dB, g, g.N, stream);
  if (g.varC) reduce_slab(slabC, p.slabC_nd, p.nblk, dC, g, stream);
  else reduce_param(pC, dC, g, g.N, stream);
  return {du, ddelta, dA, dB, dC, dD, dz, dbias, dinit};
}

}  // namespace
}  // namespace scan_cuda
}  // namespace stmodels

TORCH_LIBRARY_IMPL(stmodels, CUDA, m) {
  m.impl("selective_scan_fwd", &stmodels::scan_cuda::scan_fwd_cuda);
  m.impl("selective_scan_bwd", &stmodels::scan_cuda::scan_bwd_cuda);
}
