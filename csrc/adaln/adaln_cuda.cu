// CUDA implementation of stmodels::adaln_fwd / adaln_bwd (schemas in csrc/ops.cpp).
//
// AdaLN modulation as in DiT (Peebles & Xie 2023): out = LayerNorm(x, eps; weight, bias) *
// (1 + scale) + shift, LayerNorm as in Ba, Kiros & Hinton 2016 (biased variance, float32 stats).
// Same contract as the CPU kernel (adaln_cpu.cpp): same checks, same outputs, empty float32
// gradients for absent weight/bias.
//
// Layout. A row (one token, H features) is handled by a row group of T threads (blockDim.x = T, a
// multiple of 32): one warp for small H, up to 512 threads for large H. Thread t owns the chunks
// c = t + j*T (j < kC) of W consecutive elements: W = 16 bytes / sizeof(dtype) (8 halves or 4
// floats: one ld/st.global.v4) when H is a multiple of W and every pointer is 16-byte aligned, else
// W = 1 (scalar loads, still coalesced). The row stays in registers (adaln_fwd_cached_kernel,
// adaln_bwd_cached_kernel): kC = fwd_chunks(W) / fwd_token_chunks(W) / bwd_chunks(W)
// (adaln_cuda_common.cuh): 16 floats per thread in the per-sample forward, 8 in the per-token
// forward (which also holds shift/scale) and in the backward, so
// T = roundup32(H / 16) or roundup32(H / 8): a warp per row up to H = 512 / 256; H = 2048 gets 128
// / 256 threads. Longer rows (per-sample forward H > 8192, otherwise H > 4096) take the uncached
// kernels (adaln_fwd_uncached_kernel, adaln_bwd_uncached_kernel; 512 threads, one row group per
// block) that re-read the row from global memory (L2) on each pass.
// Rows are tiled: block k covers rows [s0, s1) of one sample (a function of the shape only), with
// R = 256 / T row groups (blockDim.y; 1 when T > 128) each taking every R-th row. Per-sample
// shift/scale are folded once per block into registers (out = xhat * A + C with
// A = (1 + scale) * weight, C = bias * (1 + scale) + shift) instead of being re-read for every row.
// Reductions over a row: warp butterflies (every lane gets the bit-identical total), then, for
// T > 32, the warp totals of the group read in warp order by every thread (group_sum).
//
// Forward: x read once into registers, corrected two-pass statistics from registers (mean, then
// the sum of residuals and of their squares, as the CPU kernel), out written once. The traffic is
// the floor: read x (+ shift/scale per token), write out (+ 8 bytes of mean/rstd per row); at
// (8, 2048, 2048) bf16 per sample 128 MB, ~40 us at H100 copy bandwidth. With 64 registers (4
// blocks of 256 threads, 1024 threads per SM) and 32 bytes of x in flight per thread, an SM keeps
// ~32 KB of loads in flight, above the ~20 KB that the bandwidth-latency product asks of it, so the
// kernel should run close to copy bandwidth (target: >= 70%). Blocks are small (8 rows at that
// shape, 2048 blocks) so the last wave's tail is short.
//
// Backward, with a = dout * (1 + scale), g = a * weight (weight optional) and xhat = (x-mean)*rstd:
//   dx = rstd * ((g - mean_H(g)) - xhat * mean_H(g * xhat)),
// from xhat and g kept in registers (one group reduction of two values per row).
//   Per-sample shift/scale: every thread accumulates, over the rows of its block and for its own
//   columns, D = sum dout and P = sum dout * xhat in registers; the R row groups are combined in
//   shared memory in group order, and the block writes one partial (2, H) to a float32 workspace
//   (blocks, 2, H). adaln_bwd_reduce_kernel sums the partials of each sample in a fixed order
//   (chunk lanes, then lanes in order): dshift = D, dscale = weight * P + bias * D, and
//   (1 + scale_b) * P_b, (1 + scale_b) * D_b for dweight/dbias, which adaln_bwd_affine_kernel sums
//   over the batch in order.
//   Per-token shift/scale: dshift = dout and dscale = dout * (xhat * weight + bias) are written per
//   row; the block partials are sum a * xhat (dweight) and sum a (dbias), only for the affine
//   parameters present, reduced by adaln_bwd_reduce_kernel over all blocks in order.
// No atomics anywhere: every reduction order is fixed by the shape (and by whether the vector path
// applies), so the results are bit-identical from run to run.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <optional>
#include <tuple>

#include "adaln_checks.h"
#include "adaln_cuda_bwd.cuh"
#include "adaln_cuda_common.cuh"
#include "adaln_cuda_fwd.cuh"

namespace stmodels {
namespace adaln {
namespace cuda {
namespace {

using at::Tensor;

// ---- launch configuration (a function of the shape and of the alignment only) ------------------
struct Config {
  int W;        // elements per chunk: the 16-byte vector width, or 1
  int nchunks;  // H / W
  int threads;  // per row group (blockDim.x)
  int groups;   // row groups per block (blockDim.y)
  bool cached;
  Tiling tl;
  int64_t blocks;
};

// target_blocks: blocks wanted in all (the forward wants many small blocks against the tail of the
// last wave; the backward fewer, as each block writes a partial of A * H floats); min_rows: rows
// per row group at least before a sample is split further.
// chunks_of: chunks per thread of the cached kernel for a chunk width (fwd_chunks, bwd_chunks).
Config make_config(int64_t batch, int64_t S, int64_t H, int vec_width, bool vec_ok,
                   int (*chunks_of)(int), int64_t target_blocks, int64_t min_rows) {
  Config c{};
  c.W = vec_ok ? vec_width : 1;
  c.nchunks = static_cast<int>(H / c.W);
  const int per_thread = chunks_of(c.W);
  const int64_t need = (c.nchunks + per_thread - 1) / per_thread;
  const int64_t threads = (need + 31) / 32 * 32;
  c.cached = threads <= kMaxThreads;
  c.threads = c.cached ? static_cast<int>(threads) : kMaxThreads;
  c.groups = c.cached && c.threads < kBlockThreads ? kBlockThreads / c.threads : 1;
  c.tl.S = S;
  const int64_t want = (target_blocks + batch - 1) / batch;
  const int64_t rows = min_rows * c.groups;
  const int64_t most = (S + rows - 1) / rows;
  const int64_t tiles = std::max<int64_t>(1, std::min(want, most));
  c.tl.rows_per_tile = (S + tiles - 1) / tiles;
  c.tl.tiles_per_sample = (S + c.tl.rows_per_tile - 1) / c.tl.rows_per_tile;  // none empty
  c.blocks = batch * c.tl.tiles_per_sample;
  TORCH_CHECK(c.blocks <= std::numeric_limits<int>::max(), "adaln: ", batch, " x ", S,
              " rows are too many for one launch");
  return c;
}

constexpr int64_t kFwdTargetBlocks = 2048, kFwdMinRows = 2;
// Backward at (8, 2048, 2048): 512 blocks of 32 rows, 8 MB of partials (L2-resident), which the
// reduce kernel reads in ~512 blocks.
constexpr int64_t kBwdTargetBlocks = 512, kBwdMinRows = 4;

bool aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

// Chunk width W (the 16-byte vector or 1) as a template argument, then the kernel for the
// configuration: the cached kernels take the form of shift/scale as a template argument, the
// uncached ones read it from p (one instantiation each).
template <typename T, int W>
void launch_fwd_width(const Config& c, const FwdParams& p, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(c.blocks)), block(c.threads, c.groups);
  if (!c.cached) {
    adaln_fwd_uncached_kernel<T, W><<<grid, block, 0, stream>>>(p);
  } else if (p.per_token) {
    adaln_fwd_cached_kernel<T, W, fwd_token_chunks(W), true><<<grid, block, 0, stream>>>(p);
  } else {
    adaln_fwd_cached_kernel<T, W, fwd_chunks(W), false><<<grid, block, 0, stream>>>(p);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void launch_fwd(const Config& c, const FwdParams& p, cudaStream_t stream) {
  constexpr int V = 16 / sizeof(T);
  if (c.W == V) launch_fwd_width<T, V>(c, p, stream);
  else launch_fwd_width<T, 1>(c, p, stream);
}

template <typename T, int W>
void launch_bwd_width(const Config& c, const BwdParams& p, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(c.blocks)), block(c.threads, c.groups);
  if (!c.cached) {
    adaln_bwd_uncached_kernel<T, W><<<grid, block, 0, stream>>>(p);
  } else if (p.per_token) {
    adaln_bwd_cached_kernel<T, W, bwd_chunks(W), true><<<grid, block, 0, stream>>>(p);
  } else {
    adaln_bwd_cached_kernel<T, W, bwd_chunks(W), false><<<grid, block, 0, stream>>>(p);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void launch_bwd(const Config& c, const BwdParams& p, cudaStream_t stream) {
  constexpr int V = 16 / sizeof(T);
  if (c.W == V) launch_bwd_width<T, V>(c, p, stream);
  else launch_bwd_width<T, 1>(c, p, stream);
}

// float, half and bfloat16 only (AT_DISPATCH_FLOATING_TYPES_AND2 would also instantiate double).
#define STMODELS_ADALN_DISPATCH(TYPE, NAME, ...)                 \
  AT_DISPATCH_SWITCH(TYPE, NAME,                                 \
                     AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__)   \
                     AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__)    \
                     AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__))

// ---- validation: adaln_checks.h, plus this backend's limit on H ---------------------------------
void check_cuda_limits(const Tensor& x, const char* op) {
  TORCH_CHECK(x.size(2) <= std::numeric_limits<int>::max() / 2, op, ": H = ", x.size(2),
              " is too large");
}

const float* ptr_or_null(const std::optional<Tensor>& t) {
  return t ? t->data_ptr<float>() : nullptr;
}

// ---- ops ----------------------------------------------------------------------------------------
std::tuple<Tensor, Tensor, Tensor> adaln_fwd_cuda(const Tensor& x_, const Tensor& shift_,
                                                  const Tensor& scale_,
                                                  const std::optional<Tensor>& weight_,
                                                  const std::optional<Tensor>& bias_, double eps) {
  const adaln_checks::FwdInputs in =
      adaln_checks::check_fwd(x_, shift_, scale_, weight_, bias_, at::kCUDA);
  check_cuda_limits(in.x, "adaln_fwd");
  const c10::cuda::CUDAGuard guard(x_.device());
  const Tensor &x = in.x, &shift = in.shift, &scale = in.scale;
  const auto &weight = in.weight, &bias = in.bias;
  const bool per_token = in.per_token;
  const int64_t B = x.size(0), S = x.size(1), H = x.size(2);
  adaln_checks::FwdOutputs outputs = adaln_checks::fwd_outputs(in);
  if (outputs.done) return outputs.tuple();
  Tensor &out = outputs.out, &mean = outputs.mean, &rstd = outputs.rstd;

  FwdParams p{};
  p.H = static_cast<int>(H);
  p.per_token = per_token;
  p.eps = static_cast<float>(eps);
  p.inv_h = 1.0f / static_cast<float>(H);
  p.x = x.data_ptr();
  p.shift = shift.data_ptr();
  p.scale = scale.data_ptr();
  p.weight = ptr_or_null(weight);
  p.bias = ptr_or_null(bias);
  p.out = out.data_ptr();
  p.mean = mean.data_ptr<float>();
  p.rstd = rstd.data_ptr<float>();
  const int vec = static_cast<int>(16 / x.element_size());
  const bool vec_ok = H % vec == 0 && aligned16(p.x) && aligned16(p.shift) &&
                      aligned16(p.scale) && aligned16(p.out) &&
                      (!p.weight || aligned16(p.weight)) && (!p.bias || aligned16(p.bias));
  const Config c = make_config(B, S, H, vec, vec_ok, per_token ? fwd_token_chunks : fwd_chunks,
                               kFwdTargetBlocks, kFwdMinRows);
  p.tl = c.tl;
  p.nchunks = c.nchunks;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  STMODELS_ADALN_DISPATCH(x.scalar_type(), "adaln_fwd_cuda",
                          [&] { launch_fwd<scalar_t>(c, p, stream); });
  return {out, mean, rstd};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> adaln_bwd_cuda(
    const Tensor& dout_, const Tensor& x_, const Tensor& scale_,
    const std::optional<Tensor>& weight_, const std::optional<Tensor>& bias_,
    const Tensor& mean_, const Tensor& rstd_, bool shift_per_token) {
  const adaln_checks::BwdInputs in = adaln_checks::check_bwd(
      dout_, x_, scale_, weight_, bias_, mean_, rstd_, shift_per_token, at::kCUDA);
  check_cuda_limits(in.x, "adaln_bwd");
  const c10::cuda::CUDAGuard guard(x_.device());
  const Tensor &dout = in.dout, &x = in.x, &scale = in.scale, &mean = in.mean, &rstd = in.rstd;
  const auto &weight = in.weight, &bias = in.bias;
  const int64_t B = x.size(0), S = x.size(1), H = x.size(2);
  const auto f32 = x.options().dtype(at::kFloat);
  adaln_checks::BwdOutputs grads = adaln_checks::bwd_outputs(in);
  if (grads.done) return grads.tuple();
  Tensor &dx = grads.dx, &dshift = grads.dshift, &dscale = grads.dscale;
  Tensor &dweight = grads.dweight, &dbias = grads.dbias;

  BwdParams p{};
  p.H = static_cast<int>(H);
  p.per_token = shift_per_token;
  p.inv_h = 1.0f / static_cast<float>(H);
  p.dout = dout.data_ptr();
  p.x = x.data_ptr();
  p.scale = scale.data_ptr();
  p.weight = ptr_or_null(weight);
  p.bias = ptr_or_null(bias);
  p.mean = mean.data_ptr<float>();
  p.rstd = rstd.data_ptr<float>();
  p.dx = dx.data_ptr();
  p.dshift = dshift.data_ptr();
  p.dscale = dscale.data_ptr();
  const int vec = static_cast<int>(16 / x.element_size());
  const bool vec_ok = H % vec == 0 && aligned16(p.dout) && aligned16(p.x) &&
                      aligned16(p.scale) && aligned16(p.dx) && aligned16(p.dshift) &&
                      aligned16(p.dscale) && (!p.weight || aligned16(p.weight)) &&
                      (!p.bias || aligned16(p.bias));
  const Config c = make_config(B, S, H, vec, vec_ok, bwd_chunks, kBwdTargetBlocks, kBwdMinRows);
  p.tl = c.tl;
  p.nchunks = c.nchunks;
  p.A = shift_per_token ? (weight ? 1 : 0) + (bias ? 1 : 0) : 2;
  Tensor partial, bsum;
  if (p.A > 0) {
    partial = at::empty({c.blocks * p.A * H}, f32);
    p.partial = partial.data_ptr<float>();
  }
  const bool affine_over_batch = !shift_per_token && (weight || bias);
  if (affine_over_batch) bsum = at::empty({B * 2 * H}, f32);

  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  STMODELS_ADALN_DISPATCH(x.scalar_type(), "adaln_bwd_cuda", [&] {
    launch_bwd<scalar_t>(c, p, stream);
    if (p.A == 0) return;
    ReduceParams r{};
    r.partial = p.partial;
    r.chunks = shift_per_token ? c.blocks : c.tl.tiles_per_sample;
    r.H = H;
    r.A = p.A;
    r.per_token = shift_per_token;
    r.scale = p.scale;
    r.weight = p.weight;
    r.bias = p.bias;
    r.dshift = p.dshift;
    r.dscale = p.dscale;
    r.dweight = weight ? dweight.data_ptr<float>() : nullptr;
    r.dbias = bias ? dbias.data_ptr<float>() : nullptr;
    r.bsum = affine_over_batch ? bsum.data_ptr<float>() : nullptr;
    const int64_t groups = shift_per_token ? 1 : B;
    const int64_t rblocks = groups * ((H + 31) / 32);
    adaln_bwd_reduce_kernel<scalar_t>
        <<<static_cast<unsigned>(rblocks), dim3(32, kRedLanes), 0, stream>>>(r);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (affine_over_batch) {
      adaln_bwd_affine_kernel<<<static_cast<unsigned>((H + 255) / 256), 256, 0, stream>>>(
          r.bsum, B, H, r.dweight, r.dbias);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {dx, dshift, dscale, dweight, dbias};
}

}  // namespace
}  // namespace cuda
}  // namespace adaln
}  // namespace stmodels

TORCH_LIBRARY_IMPL(stmodels, CUDA, m) {
  m.impl("adaln_fwd", &stmodels::adaln::cuda::adaln_fwd_cuda);
  m.impl("adaln_bwd", &stmodels::adaln::cuda::adaln_bwd_cuda);
}
